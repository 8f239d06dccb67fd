"""``lungedge bench qc`` on a few dev-pack files: categories, exact synthetic outcomes, report, cost."""

import json
import os
import sys

import cv2
import numpy as np
import pytest

from lungedge.benchmarks import cli as bench_cli
from lungedge.benchmarks import qc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "runtime"))
from tinymodels import chest_like, classifier_model, write_bundle  # noqa: E402


def _data():
    data = os.environ.get("LUNGEDGE_DATA", os.path.join(ROOT, "..", "shared", "data"))
    if not all(os.path.isfile(os.path.join(data, d, "manifest.csv")) for d in ("xray-cls", "ct-cls", "xray-qc")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev pack {data} is missing under CI=true")
        pytest.skip(f"dev pack {data} not present")
    return data


def test_synthetic_cases_are_what_they_say(tmp_path):
    src = str(tmp_path / "src.png")
    cv2.imwrite(src, chest_like(100, 80))
    cases = qc.synthetic_cases([src], str(tmp_path))
    image = cv2.imread(src, cv2.IMREAD_GRAYSCALE)
    read = {k: cv2.imread(v[0][1], cv2.IMREAD_GRAYSCALE) for k, v in cases.items()}
    assert np.array_equal(read["inverted"], 255 - image)
    assert np.array_equal(read["rotated_90"], np.rot90(image))
    assert read["cropped"].shape == (30, 24) and np.ptp(read["constant"]) == 0
    assert read["noise"].shape == image.shape


def _skimage():
    try:
        import skimage  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("scikit-image (the dev extra) is missing under CI=true")
        pytest.skip("scikit-image not installed (pip install -e '.[dev]')")


def test_natural_images_come_from_skimage(tmp_path):
    _skimage()
    images = dict(qc.natural_images(str(tmp_path)))
    assert {"astronaut", "camera", "coffee", "moon"} <= set(images)
    assert all(min(cv2.imread(p).shape[:2]) >= 32 for p in images.values())


def test_bench_qc_without_bundles(tmp_path, capsys):
    data = _data()
    _skimage()
    out = tmp_path / "qc"
    assert bench_cli.main(["bench", "qc", "--data", data, "--max-per-category", "6", "--cost-images", "0",
                           "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    rows = {(row["modality"], row["category"]): row for row in r["rows"]}
    for modality in ("xray", "ct"):
        assert rows[(modality, "synthetic: noise")]["refused_rate"] == 1.0
        assert rows[(modality, "synthetic: noise")]["reasons"] == {"no_spatial_structure": 60}
    assert rows[("xray", "synthetic: constant")]["refused_rate"] == 1.0
    # Every lateral DICOM is refused for its header (some films are also CT-like in their histogram).
    import csv

    def manifest(folder):
        with open(os.path.join(data, folder, "manifest.csv"), newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    laterals = rows[("xray", "lateral films (DICOM, ViewPosition LL)")]
    assert laterals["n"] == len(manifest("xray-qc")) and laterals["refused_rate"] == 1.0
    assert laterals["reasons"]["lateral_view"] == laterals["n"]
    assert set(laterals["reasons"]) <= {"lateral_view", "ct_like_histogram"}
    sources = [k for k in rows if k[1].startswith("xray-cls test: ")]
    assert len(sources) == len({r["source"] for r in manifest("xray-cls") if r["split"] == "test"})
    assert all(rows[k]["n"] == 6 and rows[k]["accepted_rate"] == 1.0 for k in sources)
    assert r["command"] == f"lungedge bench qc --data {data} --max-per-category 6 --cost-images 0 --out {out}"
    report = (out / "report.md").read_text()
    # 60 of 60 noise images refused: the point estimate reaches the 99 % target, the Wilson bound (0.940) does not.
    noise = rows[("xray", "synthetic: noise")]
    assert noise["interval"] == pytest.approx([60 / (60 + 1.959963984540054 ** 2), 1.0])
    assert noise["meets_target"] is True and noise["verdict"] == "unproven"
    assert rows[("xray", "synthetic: constant")]["verdict"] is None  # no target for constant images
    assert all(rows[k]["verdict"] == "unproven" for k in sources)  # 6 of 6 accepted cannot show 97 %
    assert "| xray | synthetic: noise | header + pixels (no bundle) | 60 | 100.0% [94.0, 100.0] | 0 | 0 | " \
           ">= 99.0% refused | unproven | no_spatial_structure 60 |" in report
    assert "no bundle: header and pixel stages only" in report


def test_cost_times_both_paths(tmp_path):
    bundle = write_bundle(tmp_path / "cls", classifier_model(3), "classification", "xray",
                          ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid", quality={})
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], chest_like(seed=i))
    c = qc.cost(bundle, paths, rounds=1, threads=1)
    assert c["images"] == 6 and c["artifact"] == "onnx-fp32"
    assert c["median_ms"]["with_qc"] > 0 and c["median_ms"]["without_qc"] > 0 and c["pixel_header_checks_ms"] > 0
    assert c["overhead"] == pytest.approx(c["median_ms"]["with_qc"] / c["median_ms"]["without_qc"] - 1)


def test_judge_with_a_lung_bundle_goes_through_the_lung_crop(tmp_path):
    """A classifier trained on lung crops is judged through XrayPipeline (else it would refuse to predict)."""
    from tinymodels import segmenter_model

    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.pipelines import LungCrop, XrayPipeline
    from lungedge.runtime.predictor import Predictor

    cls = write_bundle(tmp_path / "cls", classifier_model(3), "classification", "xray",
                       ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid")
    lungs = write_bundle(tmp_path / "lungs", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                         {"mask": 0.5}, kind="probabilities")
    manifest = dict(Bundle.load(cls).manifest,
                    input_crop=LungCrop(Predictor.from_bundle(lungs, threads=1), 0.05).spec)
    write_manifest(cls, manifest)
    png = str(tmp_path / "chest.png")
    cv2.imwrite(png, chest_like(96, 128))
    judge = qc.Judge("xray", cls, threads=1, lung_bundle=lungs)
    assert isinstance(judge.runner, XrayPipeline)
    status, _ = judge(png)
    assert status in ("accept", "warn", "refuse")
    status, reasons = qc.Judge("xray", cls, threads=1)(png)  # without the lung bundle: a typed error, counted
    assert status == "error" and "lung crops" in reasons[0]


def test_lung_fields_are_a_stage_and_timed_as_quality_control(tmp_path, monkeypatch):
    """With lung-field bands and a lung bundle the stages say so, the report lists the bands, and the timing
    without quality control runs without the lung-field check."""
    from tinymodels import segmenter_model

    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.lung_fields import LungFieldCheck
    from lungedge.runtime.predictor import Predictor

    cls = write_bundle(tmp_path / "cls", classifier_model(3), "classification", "xray",
                       ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid", quality={})
    lungs = write_bundle(tmp_path / "lungs", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                         {"mask": 0.5}, kind="probabilities")
    seg = Predictor.from_bundle(lungs, threads=1)
    bands = {"lung_fraction": {"min": 0.0, "max": 1.0}}
    manifest = dict(Bundle.load(cls).manifest)
    manifest["quality"] = {"lung_fields": {"segmenter": seg.name, "segmenter_manifest_sha256": seg.bundle.manifest_sha256,
                                           "acceptance": 0.99, "accepted": 0.99, "fitted_on": "train+val splits, 9 images",
                                           "bands": bands}}
    write_manifest(cls, manifest)
    assert qc._stages(cls, lungs) == "header + pixels + lung fields + model OOD"
    assert qc._stages(cls, None) == "header + pixels + model OOD"
    info = qc._bundle_info(cls)
    assert info["lung_fields"]["bands"] == bands and info["lung_fields"]["fitted_on"] == "train+val splits, 9 images"
    checked = []
    real = LungFieldCheck.assess
    monkeypatch.setattr(LungFieldCheck, "assess", lambda self, *a: checked.append(1) or real(self, *a))
    png = str(tmp_path / "chest.png")
    cv2.imwrite(png, chest_like(96, 128))
    c = qc.cost(cls, [png] * 2, rounds=1, threads=1, lung_bundle=lungs)
    assert c["images"] == 2
    assert len(checked) == 2 + 2  # warm-up and one round, with quality control only


def test_bench_qc_one_modality_and_the_modality_check_stage(tmp_path):
    """``--modalities ct`` measures the CT bundle alone; a bundle with a modality check says so in its stages and
    in the report, and refuses the X-rays sent to it for it."""
    from test_modality_check import synthetic_entry

    from lungedge.runtime.bundle import Bundle, write_manifest

    data = _data()
    _skimage()
    entry, _, _ = synthetic_entry(8)
    cls = write_bundle(tmp_path / "ct", classifier_model(2), "classification", "ct", ["covid", "noncovid"],
                       {"covid": 0.5}, positive_label="covid", quality={})
    write_manifest(cls, dict(Bundle.load(cls).manifest, quality={"modality_check": dict(
        entry, fitted_on="synthetic", calibrated_on="synthetic")}))
    assert qc._stages(cls, None) == "header + pixels + modality check + model OOD"
    out = tmp_path / "qc"
    assert bench_cli.main(["bench", "qc", "--data", data, "--ct-bundle", cls, "--modalities", "ct",
                           "--max-per-category", "4", "--cost-images", "0", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert {row["modality"] for row in r["rows"]} == {"ct"} and list(r["bundles"]) == ["ct"]
    xrays = next(row for row in r["rows"] if row["category"] == "X-rays (xray-cls test)")
    assert xrays["n"] == 4 and "other_modality" in xrays["reasons"]
    assert "modality check against xray: fitted on synthetic" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        bench_cli.main(["bench", "qc", "--data", data, "--modalities", "mri"])
