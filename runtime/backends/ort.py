"""ONNX Runtime backend: providers named explicitly (CPU by default); a missing one is an error, not a fallback."""

import numpy as np

from lungedge.runtime.backends.base import Backend
from lungedge.runtime.errors import BackendUnavailable, BundleError

# Short names accepted for the usual providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("the onnxruntime backend needs onnxruntime: pip install onnxruntime "
                                 "(or onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def resolve_providers(requested, available):
    """Full provider names for ``requested``; raise BackendUnavailable naming any that ``available`` lacks."""
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested]
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendUnavailable(f"ONNX Runtime provider(s) {missing} not available here (available: {list(available)}). "
                                 "Install the matching onnxruntime build (e.g. onnxruntime-gpu) or request "
                                 "CPUExecutionProvider; lungedge never falls back to CPU on its own.")
    return names


class OrtBackend(Backend):
    """An ONNX model in an ONNX Runtime session; ``run`` is safe from several threads at once."""

    name = "onnxruntime"

    def __init__(self, path, providers=("CPUExecutionProvider",), threads=None):
        ort = _onnxruntime()
        self.providers = resolve_providers(list(providers), ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings go to our own messages
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise BundleError(f"ONNX Runtime cannot load {path}: {exc}. Re-export the model or re-copy the bundle.") \
                from None
        used = self.session.get_providers()
        dropped = [p for p in self.providers if p not in used]
        if dropped:
            self.close()
            raise BackendUnavailable(f"ONNX Runtime could not start provider(s) {dropped} (session runs on {used}); "
                                     "check the CUDA/TensorRT libraries, or request CPUExecutionProvider")
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch):
        """Run one (N, C, H, W) batch; returns the first output as float32."""
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        out = self.session.run([self.output_names[0]], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def run_outputs(self, batch, names):
        """Run one batch; returns {name: float32 array} for the named outputs (one session call)."""
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise BundleError(f"the model has no outputs {missing}; it has {self.output_names}")
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        outs = self.session.run(list(names), {self.input_name: x})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs)}

    def close(self):
        self.session = None
