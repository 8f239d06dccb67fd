"""lungedge.runtime: torch-free inference (numpy, OpenCV, ONNX Runtime; TensorRT on Jetson).

Never imports torch, lungedge.compress or lungedge.models.
"""

from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch, InputError, LungedgeError

__all__ = ["BackendUnavailable", "BundleError", "EngineMismatch", "InputError", "LungedgeError"]
