"""``lungedge bench dicom-node``: the report from a results dict; a short end-to-end run (slow, needs Orthanc)."""

import json
import os
import shutil
import sys

import pytest

from lungedge.benchmarks.dicom_node import percentiles, write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def test_percentiles_and_report(tmp_path):
    lat = percentiles([0.1, 0.2, 0.3, 0.4, 1.0])
    assert lat["p50_s"] == pytest.approx(0.3) and lat["max_s"] == 1.0 and lat["n"] == 5
    results = {"command": "lungedge bench dicom-node --xray-bundle b", "bundles": {"xray_bundle": "xray-cls-tiny"},
               "cpu": {"model": "CPU X", "logical_cpus": 2, "load_average_at_start": [1.0, 1.0, 1.0]},
               "xray_latency": lat,
               "ct_series": {"slices": 300, "side": 512, "send_s": 9.0, "last_slice_to_sr_s": 4.4, "settle_s": 1.0}}
    write_report(results, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "| X-ray, one at a time: C-STORE end -> SR at Orthanc, p50 / p95 (n=5) | 0.300 s / 0.880 s |" in text
    assert "4.40 s (settle 1.0 s included) | <= 15 s |" in text and "CPU X" in text
    assert "tests' 32-pixel ONNX models" in text  # tiny bundles are called what they are
    assert json.loads((tmp_path / "results.json").read_text())["cpu"]["model"] == "CPU X"


@pytest.mark.slow
def test_bench_runs_end_to_end_with_tiny_bundles(tmp_path, dicom_dir):
    for tool in ("Orthanc",):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "runtime"))
    from tinymodels import classifier_model, segmenter_model, write_bundle

    from lungedge.benchmarks.dicom_node import main

    cls = write_bundle(tmp_path / "xray-cls-tiny", classifier_model(3), "classification", "xray",
                       ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid")
    lesion = write_bundle(tmp_path / "ct-lesion-tiny", segmenter_model(1, cut=1.8), "segmentation", "ct",
                          ["background", "lesion"], {"mask": 0.5}, kind="probabilities")
    out = tmp_path / "out"
    assert main(["--xray-bundle", cls, "--ct-lesion-bundle", lesion, "--dicom", dicom_dir, "--warmup", "1",
                 "--latency-images", "3", "--burst-images", "3", "--ct-slices", "10", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["xray_latency"]["n"] == 3 and results["xray_burst"]["images"] == 3
    assert results["ct_series"]["slices"] == 10 and results["ct_series"]["last_slice_to_sr_s"] > 0
