"""lungedge bench end to end on tiny bundles over a handful of real test images; memory subprocess; CLI."""

import json
import os

import numpy as np
import pytest

from lungedge.benchmarks import cli
from lungedge.benchmarks.bench import resolve_rows, run_bench
from lungedge.benchmarks.memory import measure_peak_rss
from lungedge.benchmarks.report import load_results


def test_rows_reference_first_and_every_runnable_artifact(cls_setup):
    rows = resolve_rows(cls_setup["baseline"], [cls_setup["variant"]], cls_setup["run"])
    assert [r["role"] for r in rows] == ["reference", "baseline", "variant", "variant"]
    assert [r.get("artifact") for r in rows[2:]] == ["onnx-fp32", "onnx-int8"]
    only = resolve_rows(cls_setup["baseline"], [cls_setup["variant"] + ":onnx-int8"], None)
    assert [r["role"] for r in only] == ["reference", "variant"] and only[1]["artifact"] == "onnx-int8"


def test_classification_bench(cls_results):
    results, out = cls_results
    rows = results["rows"]
    assert [r["info"]["precision"] for r in rows] == ["fp32", "fp32", "fp32", "int8"]
    assert rows[0]["info"]["backend"] == "torch" and results["reference"] == rows[0]["name"]
    n = results["data"]["n_images"]
    assert n == 12 and results["data"]["n_val_images"] == 12  # 4 per label, 3 labels, test and val
    for row in rows:
        acc = row["accuracy"]
        assert 0.0 <= acc["test"]["auc"] <= 1.0 and acc["threshold_rule"] == "youden"
        assert len(row["per_image_probabilities"]) == n
        assert set(acc["per_class"]["classes"]) == {"covid", "normal", "pneumonia"}
        lat = row["latency"]
        assert lat["batch1"]["n"] >= 2 and lat["batch1"]["p50_ms"] > 0
        assert set(lat["stages"]) == {"preprocess", "model", "postprocess"}
        assert lat["batchN"]["batch"] == 4 and lat["batchN"]["throughput_ips"] > 0
        assert row["complexity"]["macs"] > 0
        assert row["memory"]["peak_rss_mb"] > 10
    torch_row, onnx_row, _, int8_row = rows
    # the ONNX export of the same weights scores the same images the same way
    assert onnx_row["fidelity"]["label_agreement"] == 1.0
    assert onnx_row["fidelity"]["mean_abs_delta_prob"] < 1e-4
    assert onnx_row["deltas"]["auc"]["delta"] == pytest.approx(0.0, abs=1e-9)
    assert onnx_row["complexity"]["macs"] == torch_row["complexity"]["macs"]
    assert torch_row["complexity"]["macs_torch_pruning"] >= torch_row["complexity"]["macs"]
    # the INT8 file is about 4x smaller; its tolerances come from the recipe recorded in the variant manifest
    assert int8_row["size_ratio"] > 2.5
    assert int8_row["tolerance_source"] == "recipe" and int8_row["tolerances"]["auc"] == 0.05
    assert onnx_row["tolerance_source"] == "default" and onnx_row["tolerances"]["auc"] == 0.01
    for metric in ("auc", "sensitivity", "specificity", "macro_auc"):
        d = int8_row["deltas"][metric]
        assert "error" in d or d["low"] <= d["delta"] <= d["high"]
    assert int8_row["verdict"] in ("PASS", "FAIL", "ERROR")
    assert int8_row["speedup"]["batch1"]["low"] <= int8_row["speedup"]["batch1"]["ratio"]
    assert torch_row["memory"]["torch_loaded"] is True
    assert int8_row["memory"]["torch_loaded"] is False  # a bundle's inference process never imports torch
    assert results["command"].startswith("lungedge bench --baseline ")
    assert results["environment"]["libraries"]["onnxruntime"]
    assert results["noisy"] in (True, False)


def test_outputs_written(cls_results):
    results, out = cls_results
    for name in ("results.json", "report.md", "roc.png", "pareto.png", "examples.png"):
        assert os.path.getsize(os.path.join(out, name)) > 500, name
    with open(os.path.join(out, "results.json"), encoding="utf-8") as fh:
        json.load(fh, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    loaded = load_results(out)
    assert loaded["rows"][3]["deltas"]["auc"]["delta"] == pytest.approx(results["rows"][3]["deltas"]["auc"]["delta"])
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "![ROC curves" in md and results["command"] in md


def test_segmentation_bench(seg_results):
    results, out = seg_results
    assert results["task"] == "segmentation" and results["data"]["n_images"] == 5
    ref, base, var = results["rows"]
    assert ref["info"]["backend"] == "torch" and var["info"]["precision"] == "int8"
    acc = ref["accuracy"]
    assert acc["distance_unit"] == "px" and acc["ignore_label"] == 255
    assert len(acc["per_image"]["dice"]) == 5 and all(0.0 <= d <= 1.0 for d in acc["per_image"]["dice"])
    assert set(acc["summary"]) == {"dice", "iou", "voe", "rvd", "asd", "msd"}
    assert base["fidelity"]["dice_to_baseline"]["mean"] > 0.99  # the ONNX export of the same weights
    assert var["fidelity"]["dice_to_baseline"]["mean"] > 0.5
    d = var["deltas"]["dice"]
    assert d["low"] <= d["delta"] <= d["high"] and d["tolerance"] == 0.01
    assert ref["memory"] is None
    for name in ("dice_distribution.png", "pareto.png", "examples.png", "report.md"):
        assert os.path.isfile(os.path.join(out, name)), name


def test_ignore_label_is_excluded():
    """A prediction covering the ignore pixels scores as if they were not there."""
    from lungedge.benchmarks.accuracy import score_segmentation
    from lungedge.benchmarks.data import EvalImage

    gt = np.zeros((40, 40), np.uint8)
    gt[10:20, 10:20] = 1
    gt[25:30, 25:30] = 255
    pred = (gt > 0).astype(np.uint8)  # lung plus the ignore block
    im = EvalImage(file="x.png", array=np.zeros((40, 40), np.float32), meta={"pixel_spacing": None}, patient="p",
                   mask=gt)
    scored = score_segmentation([pred], [im])
    assert scored["per_image"]["dice"] == [1.0] and scored["per_image"]["asd"] == [0.0]
    im.meta = {"pixel_spacing": (0.5, 0.5)}
    assert score_segmentation([pred], [im])["distance_unit"] == "mm"


def test_memory_subprocess_reports_a_plausible_peak(cls_setup):
    from lungedge.runtime.datasets import read_manifest_csv, select

    images = [r.image for r in select(read_manifest_csv(cls_setup["data"]), split="test")[:3]]
    report = measure_peak_rss({"bundle": cls_setup["variant"], "artifact": "onnx-int8"}, images, n=3, threads=1)
    assert "error" not in report, report.get("error")
    # numpy + OpenCV + ONNX Runtime and a tiny model: tens of MB, far from GBs
    assert 20 < report["peak_rss_mb"] < 1500
    assert report["vmhwm_kb"] >= report["vmhwm_after_load_kb"] >= report["vmhwm_at_start_kb"] > 0
    assert report["predictions"] == 3 and report["torch_loaded"] is False
    bad = measure_peak_rss({"bundle": "/nonexistent", "artifact": "onnx-int8"}, images, n=1)
    assert bad["peak_rss_mb"] is None and "failed" in bad["error"]


def test_cli_prints_the_table(cls_setup, tmp_path, capsys):
    code = cli.main(["bench", "--baseline", cls_setup["baseline"], "--variants", cls_setup["variant"] + ":onnx-int8",
                     "--data", cls_setup["data"], "--threads", "1", "--batch", "2", "--rounds", "3",
                     "--batch-rounds", "2", "--warmup", "1", "--max-images", "3", "--memory-runs", "0",
                     "--n-boot", "100", "--no-plots", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "onnx-int8" in printed and "dAUC [95% CI]" in printed
    results = load_results(str(tmp_path))
    assert "--rounds 3" in results["command"] and "--max-images 3" in results["command"]
    assert not os.path.exists(tmp_path / "roc.png")


def test_mismatched_tasks_are_refused(cls_setup, seg_setup):
    from lungedge.runtime.errors import BundleError

    with pytest.raises(BundleError, match="compare like with like"):
        run_bench(baseline=cls_setup["baseline"], variants=[seg_setup["baseline"]], data=cls_setup["data"],
                  progress=False, max_images=1, memory_runs=0)


def test_threshold_never_fitted_on_test(cls_results):
    """The operating threshold equals the one fitted on the validation scores alone."""
    from lungedge import metrics as M

    results, _ = cls_results
    row = results["rows"][1]
    assert results["data"]["threshold_fit_split"] == "val"
    assert not results["data"]["threshold_fit_on_evaluated_split"]
    pos = results["labels"].index(results["positive_label"])
    y_val = np.array([lab == results["positive_label"] for lab in results["per_image"]["val_labels"]], int)
    val_scores = np.asarray(row["per_image_val_probabilities"])[:, pos]
    assert row["accuracy"]["threshold"] == M.fit_threshold(y_val, val_scores, rule="youden")
    assert row["accuracy"]["test"]["threshold"] == row["accuracy"]["threshold"]


def test_jetson_path_with_a_recorded_tegrastats(cls_setup, tmp_path, monkeypatch, fast_options):
    """With a `tegrastats` on PATH (here replaying lines recorded on an Orin Nano, JetPack 6) the bench samples it
    throughout, gives every row an energy phase and writes the Jetson section."""
    import stat

    from test_tegrastats import JP6_ORIN_NANO, JP6_ORIN_NANO_LOAD

    fake = tmp_path / "bin" / "tegrastats"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nwhile true; do echo '{JP6_ORIN_NANO}'; sleep 0.05; echo '{JP6_ORIN_NANO_LOAD}'; "
                    "sleep 0.05; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    results = run_bench(baseline=cls_setup["baseline"], variants=[cls_setup["variant"] + ":onnx-int8"],
                        data=cls_setup["data"], out=str(out), progress=False,
                        **dict(fast_options, max_images=2, memory_runs=0))
    energy = results["jetson"]["energy"]
    assert energy["idle"]["samples"] >= 5 and energy["idle"]["power_source"] == "VDD_IN"
    for row in results["rows"]:
        e = row["energy"]
        assert e["images"] > 0 and e["summary"]["samples"] >= 2
        assert 6167 <= e["summary"]["power_mw_mean"] <= 12479
        assert e["energy_per_image_j"] == pytest.approx(e["summary"]["power_mw_mean"] / 1000 * e["seconds"] / e["images"])
    assert results["throttled"] is False
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Jetson power" in md and "energy / image J" in md
