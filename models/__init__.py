"""lungedge.models: torch architectures (full baselines and compact students), registry, training."""
