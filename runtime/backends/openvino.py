"""OpenVINO backend (CPU) on the bundle's ONNX artifacts, with every setting that changes numbers or speed pinned.

OpenVINO picks BF16 on its own on CPUs that have it, so the inference precision is always set explicitly (f32
unless bf16 is asked for) and read back from the compiled model: a precision the device cannot give is an error,
not a quiet substitution. The performance hint is LATENCY (one stream), the thread count is explicit when given,
and compiled blobs go to a cache folder (the bundle's ``cache/openvino`` when opened through a Predictor).
"""

import logging
import os
import threading

import numpy as np

from lungedge.runtime.backends.base import Backend
from lungedge.runtime.errors import BackendUnavailable, BundleError

log = logging.getLogger(__name__)

# Inference precisions accepted (the user's spelling -> OpenVINO's), and the CPU capability each needs.
INFERENCE_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
CAPABILITY = {"f32": "FP32", "bf16": "BF16"}
PERFORMANCE_MODES = ("LATENCY", "THROUGHPUT")
# What the compiled model reports for each requested precision (Type names differ between releases).
_REPORTED = {"f32": ("f32", "float32"), "bf16": ("bf16", "bfloat16")}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("the openvino backend needs OpenVINO: pip install 'lungedge[openvino]' "
                                 "(or pip install openvino)") from None
    return openvino


def available_precisions():
    """OpenVINO inference precisions this machine can run: () without OpenVINO, f32, and bf16 where the CPU has it."""
    try:
        import openvino
    except ImportError:
        return ()
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("f32", "bf16") if CAPABILITY["bf16"] in capabilities else ("f32",)


def normalise_precision(precision):
    """OpenVINO's name ("f32" or "bf16") for ``precision``; BackendUnavailable for anything else."""
    key = str(precision).lower()
    if key not in INFERENCE_PRECISIONS:
        raise BackendUnavailable(f"OpenVINO inference precision {precision!r} is not supported here; "
                                 f"choose one of {sorted(set(INFERENCE_PRECISIONS.values()))}")
    return INFERENCE_PRECISIONS[key]


def _type_name(value):
    """"f32" / "bf16" from an ``openvino.Type`` (or a string, as some releases return)."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return name.strip().lower()


def usable_cache_dir(path):
    """``path`` created if needed, or None (logged) when it cannot be written, e.g. a read-only bundle."""
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w", encoding="ascii") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        log.warning("OpenVINO compile cache disabled: %s is not writable (%s); every start compiles anew",
                    path, exc.strerror or exc)
        return None
    return path


class OpenVinoBackend(Backend):
    """An ONNX model compiled by OpenVINO for the CPU; ``run`` is safe from several threads (one request each)."""

    name = "openvino"

    def __init__(self, path, precision="f32", threads=None, cache_dir=None, performance_mode="LATENCY",
                 device="CPU"):
        ov = _openvino()
        self.precision = normalise_precision(precision)
        mode = str(performance_mode).upper()
        if mode not in PERFORMANCE_MODES:
            raise BackendUnavailable(f"OpenVINO performance mode {performance_mode!r}: choose one of {PERFORMANCE_MODES}")
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO device {device!r} is not available here "
                                     f"(available: {core.available_devices}); lungedge never picks another")
        capabilities = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if CAPABILITY[self.precision] not in capabilities:
            raise BackendUnavailable(f"OpenVINO on {device} cannot run {self.precision} (capabilities: "
                                     f"{list(capabilities)}); use precision f32")
        self.cache_dir = usable_cache_dir(cache_dir)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": mode}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.cache_dir:
            config["CACHE_DIR"] = self.cache_dir
        if not os.path.isfile(str(path)):
            raise BundleError(f"OpenVINO cannot load {path}: no such file")
        try:
            self.compiled = core.compile_model(str(path), device, config)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError (or its subclasses) for unreadable models
            raise BundleError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[0]}. Re-export the "
                              "model or re-copy the bundle.") from None
        reported = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if reported not in _REPORTED[self.precision]:
            self.close()
            raise BackendUnavailable(f"OpenVINO compiled the model at {reported} although {self.precision} was "
                                     "requested; refusing to run at a precision nobody chose")
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.performance_mode = mode
        first = self.compiled.inputs[0]
        self.input_name = first.get_any_name()
        self.input_dtype = np.float16 if first.get_element_type() == ov.Type.f16 else np.float32
        # An output can carry several tensor names (an ONNX Identity output folded into its producer keeps both):
        # every name finds its port, and the plain graph-output name is the one reported.
        self._ports = {name: o for o in self.compiled.outputs for name in o.get_names()}
        self.output_names = [_graph_name(o) for o in self.compiled.outputs]
        self._output = self.compiled.outputs[0]
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, batch):
        """Run one (N, C, H, W) batch; returns the first output as float32."""
        if self.compiled is None:
            raise BackendUnavailable("this OpenVINO backend was closed")
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        result = self._request().infer({0: x})
        return np.array(result[self._output], dtype=np.float32, copy=True)

    def run_outputs(self, batch, names):
        """Run one batch; returns {name: float32 array} for the named outputs (one inference)."""
        missing = [n for n in names if n not in self._ports]
        if missing:
            raise BundleError(f"the model has no outputs {missing}; it has {self.output_names}")
        if self.compiled is None:
            raise BackendUnavailable("this OpenVINO backend was closed")
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        result = self._request().infer({0: x})
        return {n: np.array(result[self._ports[n]], dtype=np.float32, copy=True) for n in names}

    def close(self):
        self.compiled = None
        self._local = threading.local()


def _graph_name(port):
    """The name an ONNX graph output had: the one without the exporter's "/node/..." path, when there is one."""
    names = sorted(port.get_names())
    plain = [n for n in names if not n.startswith("/") and ":" not in n]
    return (plain or names or [port.get_any_name()])[0]
