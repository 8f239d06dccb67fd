"""OpenVINO backend: numerics against ONNX Runtime (f32 tight, bf16 within its gate), pinned settings, no fallback.

OpenVINO is part of the dev extra and of the runtime-Python venvs, so these tests run in CI; where it is missing
they skip, except under CI=true, where a missing OpenVINO fails.
"""

import importlib.util
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from tinymodels import SIZE, classifier_model, golden_writer, segmenter_model, square_image, write_bundle

from lungedge.runtime.backends import create_backend
from lungedge.runtime.backends import openvino as ov_backend
from lungedge.runtime.bundle import Bundle
from lungedge.runtime.errors import BackendUnavailable, BundleError
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.selftest import run_selftest

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
if not HAVE_OPENVINO and os.environ.get("CI") == "true":
    raise RuntimeError("openvino is not installed, but CI=true requires it (pip install 'lungedge[openvino]')")
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed (pip install 'lungedge[openvino]')")

F32_TOL = 1e-5  # same graph, same float32 arithmetic up to summation order
BF16_TOL = 5e-2  # bf16 keeps 8 mantissa bits: the gate for logits of order 1


def _batch(n, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32)


def _cpu_has_bf16():
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


MODELS = [
    ("classifier-3", lambda: classifier_model(3)),
    ("classifier-2", lambda: classifier_model(2, seed=5)),
    ("segmenter-1", lambda: segmenter_model(1, cut=0.3)),
    ("segmenter-4", lambda: segmenter_model(4, with_sigmoid=False)),
]


@pytest.fixture
def onnx_path(tmp_path):
    def make(model):
        import onnx

        path = str(tmp_path / "model.onnx")
        onnx.save(model, path)
        return path
    return make


@needs_openvino
@pytest.mark.parametrize("name,build", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("n", [1, 5])
def test_f32_matches_onnxruntime(onnx_path, name, build, n):
    path = onnx_path(build())
    x = _batch(n, seed=n)
    expected = create_backend("onnxruntime", path, threads=1).run(x)
    with create_backend("openvino", path, precision="f32", threads=1) as backend:
        got = backend.run(x)
        assert backend.precision == "f32" and backend.threads == 1 and backend.performance_mode == "LATENCY"
        assert backend.input_name == "image" and backend.output_names == ["logits"]
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=F32_TOL)


@needs_openvino
@pytest.mark.parametrize("name,build", MODELS[:2], ids=[m[0] for m in MODELS[:2]])
def test_bf16_within_its_gate_or_refused(onnx_path, name, build):
    """BF16 runs at bf16 (visibly different from f32, within the gate) or, without BF16 hardware, is refused."""
    path = onnx_path(build())
    x = _batch(6)
    expected = create_backend("onnxruntime", path, threads=1).run(x)
    if not _cpu_has_bf16():
        with pytest.raises(BackendUnavailable, match="cannot run bf16"):
            create_backend("openvino", path, precision="bf16", threads=1)
        return
    backend = create_backend("openvino", path, precision="bf16", threads=1)
    got = backend.run(x)
    diff = float(np.max(np.abs(got - expected)))
    assert backend.precision == "bf16"
    assert diff <= BF16_TOL
    assert diff > F32_TOL, "bf16 gave float32-exact results: the precision hint did not take effect"


@needs_openvino
def test_f32_is_pinned_even_where_openvino_would_pick_bf16(onnx_path):
    """The pitfall: with no hint OpenVINO runs BF16 on BF16 CPUs; the backend's default f32 must stay exact."""
    import openvino

    path = onnx_path(classifier_model(3))
    if _cpu_has_bf16():
        unpinned = openvino.Core().compile_model(path, "CPU")
        assert ov_backend._type_name(unpinned.get_property("INFERENCE_PRECISION_HINT")) == "bf16"
    backend = create_backend("openvino", path)  # no precision given: f32
    x = _batch(4)
    np.testing.assert_allclose(backend.run(x), create_backend("onnxruntime", path).run(x), rtol=0, atol=F32_TOL)


@needs_openvino
def test_run_outputs_matches_onnxruntime(tmp_path):
    """Several named outputs in one call (what out-of-distribution scoring needs), as on ONNX Runtime."""
    import onnx
    from onnx import helper

    model = classifier_model(3)
    model.graph.output.append(helper.make_tensor_value_info("g1", onnx.TensorProto.FLOAT, ["N", 4, 1, 1]))
    path = str(tmp_path / "two-outputs.onnx")
    onnx.save(model, path)
    x = _batch(3)
    ort_out = create_backend("onnxruntime", path).run_outputs(x, ["logits", "g1"])
    backend = create_backend("openvino", path)
    assert set(backend.output_names) == {"logits", "g1"}
    got = backend.run_outputs(x, ["logits", "g1"])
    for name in ("logits", "g1"):
        np.testing.assert_allclose(got[name], ort_out[name], rtol=0, atol=F32_TOL)
    with pytest.raises(BundleError, match="no outputs"):
        backend.run_outputs(x, ["nope"])


@needs_openvino
@pytest.mark.parametrize("precision", ["fp16", "int8", "auto", ""])
def test_unsupported_precision_is_refused(onnx_path, precision):
    with pytest.raises(BackendUnavailable, match="inference precision"):
        create_backend("openvino", onnx_path(classifier_model(3)), precision=precision)


@needs_openvino
def test_bad_options_and_models_are_typed_errors(onnx_path, tmp_path):
    path = onnx_path(classifier_model(3))
    with pytest.raises(BackendUnavailable, match="performance mode"):
        create_backend("openvino", path, performance_mode="fastest")
    with pytest.raises(BackendUnavailable, match="device 'GPU'.*never picks another"):
        create_backend("openvino", path, device="GPU")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(BundleError, match="OpenVINO cannot load"):
        create_backend("openvino", str(garbage))
    with pytest.raises(BundleError, match="no such file"):
        create_backend("openvino", str(tmp_path / "absent.onnx"))


def test_missing_openvino_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"lungedge\[openvino\]"):
        create_backend("openvino", "model.onnx")


@needs_openvino
def test_precision_readback_mismatch_is_refused(onnx_path, monkeypatch):
    """If OpenVINO compiled at another precision than the one pinned, the backend refuses to run."""
    import openvino

    real_core = openvino.Core

    class Compiled:
        def __init__(self, compiled):
            self.compiled = compiled

        def get_property(self, key):
            return openvino.Type.bf16 if key == "INFERENCE_PRECISION_HINT" else self.compiled.get_property(key)

    class Core(real_core):
        def compile_model(self, *args, **kwargs):
            return Compiled(real_core.compile_model(self, *args, **kwargs))

    monkeypatch.setattr(openvino, "Core", Core)
    with pytest.raises(BackendUnavailable, match="compiled the model at bf16 although f32"):
        create_backend("openvino", onnx_path(classifier_model(3)), precision="f32")


@needs_openvino
def test_compile_cache_is_written_and_reused(onnx_path, tmp_path):
    path = onnx_path(classifier_model(3))
    cache = tmp_path / "cache"
    first = create_backend("openvino", path, cache_dir=str(cache))
    blobs = sorted(os.listdir(cache))
    assert blobs and first.cache_dir == str(cache)
    second = create_backend("openvino", path, cache_dir=str(cache))
    assert sorted(os.listdir(cache)) == blobs  # loaded from the cache, nothing new compiled
    x = _batch(3)
    np.testing.assert_array_equal(first.run(x), second.run(x))


@needs_openvino
def test_unwritable_cache_is_logged_and_skipped(onnx_path, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    backend = create_backend("openvino", onnx_path(classifier_model(3)), cache_dir=str(blocker / "cache"))
    assert backend.cache_dir is None
    assert "compile cache disabled" in caplog.text
    assert backend.run(_batch(1)).shape == (1, 3)


@needs_openvino
def test_run_from_several_threads(onnx_path):
    path = onnx_path(classifier_model(3))
    backend = create_backend("openvino", path, threads=1)
    inputs = [_batch(2, seed=s) for s in range(4)]
    expected = [backend.run(x) for x in inputs]
    got, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(20):
                got[i] = backend.run(inputs[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.run(inputs[0])


@needs_openvino
def test_predictor_on_openvino_matches_onnxruntime(xray_cls_bundle, xray_lung_bundle):
    image = square_image()
    for bundle in (xray_cls_bundle, xray_lung_bundle):
        ov = Predictor.from_bundle(bundle, backend="openvino", threads=1)
        ref = Predictor.from_bundle(bundle, threads=1)
        a, b = ov.predict(image), ref.predict(image)
        assert a["bundle"]["backend"] == "openvino" and a["bundle"]["inference_precision"] == "f32"
        assert a["bundle"]["artifact"] == b["bundle"]["artifact"] == "onnx-fp32"
        if "probabilities" in a:
            assert a["label"] == b["label"]
            for label in a["probabilities"]:
                assert abs(a["probabilities"][label] - b["probabilities"][label]) < 1e-6
        else:
            np.testing.assert_array_equal(a["mask"], b["mask"])
        # The compile cache lives in the bundle folder and does not disturb its checksums.
        assert os.listdir(os.path.join(bundle, "cache", "openvino"))
        Bundle.load(bundle)


def test_openvino_finds_the_onnx_artifacts_not_engines(tmp_path):
    bundle = Bundle(str(tmp_path), {"artifacts": {
        "onnx-fp32": {"path": "m.onnx", "format": "onnx", "precision": "fp32", "backend": "onnxruntime"},
        "onnx-int8": {"path": "q.onnx", "format": "onnx", "precision": "int8", "backend": "onnxruntime"},
        "trt-fp16": {"path": "m.engine", "format": "engine", "precision": "fp16", "backend": "tensorrt"}}})
    assert bundle.find_artifact("openvino") == "onnx-int8"
    assert bundle.find_artifact("openvino", "fp32") == "onnx-fp32"
    with pytest.raises(BundleError, match="no openvino artifact at fp16"):
        bundle.find_artifact("openvino", "fp16")


@needs_openvino
def test_selftest_on_openvino(tmp_path):
    bundle = write_bundle(tmp_path / "b", classifier_model(3), "classification", "xray",
                          ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                          golden=golden_writer())
    report = run_selftest(bundle, backend="openvino", threads=1)
    assert report["passed"] and report["backend"] == "openvino" and report["inference_precision"] == "f32"
    assert report["max_abs_diff"] <= 1e-4
    with pytest.raises(BundleError, match="no 'bf16' entry"):
        run_selftest(bundle, backend="openvino", inference_precision="bf16")


@needs_openvino
def test_openvino_does_not_import_torch(xray_cls_bundle):
    code = ("import sys; from lungedge.runtime.predictor import Predictor; import numpy as np; "
            f"p = Predictor.from_bundle({xray_cls_bundle!r}, backend='openvino', threads=1); "
            "p.predict(np.full((40, 50), 7, np.uint8) + np.arange(50, dtype=np.uint8)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_outputs_found_by_their_onnx_names_when_openvino_folds_an_identity(tmp_path):
    """A graph output produced by an Identity (how lungedge names DenseNet's feature output) keeps its name."""
    pytest.importorskip("openvino")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from lungedge.runtime.backends import create_backend

    nodes = [helper.make_node("Flatten", ["image"], ["/model/Flatten_output_0"], axis=1),
             helper.make_node("MatMul", ["/model/Flatten_output_0", "w"], ["logits"]),
             helper.make_node("Identity", ["/model/Flatten_output_0"], ["features"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 3], np.ones(48, np.float32).tolist())
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    backend = create_backend("openvino", path, threads=1)
    assert backend.output_names == ["logits", "features"]
    out = backend.run_outputs(np.ones((1, 1, 4, 4), np.float32), ["features", "logits"])
    assert out["features"].shape == (1, 16) and np.allclose(out["logits"], 16.0)
