"""Slow: the benchmark on the trained baselines (runs/<task>-<arch>) and the whole dev-pack split.

The strongest check of the bench's plumbing: scored through the runtime (readers, manifest preprocessing,
ONNX Runtime), the baseline must reproduce the test metrics its training run recorded with torch, at the
threshold its training fitted on validation. Runs come from tools/train_baselines.sh (LUNGEDGE_RUNS, default
runs/); a task whose run is not trained yet is skipped.
"""

import json
import os

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = os.environ.get("LUNGEDGE_RUNS", os.path.join(ROOT, "runs"))
OPTIONS = dict(rounds=10, batch_rounds=4, warmup=2, min_rounds=5, memory_runs=5, n_boot=500, batch=8,
               threads=0, max_seconds=120.0)


def trained(name):
    run = os.path.join(RUNS, name)
    if not os.path.isfile(os.path.join(run, "metrics.json")):
        pytest.skip(f"{run} has no metrics.json yet (train it with tools/train_baselines.sh)")
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as fh:
        return run, json.load(fh)


def trained_lung_bundle(run):
    """The lung bundle a run trained on lung crops was trained with (its config's ``lung_bundle``), or None."""
    with open(os.path.join(run, "config.json"), encoding="utf-8") as fh:
        path = json.load(fh)["config"].get("lung_bundle")
    if not path:
        return None
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        pytest.skip(f"{run} was trained on lung crops by {path}, which is not here (tools/train_baselines.sh builds it)")
    return path


def test_xray_classifier_reproduces_its_training_metrics(xray_cls_dir, tmp_path):
    from lungedge.benchmarks.bench import run_bench
    from lungedge.cli.demo import fallback_variant
    from lungedge.compress.pipeline import export_baseline

    run, recorded = trained("xray-cls-densenet121")
    lung_bundle = trained_lung_bundle(run)
    base = export_baseline(run, str(tmp_path / "baseline"), data_dir=xray_cls_dir, overwrite=True)
    variant = fallback_variant(base, str(tmp_path / "int8"), data=xray_cls_dir)
    results = run_bench(baseline=base, variants=[variant + ":onnx-int8"], data=xray_cls_dir, torch_run=run,
                        out=str(tmp_path / "out"), progress=False, lung_bundle=lung_bundle, **OPTIONS)
    torch_row, onnx_row, int8_row = results["rows"]
    assert results["data"]["n_images"] == recorded["n_test"]
    for row in (torch_row, onnx_row):
        assert row["accuracy"]["threshold"] == pytest.approx(recorded["val"]["threshold"], abs=1e-6)
        assert row["accuracy"]["test"]["auc"] == pytest.approx(recorded["test"]["auc"], abs=1e-4)
        assert row["accuracy"]["test"]["sensitivity"] == pytest.approx(recorded["test"]["sensitivity"], abs=1e-4)
    assert onnx_row["fidelity"]["label_agreement"] == 1.0
    assert int8_row["fidelity"]["label_agreement"] > 0.9
    assert int8_row["size_ratio"] > 3.5
    assert int8_row["memory"]["peak_rss_mb"] < torch_row["memory"]["peak_rss_mb"]
    assert os.path.isfile(tmp_path / "out" / "report.md")


@pytest.mark.parametrize("name,data_fixture", [("xray-seg-unet", "xray_seg_dir"), ("ct-seg-unet", "ct_seg_dir")])
def test_segmenter_dice_close_to_its_training_run(name, data_fixture, request, tmp_path):
    """Training scores DICE on the network grid (padding included), the bench on the image grid: close, not equal."""
    from lungedge.benchmarks.bench import run_bench
    from lungedge.compress.pipeline import export_baseline

    run, recorded = trained(name)
    data = request.getfixturevalue(data_fixture)
    base = export_baseline(run, str(tmp_path / "baseline"), data_dir=data, overwrite=True)
    results = run_bench(baseline=base, data=data, torch_run=run, progress=False, **dict(OPTIONS, memory_runs=0))
    torch_row, onnx_row = results["rows"]
    assert torch_row["accuracy"]["summary"]["dice"]["mean"] == pytest.approx(recorded["test"]["dice"], abs=0.05)
    assert onnx_row["fidelity"]["dice_to_baseline"]["mean"] > 0.99


def test_ct_study_scaling_on_real_slices(ct_seg_dir, ct_cls_dir, tmp_path):
    from lungedge.benchmarks.scaling import run_scaling
    from lungedge.compress.pipeline import export_baseline

    run, _ = trained("ct-seg-unet")
    seg = export_baseline(run, str(tmp_path / "seg"), data_dir=ct_seg_dir, overwrite=True)
    res = run_scaling(segmenter=seg, data_dirs=[ct_seg_dir, ct_cls_dir], slices=(10, 50), repeats=2,
                      out=str(tmp_path / "out"), progress=False)
    assert all("error" not in p for p in res["points"])
    assert res["fit"]["per_slice_s"] > 0
    # Memory is measured at every point; whether it stays flat is the scaling benchmark's figure (300 slices,
    # BENCHMARKS.md): slices stream through the study pipeline, so 10 and 50 slices differ by noise (the old
    # "grows with the slices" check failed on 1676 MB for 10 slices against 1458 MB for 50).
    assert all(p["peak_rss_mb"] > 0 for p in res["points"])
