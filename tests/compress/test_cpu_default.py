"""The measured CPU default: gate every (artifact, backend, precision) candidate at its recorded threshold, time
the survivors interleaved, record the fastest; the runtime opens it with backend="auto"."""

import importlib.util
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
from tinymodels import SIZE, classifier_model, golden_writer, square_image, write_bundle  # noqa: E402

from lungedge.compress import cpu_default as C  # noqa: E402
from lungedge.compress import gate as G  # noqa: E402
from lungedge.models.train import evaluate  # noqa: E402
from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest  # noqa: E402
from lungedge.runtime.errors import BundleError  # noqa: E402
from lungedge.runtime.predictor import Predictor  # noqa: E402
from lungedge.runtime.selftest import run_selftest  # noqa: E402
from lungedge.runtime.tasks import task  # noqa: E402

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO and os.environ.get("CI") != "true",
                                    reason="openvino not installed")


def _flat_model():
    """Same graph as the classifier, but the head ignores the image: AUC 0.5, it must fail the gate."""
    model = classifier_model(2, seed=4)
    for init in model.graph.initializer:
        if init.name == "w2":
            init.float_data[:] = []
            init.raw_data = np.zeros((2, 4), np.float32).tobytes()
    return model


@pytest.fixture
def setup(tmp_path):
    import onnx

    root = write_bundle(tmp_path / "b", classifier_model(2, seed=4), "classification", "ct", ["covid", "noncovid"],
                        {"covid": 0.5}, positive_label="covid", golden=golden_writer())
    onnx.save(_flat_model(), os.path.join(root, "flat.onnx"))
    spec = task("ct-cls")
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (60, 1, SIZE, SIZE)).astype(np.float32)
    # Targets from the FP32 model's own scores (top half positive): the baseline is perfect, the flat model is not.
    probs = G.probabilities(G.onnx_logits(os.path.join(root, "model.onnx"), images))
    targets = np.where(probs[:, 0] >= np.median(probs[:, 0]), 0, 1)
    baseline_val = evaluate(spec, probs, targets)
    manifest = Bundle.load(root).manifest
    arts = dict(manifest["artifacts"])
    arts["onnx-fp32"] = dict(arts["onnx-fp32"], threshold=baseline_val["threshold"])
    arts["onnx-flat"] = artifact_entry(root, "flat.onnx", "onnx", "fp32", "onnxruntime", threshold=0.5)
    paths = {"onnx-fp32": os.path.join(root, "model.onnx"), "onnx-flat": os.path.join(root, "flat.onnx")}
    gate = G.GateConfig(auc_drop=0.02, sensitivity_drop=0.05, specificity_drop=0.05)
    return {"root": root, "spec": spec, "images": images, "targets": targets, "baseline_val": baseline_val,
            "arts": arts, "paths": paths, "gate": gate, "manifest": manifest}


def test_candidates_cover_onnx_artifacts_on_each_backend():
    arts = {"a": {"backend": "onnxruntime", "format": "onnx"}, "t": {"backend": "tensorrt", "format": "engine"},
            "s": {"backend": "tensorrt-source", "format": "onnx"}}
    assert C.candidates(arts, ()) == [("a", "onnxruntime", None)]
    assert C.candidates(arts, ("f32", "bf16")) == [("a", "onnxruntime", None), ("a", "openvino", "f32"),
                                                   ("a", "openvino", "bf16")]


def _choose(s, ov):
    data = C.GateData(s["spec"], s["baseline_val"], s["images"], s["targets"], s["gate"])
    return C.choose_cpu_default(data, s["paths"], s["arts"], C.Timing(threads=1, rounds=5, ov_precisions=ov))


def test_failing_candidates_are_never_chosen(setup):
    record = _choose(setup, ())
    by = {(c["artifact"], c["backend"]): c for c in record["candidates"]}
    assert by[("onnx-fp32", "onnxruntime")]["gate_passed"]
    flat = by[("onnx-flat", "onnxruntime")]
    assert not flat["gate_passed"] and flat["latency_ms"] is None
    assert (record["artifact"], record["backend"]) == ("onnx-fp32", "onnxruntime")
    assert record["latency_ms"] > 0 and record["threads"] == 1 and record["cpu"]


def test_thread_count_is_measured_too(setup):
    s = dict(setup, arts={"onnx-fp32": setup["arts"]["onnx-fp32"]})
    data = C.GateData(s["spec"], s["baseline_val"], s["images"], s["targets"], s["gate"])
    record = C.choose_cpu_default(data, s["paths"], s["arts"], C.Timing(threads=None, rounds=5, ov_precisions=()))
    options = C.thread_options(None)
    assert record["thread_options"] == list(options) and options[0] == 1
    (only,) = record["candidates"]
    assert set(only["latency_ms_by_threads"]) == {str(n) for n in options}
    assert record["threads"] == only["threads"] in options
    assert record["latency_ms"] == min(only["latency_ms_by_threads"].values())
    assert C.thread_options(3) == (3,)


def test_nothing_passing_is_recorded_not_invented(setup):
    s = dict(setup, gate=G.GateConfig(auc_drop=-1.0))  # a drop below -1 is impossible: nothing passes
    record = _choose(s, ())
    assert record["artifact"] is None and "no candidate passes" in record["reason"]


@needs_openvino
def test_openvino_candidates_gated_and_timed(setup):
    ov = C.openvino_precisions()
    record = _choose(setup, ov)
    fp32 = [c for c in record["candidates"] if c["artifact"] == "onnx-fp32"]
    assert [(c["backend"], c["inference_precision"]) for c in fp32] == [("onnxruntime", None)] + \
        [("openvino", p) for p in ov]
    assert all(c["gate_passed"] and c["latency_ms"] > 0 for c in fp32)
    assert record["latency_ms"] == min(c["latency_ms"] for c in fp32)


@needs_openvino
def test_runtime_opens_the_recorded_choice(setup):
    root, manifest = setup["root"], dict(setup["manifest"])
    with pytest.raises(BundleError, match="records no measured CPU default"):
        Predictor.from_bundle(root, backend="auto")
    manifest["cpu_default"] = {"artifact": "onnx-fp32", "backend": "openvino", "inference_precision": "f32",
                               "threads": 1, "latency_ms": 0.1, "candidates": []}
    write_manifest(root, manifest)
    predictor = Predictor.from_bundle(root, backend="auto")
    assert predictor.info["backend"] == "openvino" and predictor.info["inference_precision"] == "f32"
    assert predictor.backend.threads == 1  # the measured thread count
    assert predictor.predict(square_image())["label"] in ("covid", "noncovid")
    report = run_selftest(root, backend="auto", threads=1)
    assert report["passed"] and report["backend"] == "openvino"


@pytest.mark.parametrize("choice,match", [
    ({"artifact": "onnx-int8", "backend": "onnxruntime"}, "does not list"),
    ({"artifact": "onnx-fp32", "backend": "tensorrt"}, "is not one of"),
    ({"artifact": "onnx-fp32", "backend": "openvino", "inference_precision": "fp16"}, "f32 or bf16"),
    ("onnx-fp32", "must be an object"),
    ({"artifact": "onnx-fp32", "backend": "onnxruntime", "threads": 0}, "positive integer"),
])
def test_bad_cpu_default_is_a_bundle_error(setup, choice, match):
    manifest = dict(setup["manifest"], cpu_default=choice)
    with pytest.raises(BundleError, match=match):
        write_manifest(setup["root"], manifest)
