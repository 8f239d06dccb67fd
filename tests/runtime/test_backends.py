"""Backends: the dict registry, ONNX Runtime providers (no silent fallback), TensorRT fingerprint and buffers."""

import importlib.util
import os
import sys
import threading
import types

import numpy as np
import pytest
from tinymodels import SIZE

from lungedge.runtime.backends import (
    BACKENDS,
    Backend,
    OpenVinoBackend,
    OrtBackend,
    TrtBackend,
    create_backend,
)
from lungedge.runtime.backends import ort as ort_module
from lungedge.runtime.backends.trt import check_fingerprint, fingerprint_mismatches
from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_registry_maps_names_to_classes():
    assert BACKENDS == {"onnxruntime": OrtBackend, "openvino": OpenVinoBackend, "tensorrt": TrtBackend}
    assert all(issubclass(cls, Backend) for cls in BACKENDS.values())
    with pytest.raises(BackendUnavailable, match="unknown backend 'directml'"):
        create_backend("directml", "model.onnx")


def test_ort_runs_dynamic_batch(xray_cls_bundle):
    backend = create_backend("onnxruntime", os.path.join(xray_cls_bundle, "model.onnx"), threads=1)
    assert backend.input_name == "image" and backend.output_names == ["logits"]
    for n in (1, 5):
        out = backend.run(np.zeros((n, 1, SIZE, SIZE), np.float32))
        assert out.shape == (n, 3) and out.dtype == np.float32
    backend.close()


def test_ort_missing_provider_is_an_error_not_a_fallback(xray_cls_bundle):
    path = os.path.join(xray_cls_bundle, "model.onnx")
    with pytest.raises(BackendUnavailable, match="NoSuchExecutionProvider.*never falls back"):
        OrtBackend(path, providers=["NoSuchExecutionProvider"])


def test_ort_provider_aliases():
    assert ort_module.resolve_providers(["cpu"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        ort_module.resolve_providers(["cuda"], ["CPUExecutionProvider"])


def test_ort_dropped_provider_after_session_start(xray_cls_bundle, monkeypatch):
    """ONNX Runtime may start a session without a provider it could not load: that is refused too."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = onnxruntime.InferenceSession

    def session(path, sess_options=None, providers=None):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with pytest.raises(BackendUnavailable, match="could not start provider"):
        OrtBackend(os.path.join(xray_cls_bundle, "model.onnx"), providers=["cuda", "cpu"])


def test_ort_unloadable_model_is_a_bundle_error(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        OrtBackend(str(path))


RECORDED = {"trt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin"}


@pytest.mark.parametrize("current,problems", [
    ({"trt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin"}, []),
    ({"trt_version": "10.3.0", "compute_capability": (8, 7), "device_name": "Orin"}, []),
    ({"trt_version": "8.6.2", "compute_capability": "8.7", "device_name": "Orin"}, ["trt_version"]),
    ({"trt_version": "10.3.0", "compute_capability": "8.6", "device_name": "NVIDIA A10"},
     ["compute_capability", "device_name"]),
])
def test_fingerprint_comparison(current, problems):
    found = fingerprint_mismatches(RECORDED, current)
    assert [p.split(":")[0] for p in found] == problems


def test_fingerprint_mismatch_says_how_to_rebuild():
    with pytest.raises(EngineMismatch, match="8.6.2.*lungedge engine build BUNDLE"):
        check_fingerprint(RECORDED, dict(RECORDED, trt_version="8.6.2"), engine="model.engine")
    with pytest.raises(EngineMismatch, match="trt_version: not recorded"):
        check_fingerprint({"compute_capability": "8.7", "device_name": "Orin"}, RECORDED)


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the error raised where TensorRT is absent")
def test_tensorrt_missing_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="needs TensorRT"):
        create_backend("tensorrt", str(tmp_path / "model.engine"), entry=RECORDED)


# --- a fake tensorrt + pycuda pair, enough to drive TrtBackend's own logic on a CPU ---------------------------

def _fake_modules(profile):
    memory = {}
    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Allocation:
        def __init__(self, nbytes):
            self.ptr = len(memory) + 1
            memory[self.ptr] = bytearray(nbytes)

        def __int__(self):
            return self.ptr

        def free(self):
            memory.pop(self.ptr, None)

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            return 1

        def compute_capability(self):
            return (8, 7)

        def name(self):
            return "Orin"

        def make_context(self):
            return Context()

    class Context:
        stack = []

        def push(self):
            Context.stack.append(self)

        @staticmethod
        def pop():
            if Context.stack:
                Context.stack.pop()

        def detach(self):
            pass

    class Stream:
        handle = 1

        def synchronize(self):
            pass

    def htod(dev, host, stream):
        memory[int(dev)][:host.nbytes] = host.tobytes()

    def dtoh(host, dev, stream):
        host[...] = np.frombuffer(bytes(memory[int(dev)][:host.nbytes]), host.dtype).reshape(host.shape)

    driver.__dict__.update(Error=Error, Device=Device, Context=Context, Stream=Stream, init=lambda flags=0: None,
                           pagelocked_empty=lambda n, dtype: np.empty(n, dtype), mem_alloc=Allocation,
                           memcpy_htod_async=htod, memcpy_dtoh_async=dtoh)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver

    trt = types.ModuleType("tensorrt")

    class Engine:
        num_io_tensors = 2
        shapes = {"image": (-1, 1, 4, 4), "logits": (-1, 3)}

        def get_tensor_name(self, i):
            return ["image", "logits"][i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "image" else "OUTPUT"

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_dtype(self, name):
            return "float"

        def get_tensor_profile_shape(self, name, index):
            return tuple((b, 1, 4, 4) for b in profile)

        def create_execution_context(self):
            return ExecutionContext()

    class ExecutionContext:
        def __init__(self):
            self.shape, self.addresses, self.batches = None, {}, []

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return profile[0] <= shape[0] <= profile[2]

        def get_tensor_shape(self, name):
            return self.shape if name == "image" else (self.shape[0], 3)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle):
            n = self.shape[0]
            x = np.frombuffer(bytes(memory[self.addresses["image"]][:n * 16 * 4]), np.float32).reshape(n, 16)
            y = np.stack([x.sum(1), x.mean(1), x.max(1)], axis=1).astype(np.float32)
            memory[self.addresses["logits"]][:y.nbytes] = y.tobytes()
            self.batches.append(n)
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine() if plan.startswith(b"fake-plan") else None

    trt.__dict__.update(__version__="10.3.0", Runtime=Runtime, nptype=lambda dtype: np.float32,
                        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
                        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"))
    return trt, pycuda, driver, memory


@pytest.fixture
def fake_trt(monkeypatch):
    def install(profile=(1, 2, 4)):
        trt, pycuda, driver, memory = _fake_modules(profile)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
        return memory
    return install


@pytest.mark.parametrize("profile,n", [((1, 2, 4), 6), ((2, 2, 4), 1), ((1, 1, 8), 3)])
def test_trt_backend_logic_with_fake_tensorrt(fake_trt, tmp_path, profile, n):
    memory = fake_trt(profile)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"fake-plan")
    backend = TrtBackend(str(engine), entry=dict(RECORDED, path="model.engine"))
    assert backend.input_name == "image" and backend.output_names == ["logits"]
    assert (backend.min_batch, backend.max_batch) == (profile[0], profile[2])
    x = np.random.default_rng(0).normal(size=(n, 1, 4, 4)).astype(np.float32)
    out = backend.run(x)
    flat = x.reshape(n, -1)
    np.testing.assert_allclose(out, np.stack([flat.sum(1), flat.mean(1), flat.max(1)], 1), rtol=1e-5)
    # Batches above the profile's maximum are split; below its minimum padded.
    assert all(profile[0] <= b <= profile[2] for b in backend.context.batches)
    backend.close()
    assert memory == {}


def test_trt_backend_serialises_threads(fake_trt, tmp_path):
    fake_trt((1, 2, 4))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"fake-plan")
    backend = TrtBackend(str(engine), entry=RECORDED)
    inputs = [np.full((3, 1, 4, 4), i, np.float32) for i in range(8)]
    outputs = [None] * 8

    def work(i):
        outputs[i] = backend.run(inputs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in enumerate(outputs):
        np.testing.assert_allclose(out[:, 0], 16.0 * i)


def test_trt_backend_refuses_foreign_engine(fake_trt, tmp_path):
    fake_trt()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"fake-plan")
    with pytest.raises(EngineMismatch, match="compute_capability.*lungedge engine build"):
        TrtBackend(str(engine), entry=dict(RECORDED, compute_capability="7.2"))


def test_trt_backend_undeserialisable_engine(fake_trt, tmp_path):
    fake_trt()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"garbage")
    with pytest.raises(BundleError, match="could not deserialize"):
        TrtBackend(str(engine), entry=RECORDED)


def test_trt_backend_without_pycuda(fake_trt, tmp_path, monkeypatch):
    fake_trt()
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailable, match="needs pycuda"):
        TrtBackend(str(tmp_path / "model.engine"), entry=RECORDED)


# --- real TensorRT (Jetson / GPU machines) ----------------------------------------------------------------------

def _build_engine(trt, onnx_path, plan_path):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        assert parser.parse(fh.read()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 1, SIZE, SIZE), (2, 1, SIZE, SIZE), (4, 1, SIZE, SIZE))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    with open(plan_path, "wb") as fh:
        fh.write(bytes(plan))


@pytest.mark.tensorrt
def test_real_tensorrt_matches_onnxruntime(xray_cls_bundle, tmp_path):
    trt = pytest.importorskip("tensorrt")
    cuda = pytest.importorskip("pycuda.driver")
    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    plan = str(tmp_path / "model.engine")
    _build_engine(trt, os.path.join(xray_cls_bundle, "model.onnx"), plan)
    entry = {"trt_version": trt.__version__, "compute_capability": f"{major}.{minor}", "device_name": device.name()}
    x = np.random.default_rng(0).normal(size=(6, 1, SIZE, SIZE)).astype(np.float32)
    with TrtBackend(plan, entry=entry) as backend:
        got = backend.run(x)
    expected = OrtBackend(os.path.join(xray_cls_bundle, "model.onnx")).run(x)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    with pytest.raises(EngineMismatch):
        TrtBackend(plan, entry=dict(entry, trt_version="0.0.0"))
