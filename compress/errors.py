"""Typed errors of the compression side: each says what was wrong and what to do."""

from lungedge.runtime.errors import LungedgeError


class CalibrationError(LungedgeError):
    """Calibration data is unusable: not real training images, too few, the wrong split, or unreadable."""


class QuantizationError(LungedgeError):
    """A quantized model breaks the rules of its target (TensorRT or ONNX Runtime) or could not be produced."""


class EngineBuildError(LungedgeError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


class CompressError(LungedgeError):
    """A compression run (distill, prune, quantize, gate, bundle) cannot go on."""


class RecipeError(CompressError, ValueError):
    """A recipe file is unreadable or holds an unknown key, a wrong type or an inconsistent setting."""


class GateFailed(CompressError):
    """No variant passed the accuracy gate, even after every back-off; ``report`` holds every attempt's numbers."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report or {}
