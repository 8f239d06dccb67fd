"""lungedge bench times every ONNX artifact on ONNX Runtime and OpenVINO side by side (f32 and, where the CPU
has it, bf16); OpenVINO missing is an error for explicit names, and 'auto' records what it meant."""

import importlib.util
import os

import numpy as np
import pytest

from lungedge.benchmarks import runners
from lungedge.benchmarks.bench import resolve_rows, run_bench
from lungedge.runtime.errors import BackendUnavailable

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
if not HAVE_OPENVINO and os.environ.get("CI") == "true":
    raise RuntimeError("openvino is not installed, but CI=true requires it (pip install 'lungedge[openvino]')")
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")


@needs_openvino
def test_rows_per_cpu_backend(cls_setup):
    cpu = ("onnxruntime", "openvino-f32")
    rows = resolve_rows(cls_setup["baseline"], [cls_setup["variant"]], None, cpu)
    assert [(r["role"], r["artifact"], r.get("backend"), r.get("inference_precision")) for r in rows] == [
        ("reference", "onnx-fp32", None, None), ("baseline", "onnx-fp32", "openvino", "f32"),
        ("variant", "onnx-fp32", None, None), ("variant", "onnx-fp32", "openvino", "f32"),
        ("variant", "onnx-int8", None, None), ("variant", "onnx-int8", "openvino", "f32")]


def test_backend_names_are_checked(monkeypatch):
    with pytest.raises(BackendUnavailable, match="unknown CPU backend"):
        runners.resolve_backends(["openvino-fp16"])
    monkeypatch.setattr(runners, "openvino_variants", lambda: ())
    assert runners.resolve_backends(["auto"]) == ("onnxruntime",)
    with pytest.raises(BackendUnavailable, match="cannot run here"):
        runners.resolve_backends(["onnxruntime", "openvino-f32"])


@needs_openvino
def test_bench_side_by_side(cls_setup, tmp_path, fast_options):
    cpu = runners.resolve_backends(["auto"])
    assert cpu[:2] == ("onnxruntime", "openvino-f32")
    results = run_bench(baseline=cls_setup["baseline"], variants=[cls_setup["variant"] + ":onnx-int8"],
                        data=cls_setup["data"], out=str(tmp_path), progress=False, max_images=3,
                        **dict(fast_options, backends=("auto",), memory_runs=1, plots=False))
    rows = {r["name"]: r for r in results["rows"]}
    assert tuple(results["config"]["backends"]) == cpu
    assert "--backends " + " ".join(cpu) in results["command"]
    names = list(rows)
    assert len(names) == 2 * len(cpu)
    ref = results["rows"][0]
    assert ref["info"]["backend"] == "onnxruntime" and ref["role"] == "reference"
    f32 = next(r for r in results["rows"] if r["info"].get("inference_precision") == "f32"
               and r["info"]["artifact"] == "onnx-fp32")
    assert f32["info"]["backend"] == "openvino" and f32["name"].endswith("@openvino-f32")
    # Same FP32 file, f32 on both runtimes: the same probabilities.
    np.testing.assert_allclose(f32["per_image_probabilities"], ref["per_image_probabilities"], atol=1e-5)
    for row in results["rows"]:
        assert row["latency"]["batch1"]["p50_ms"] > 0 and row["latency"]["batchN"]["throughput_ips"] > 0
        assert row["memory"]["peak_rss_mb"] > 10 and row["memory"]["torch_loaded"] is False
        if row is not ref:
            assert row["deltas"]["auc"]["delta"] is not None and row["verdict"] in ("PASS", "FAIL")
    if "openvino-bf16" in cpu:
        bf16 = [r for r in results["rows"] if r["info"].get("inference_precision") == "bf16"]
        assert len(bf16) == 2 and all(r["deltas"] for r in bf16)  # gated like any other variant
