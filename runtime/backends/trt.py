"""TensorRT backend (Jetson / NVIDIA GPU): a serialized engine run through the name-based tensor API.

Written against the calls TensorRT 8.5 to 10.x share: ``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_shape``, ``get_tensor_dtype``, ``get_tensor_profile_shape``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``. An engine only runs on the TensorRT
version and GPU it was built for, so the fingerprint recorded in its manifest entry is checked first.
"""

import threading

import numpy as np

from lungedge.runtime.backends import trt_buffers
from lungedge.runtime.backends.base import Backend
from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch

FINGERPRINT_KEYS = ("trt_version", "compute_capability", "device_name")
REBUILD_HINT = "rebuild the engine on this device: lungedge engine build BUNDLE"


def _normalise(key, value):
    if key == "compute_capability" and isinstance(value, (list, tuple)):
        return ".".join(str(int(v)) for v in value)
    return str(value).strip()


def fingerprint_mismatches(recorded, current):
    """Human-readable differences between an engine's recorded fingerprint and the device at hand."""
    problems = []
    for key in FINGERPRINT_KEYS:
        if recorded.get(key) is None:
            problems.append(f"{key}: not recorded in the bundle manifest")
        elif _normalise(key, recorded[key]) != _normalise(key, current.get(key)):
            problems.append(f"{key}: engine built for {recorded[key]!r}, this device has {current.get(key)!r}")
    return problems


def check_fingerprint(recorded, current, engine="engine"):
    """Raise EngineMismatch if ``recorded`` (the manifest's artifact entry) does not match ``current``."""
    problems = fingerprint_mismatches(recorded, current)
    if problems:
        raise EngineMismatch(f"{engine} cannot run here: " + "; ".join(problems) + f". {REBUILD_HINT}")


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying where to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("the tensorrt backend needs TensorRT: on Jetson it comes with JetPack "
                                 "(python3-libnvinfer), elsewhere pip install tensorrt; or use --backend onnxruntime") \
            from None
    return tensorrt


class TrtBackend(Backend):
    """A TensorRT engine with its buffers sized for the optimisation profile's largest batch."""

    name = "tensorrt"

    def __init__(self, path, entry=None, device=0):
        trt = import_tensorrt()
        self._trt = trt
        self._lock = threading.Lock()  # one execution context and one set of buffers: one batch at a time
        self._gpu = trt_buffers.CudaContext(device)
        self._buffers, self.context, self.engine = {}, None, None
        try:
            current = dict(self._gpu.fingerprint(), trt_version=trt.__version__)
            check_fingerprint(entry or {}, current, engine=str(path))
            with self._gpu:
                self._load(path)
        except BaseException:
            self.close()
            raise

    def _load(self, path):
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as fh:
            plan = fh.read()
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BundleError(f"TensorRT could not deserialize {path}; {REBUILD_HINT}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BundleError(f"{path}: expected one input tensor, found {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self._set_batch_limits()
        sizes = {}
        max_shape = (self.max_batch,) + self.sample_shape
        self.context.set_input_shape(self.input_name, max_shape)
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            sizes[name] = (int(np.prod(shape)), np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
        self._buffers = trt_buffers.allocate(sizes)
        for name, mem in self._buffers.items():
            self.context.set_tensor_address(name, int(mem.device))
        self._stream = trt_buffers.make_stream()

    def _set_batch_limits(self):
        """Batch range and per-sample shape from the input's optimisation profile 0 (or its fixed shape)."""
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] >= 0:
            self.min_batch = self.max_batch = int(shape[0])
        else:
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        if any(int(s) < 0 for s in shape[1:]):
            high = self.engine.get_tensor_profile_shape(self.input_name, 0)[2]
            shape = (shape[0],) + tuple(int(s) for s in high[1:])
        self.sample_shape = tuple(int(s) for s in shape[1:])

    def _run_chunk(self, x):
        """One batch within the profile: pad to the minimum batch if needed, run, return the first output."""
        n = x.shape[0]
        if n < self.min_batch:
            x = np.concatenate([x, np.zeros((self.min_batch - n,) + x.shape[1:], x.dtype)])
        if not self.context.set_input_shape(self.input_name, x.shape):
            raise BundleError(f"input shape {x.shape} is outside the engine's profile "
                              f"(batch {self.min_batch}..{self.max_batch}, sample {self.sample_shape})")
        out_name = self.output_names[0]
        out_shape = tuple(int(s) for s in self.context.get_tensor_shape(out_name))
        trt_buffers.copy_in(self._buffers[self.input_name], x, self._stream)
        if not self.context.execute_async_v3(self._stream.handle):
            raise BackendUnavailable("TensorRT execute_async_v3 failed; see the TensorRT log above")
        host = trt_buffers.copy_out(self._buffers[out_name], int(np.prod(out_shape)), self._stream)
        trt_buffers.synchronize(self._stream)
        return np.array(host, dtype=np.float32).reshape(out_shape)[:n]

    def run(self, batch):
        """Run (N, C, H, W); batches above the profile's maximum are split, below its minimum padded."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise BundleError(f"input sample shape {tuple(x.shape[1:])} differs from the engine's {self.sample_shape}")
        dtype = self._buffers[self.input_name].host.dtype
        outputs = []
        with self._lock, self._gpu:
            for start in range(0, x.shape[0], self.max_batch):
                outputs.append(self._run_chunk(x[start:start + self.max_batch].astype(dtype)))
        return np.concatenate(outputs)

    def close(self):
        gpu = getattr(self, "_gpu", None)
        if gpu is None or gpu.context is None:
            return
        with gpu:
            trt_buffers.free(self._buffers)
            self._buffers, self.context, self.engine, self._stream = {}, None, None, None
        gpu.close()
