"""Typed errors of the models side: each says what was wrong and what to do."""

from lungedge.runtime.errors import LungedgeError


class ModelError(LungedgeError):
    """A model, task or training setting cannot be used."""


class _LookupMessage:
    # KeyError's str() is the repr of its argument (quotes and escapes); these errors print their message.
    def __str__(self):
        return str(self.args[0]) if self.args else ""


class UnknownArchitecture(_LookupMessage, ModelError, KeyError):
    """An architecture name that the registry does not hold."""


class UnknownTask(_LookupMessage, ModelError, KeyError):
    """A task name that is not one of the kit's tasks."""


class TrainConfigError(ModelError, ValueError):
    """A training option that does not exist or does not fit the task."""
