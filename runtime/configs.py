"""Frozen-dataclass configs built from plain data (recipe files, manifests, CLI maps), shared by every package."""

import dataclasses

from lungedge.runtime.errors import ConfigError


def config_from_dict(cls, data, error=ConfigError, advice=""):
    """``cls(**data)``, refusing keys ``cls`` does not declare (a typo must not be silently ignored).

    The refusal is ``error`` (a ConfigError subclass: each package raises its own), its text ending in ``advice``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise error(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}"
                    + (f"; {advice}" if advice else ""))
    return cls(**data)
