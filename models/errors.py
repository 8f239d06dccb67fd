"""Typed errors of the models side: each says what was wrong and what to do."""

from lungedge.runtime.errors import ConfigError, LungedgeError, UnknownName


class ModelError(LungedgeError):
    """A model, task or training setting cannot be used."""


class UnknownArchitecture(UnknownName, ModelError):
    """An architecture name that the registry does not hold."""


class TrainConfigError(ModelError, ConfigError):
    """A training option that does not exist or does not fit the task."""
