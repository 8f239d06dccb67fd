"""Inference backends: a plain dict from name to class; ``create_backend`` builds one by name.

The classes are imported when this package is, but their libraries (onnxruntime, openvino, tensorrt, pycuda) only
when a backend is created, so a machine without TensorRT or OpenVINO can still use the ONNX Runtime backend.
OpenVINO runs the same ONNX artifacts as ONNX Runtime (``ONNX_BACKENDS``).
"""

from lungedge.runtime.backends.base import Backend
from lungedge.runtime.backends.openvino import OpenVinoBackend
from lungedge.runtime.backends.ort import OrtBackend
from lungedge.runtime.backends.trt import TrtBackend
from lungedge.runtime.enums import ONNX_BACKENDS, BackendName
from lungedge.runtime.errors import BackendUnavailable

BACKENDS = {
    BackendName.ONNXRUNTIME.value: OrtBackend,
    BackendName.OPENVINO.value: OpenVinoBackend,
    BackendName.TENSORRT.value: TrtBackend,
}
# ONNX_BACKENDS (lungedge.runtime.enums): the backends that run the bundle's ONNX artifacts (recorded with backend
# "onnxruntime" in the manifest).


def create_backend(name, path, **opts):
    """Load the model at ``path`` on backend ``name`` (options go to that backend's constructor)."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](path, **opts)


__all__ = ["BACKENDS", "ONNX_BACKENDS", "Backend", "OpenVinoBackend", "OrtBackend", "TrtBackend", "create_backend"]
