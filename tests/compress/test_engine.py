"""TensorRT engine build: config validation, version gating and trtexec lines here; real builds where TensorRT is."""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lungedge.compress.engine import (
    EngineConfig,
    build_engine,
    builder_flags,
    network_flags,
    parse_version,
    profile_shapes,
    trtexec_command,
)
from lungedge.compress.errors import EngineBuildError
from lungedge.runtime.errors import BackendUnavailable

FINGERPRINT_KEYS = {"trt_version", "device_name", "compute_capability", "precision", "dla_core", "min_batch",
                    "opt_batch", "max_batch"}


def test_config_validation():
    assert EngineConfig.from_dict(EngineConfig(precision="int8", max_batch=4).to_dict()).max_batch == 4
    with pytest.raises(ValueError, match="unknown EngineConfig keys"):
        EngineConfig.from_dict({"precison": "fp16"})
    with pytest.raises(ValueError, match="precision"):
        EngineConfig(precision="int4")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        EngineConfig(min_batch=2, opt_batch=1, max_batch=4)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        EngineConfig(min_batch=0)
    with pytest.raises(ValueError, match="DLA runs FP16 and INT8"):
        EngineConfig(precision="fp32", dla_core=0)
    with pytest.raises(ValueError, match="workspace"):
        EngineConfig(workspace_mib=0)


@pytest.mark.parametrize("version, expected", [("8.5.2.2", (8, 5, 2)), ("8.6", (8, 6, 0)), ("10.3.0.26", (10, 3, 0)),
                                               ("11.0.0b1", (11, 0, 0))])
def test_parse_version(version, expected):
    assert parse_version(version) == expected


def test_explicit_batch_flag_only_before_tensorrt_10():
    assert network_flags("8.5.2.2") == network_flags("8.6.1.6") == ["EXPLICIT_BATCH"]
    assert network_flags("10.0.1.6") == network_flags("10.7.0") == network_flags("11.1.0") == []


@pytest.mark.parametrize("version, precision, dla, fallback, expected", [
    ("8.6.1", "fp32", None, True, []),
    ("8.6.1", "fp16", None, True, ["FP16"]),
    ("10.3.0", "int8", None, True, ["INT8", "FP16"]),
    ("8.5.2", "int8", 0, True, ["INT8", "FP16", "GPU_FALLBACK"]),
    ("10.3.0", "fp16", 1, False, ["FP16"]),
    ("11.0.0", "int8", None, True, []),  # strongly typed: no precision flags exist
])
def test_builder_flags(version, precision, dla, fallback, expected):
    assert builder_flags(version, precision, dla, fallback) == expected


def test_no_dla_from_tensorrt_11():
    with pytest.raises(BackendUnavailable, match="no DLA"):
        builder_flags("11.0.0", "fp16", dla_core=0)


def test_trtexec_command_matches_the_config():
    cfg = EngineConfig(precision="int8", min_batch=1, opt_batch=4, max_batch=8, workspace_mib=2048, dla_core=1,
                       timing_cache="cache dir/timing.cache")
    line = trtexec_command("model int8.onnx", "model.plan", cfg, "image", (192, 160), trt_version="8.6.1")
    for part in ["trtexec", "'--onnx=model int8.onnx'", "--saveEngine=model.plan", "--minShapes=image:1x1x192x160",
                 "--optShapes=image:4x1x192x160", "--maxShapes=image:8x1x192x160", "--memPoolSize=workspace:2048",
                 "--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback",
                 "'--timingCacheFile=cache dir/timing.cache'"]:
        assert part in line, part
    fp16 = trtexec_command("m.onnx", "m.plan", EngineConfig(), "image", (64, 64))
    assert "--fp16" in fp16 and "--int8" not in fp16 and "DLA" not in fp16
    assert "--fp16" not in trtexec_command("m.onnx", "m.plan", EngineConfig(), "image", (64, 64), trt_version="11.0")
    assert profile_shapes(EngineConfig(max_batch=2), (64, 48))[2] == (2, 1, 64, 48)


def test_build_without_tensorrt_raises_backend_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where installed
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        build_engine(str(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), EngineConfig())


def _conv_onnx(path, qdq):
    """A one-Conv model, optionally with symmetric int8 Q/DQ on its input and weight."""
    w = np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    nodes, x, wt = [], "image", "w"
    if qdq:
        inits += [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(0), "z"),
                  numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
        nodes += [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                  helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0)]
        x, wt = "xd", "wd"
    nodes.append(helper.make_node("Conv", [x, wt], ["logits"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_precision_must_match_the_model(tmp_path):
    from lungedge.compress.engine import _check_model_for

    fp32, qdq = _conv_onnx(str(tmp_path / "fp32.onnx"), False), _conv_onnx(str(tmp_path / "qdq.onnx"), True)
    with pytest.raises(EngineBuildError, match="no Q/DQ nodes"):
        _check_model_for(EngineConfig(precision="int8"), fp32, "10.3.0")
    with pytest.raises(EngineBuildError, match="is a QDQ model"):
        _check_model_for(EngineConfig(precision="fp16"), qdq, "10.3.0")
    with pytest.raises(EngineBuildError, match="convert_fp16"):
        _check_model_for(EngineConfig(precision="fp16"), fp32, "11.0.0")
    _check_model_for(EngineConfig(precision="int8"), qdq, "8.6.1")
    _check_model_for(EngineConfig(precision="fp16"), fp32, "10.3.0")


class _FakeTensorRT:
    """Just enough of the tensorrt module to drive build_engine's calls and record them (no GPU here)."""

    def __init__(self, version, parse_ok=True, dla_cores=2):
        from types import SimpleNamespace as NS

        self.__version__, self.calls = version, []

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        self.Logger = Logger
        self.NetworkDefinitionCreationFlag = NS(EXPLICIT_BATCH=0)
        self.BuilderFlag = NS(FP16=1, INT8=2, GPU_FALLBACK=3)
        self.MemoryPoolType = NS(WORKSPACE="WORKSPACE")
        self.DeviceType = NS(DLA="DLA", GPU="GPU")
        calls = self.calls

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"CACHE" + self.data

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls.append(("pool", pool, size))

            def set_flag(self, flag):
                calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                calls.append(("profile", profile.shapes))

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                calls.append(("timing_cache", cache.data))
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

            def __setattr__(self, name, value):
                if name in ("default_device_type", "DLA_core"):
                    calls.append((name, value))
                object.__setattr__(self, name, value)

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shapes = (name, lo, opt, hi)

        class Network:
            def __init__(self, flags):
                calls.append(("network_flags", flags))
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN-BYTES"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                calls.append(("parse", path))
                self.network.inputs.append(NS(name="image", shape=(-1, 1, 32, 32)))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Conv): INVALID_NODE"

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version, **kw):
        fake = _FakeTensorRT(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr("lungedge.compress.engine.device_info", lambda index=0: ("Orin", "8.7"))
        return fake
    return install


def test_build_engine_call_sequence_on_tensorrt_8(fake_trt, tmp_path):
    trt = fake_trt("8.6.1.6")
    onnx_path = _conv_onnx(str(tmp_path / "qdq.onnx"), True)
    cfg = EngineConfig(precision="int8", min_batch=1, opt_batch=2, max_batch=4, workspace_mib=512, dla_core=1,
                       timing_cache=str(tmp_path / "timing.cache"))
    fp = build_engine(onnx_path, str(tmp_path / "m.plan"), cfg, "image")
    assert ("network_flags", 1) in trt.calls  # 1 << EXPLICIT_BATCH
    assert ("pool", "WORKSPACE", 512 << 20) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "flag"] == [2, 1, 3]  # INT8, FP16, GPU_FALLBACK
    assert ("profile", ("image", (1, 1, 32, 32), (2, 1, 32, 32), (4, 1, 32, 32))) in trt.calls
    assert ("default_device_type", "DLA") in trt.calls and ("DLA_core", 1) in trt.calls
    assert ("timing_cache", b"") in trt.calls
    assert (tmp_path / "m.plan").read_bytes() == b"PLAN-BYTES"  # the plan as TensorRT gave it, nothing prepended
    assert (tmp_path / "timing.cache").read_bytes() == b"CACHE"
    assert FINGERPRINT_KEYS <= set(fp) and fp["device_name"] == "Orin" and fp["compute_capability"] == "8.7"
    assert (fp["dla_core"], fp["min_batch"], fp["opt_batch"], fp["max_batch"]) == (1, 1, 2, 4)
    # A second build loads the cache the first one wrote.
    build_engine(onnx_path, str(tmp_path / "m.plan"), cfg, "image")
    assert ("timing_cache", b"CACHE") in trt.calls


def test_build_engine_on_tensorrt_10_and_failures(fake_trt, tmp_path):
    trt = fake_trt("10.3.0.26")
    onnx_path = _conv_onnx(str(tmp_path / "fp32.onnx"), False)
    fp = build_engine(onnx_path, str(tmp_path / "m.plan"), EngineConfig(precision="fp16"), "image", (32, 32))
    assert ("network_flags", 0) in trt.calls and fp["builder_flags"] == ["FP16"]
    with pytest.raises(EngineBuildError, match="expected"):
        build_engine(onnx_path, str(tmp_path / "m.plan"), EngineConfig(), "input", (32, 32))
    with pytest.raises(BackendUnavailable, match="DLA core 5"):
        build_engine(onnx_path, str(tmp_path / "m.plan"), EngineConfig(dla_core=5), "image", (32, 32))
    fake_trt("10.3.0.26", parse_ok=False)
    with pytest.raises(EngineBuildError, match="INVALID_NODE"):
        build_engine(onnx_path, str(tmp_path / "m.plan"), EngineConfig(), "image", (32, 32))


# Real builds: only where TensorRT is importable (Jetson, GPU machines); they also need a CUDA device.

def _tensorrt_and_gpu():
    trt = pytest.importorskip("tensorrt")
    from lungedge.compress.engine import device_info

    try:
        device_info()
    except BackendUnavailable as exc:
        pytest.skip(f"no CUDA device to build on: {exc}")
    return trt


def _load_plan(trt, path):
    with open(path, "rb") as fh:
        plan = fh.read()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    assert engine is not None, "the plan file must be a bare TensorRT plan"
    return plan, engine


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_float_engine(tmp_path, precision):
    trt = _tensorrt_and_gpu()
    onnx_path = _conv_onnx(str(tmp_path / "m.onnx"), False)
    cfg = EngineConfig(precision=precision, min_batch=1, opt_batch=2, max_batch=4, workspace_mib=256,
                       timing_cache=str(tmp_path / "timing.cache"))
    fp = build_engine(onnx_path, str(tmp_path / "m.plan"), cfg, "image", (32, 32))
    assert FINGERPRINT_KEYS <= set(fp) and fp["trt_version"] == trt.__version__
    assert (fp["precision"], fp["min_batch"], fp["opt_batch"], fp["max_batch"]) == (precision, 1, 2, 4)
    plan, engine = _load_plan(trt, str(tmp_path / "m.plan"))
    assert not plan.startswith(b"{") and (tmp_path / "timing.cache").stat().st_size > 0
    assert engine.num_io_tensors == 2
    # A second build reads the timing cache it wrote.
    build_engine(onnx_path, str(tmp_path / "m2.plan"), cfg, "image", (32, 32))


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_int8_engine_from_tensorrt_qdq(tmp_path, xray_cls_dir):
    trt = _tensorrt_and_gpu()
    import torch

    from lungedge.compress.calibration import CalibrationReader
    from lungedge.compress.export import export_onnx
    from lungedge.compress.quantize import QuantConfig, quantize_onnx
    from lungedge.models.registry import build
    from lungedge.runtime.datasets import read_manifest_csv, select
    from lungedge.runtime.preprocess import xray_steps

    torch.manual_seed(0)
    fp32 = export_onnx(build("student_s", 3).eval(), str(tmp_path / "fp32.onnx"), (64, 64))
    reader = CalibrationReader(select(read_manifest_csv(xray_cls_dir), split="train"), xray_steps(64), limit=16)
    qdq = quantize_onnx(fp32, str(tmp_path / "trt.onnx"), reader, QuantConfig(flavour="tensorrt", num_images=16))
    fp = build_engine(qdq["path"], str(tmp_path / "int8.plan"), EngineConfig(precision="int8", max_batch=2),
                      "image", (64, 64))
    assert fp["precision"] == "int8"
    assert ("INT8" in fp["builder_flags"]) == (parse_version(trt.__version__)[0] < 11)
    _, engine = _load_plan(trt, str(tmp_path / "int8.plan"))
    assert engine.num_io_tensors == 2
