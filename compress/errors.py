"""Typed errors of the compression side: each says what was wrong and what to do."""

from lungedge.runtime.errors import ConfigError as RuntimeConfigError
from lungedge.runtime.errors import LungedgeError


class CalibrationError(LungedgeError):
    """Calibration data is unusable: not real training images, too few, the wrong split, or unreadable."""


class QuantizationError(LungedgeError):
    """A quantized model breaks the rules of its target (TensorRT or ONNX Runtime) or could not be produced."""


class EngineBuildError(LungedgeError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


class CompressError(LungedgeError):
    """A compression run (distill, prune, quantize, gate, bundle) cannot go on."""


class ConfigError(CompressError, RuntimeConfigError):
    """A config (a recipe section, an engine build setting) holds an unknown key or an impossible value."""


class RecipeError(ConfigError):
    """A recipe file is unreadable or holds an unknown key, a wrong type or an inconsistent setting."""


class GateFailed(CompressError):
    """No variant passed the accuracy gate, even after every back-off; ``report`` holds every attempt's numbers."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report or {}


def config_from_dict(cls, data):
    """``cls(**data)`` refusing keys ``cls`` does not declare, as ConfigError (a ValueError)."""
    from lungedge.runtime.configs import config_from_dict as plain

    return plain(cls, data, ConfigError, "remove or rename them")
