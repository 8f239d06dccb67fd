"""Frozen-dataclass configs built from plain data (recipe files, manifests, CLI maps), shared by every package."""

import dataclasses

from lungedge.runtime.errors import ConfigError


def config_from_dict(cls, data):
    """``cls(**data)``, refusing keys ``cls`` does not declare (a typo must not be silently ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
    return cls(**data)
