"""Inference backends: a plain dict from name to class; ``create_backend`` builds one by name.

The classes are imported when this package is, but their libraries (onnxruntime, tensorrt, pycuda) only when a
backend is created, so a machine without TensorRT can still use the ONNX Runtime backend.
"""

from lungedge.runtime.backends.base import Backend
from lungedge.runtime.backends.ort import OrtBackend
from lungedge.runtime.backends.trt import TrtBackend
from lungedge.runtime.errors import BackendUnavailable

BACKENDS = {
    "onnxruntime": OrtBackend,
    "tensorrt": TrtBackend,
}


def create_backend(name, path, **opts):
    """Load the model at ``path`` on backend ``name`` (options go to that backend's constructor)."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](path, **opts)


__all__ = ["BACKENDS", "Backend", "OrtBackend", "TrtBackend", "create_backend"]
