"""Quality control: header, pixel and model stages with exact expectations, the "not assessed" path, real data."""

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from tinymodels import (
    chest_like,
    classifier_model,
    classifier_with_features,
    ct_phantom,
    segmenter_model,
    square_image,
    write_bundle,
)

from lungedge.runtime import cli
from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest
from lungedge.runtime.errors import BundleError
from lungedge.runtime.io import read_any
from lungedge.runtime.io.dicom import parse_age_years
from lungedge.runtime.ood import OodScorer, calibrate, energy, fit_gaussians, mahalanobis
from lungedge.runtime.pipelines import CtStudyPipeline, XrayPipeline
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.quality import (
    PIXEL_LIMITS,
    QualityControl,
    content_region,
    header_findings,
    pixel_scores,
)
from lungedge.runtime.report import render_overlay, summary_row

DISPLAY = {"unit": "display", "intensity_max": 255.0}
LABELS = ["covid", "normal", "pneumonia"]


def _assess(image, spec=None, modality="xray", meta=None):
    return QualityControl(spec or {}, modality).assess(image, dict(DISPLAY, **(meta or {})))


def _reasons(assessment, status=None):
    return [f.reason for f in assessment.findings if status is None or f.status == status]


# ------------------------------------------------------------------------------------------- pixel stage

def test_chest_like_image_is_accepted():
    a = _assess(chest_like())
    assert a.status == "accept" and a.findings == []
    assert set(a.scores) == set(PIXEL_LIMITS["xray"])


def test_constant_image_is_refused_with_its_value():
    a = _assess(np.full((100, 120), 128, np.uint8))
    blank = [f for f in a.findings if f.reason == "blank_or_constant"][0]
    assert (a.status, blank.status, blank.value, blank.limit) == ("refuse", "refuse", 0.0, 0.02)
    assert a.scores["entropy_bits"] == 0.0 and a.scores["neighbour_correlation"] == 0.0


def test_uniform_noise_has_no_spatial_structure():
    noise = np.random.default_rng(0).integers(0, 256, (160, 144)).astype(np.uint8)
    a = _assess(noise)
    assert _reasons(a, "refuse") == ["no_spatial_structure"]
    assert abs(a.scores["neighbour_correlation"]) < 0.05


def test_saturated_fraction_is_measured_exactly():
    img = chest_like(120, 100)  # statistics on every 2nd row and column (STATS_SIDE 64): 60 x 50 samples
    img[:72] = 255  # 36 of the 60 sampled rows: 60% saturated
    a = _assess(img)
    assert a.scores["saturated_fraction"] == pytest.approx(0.6)
    sat = [f for f in a.findings if f.reason == "saturated"][0]
    assert (sat.status, sat.limit) == ("refuse", 0.5)
    assert "0.6 above 0.5" in sat.message


def test_dark_clipping_and_low_dynamic_range():
    img = chest_like(60, 50)  # within STATS_SIDE: every pixel counts
    img[:48] = 0  # 80% black, and not letterbox bars: row 0 is not constant
    img[0, 0] = 1
    a = _assess(img)
    assert a.scores["dark_fraction"] == pytest.approx((48 * 50 - 1) / (60 * 50))
    assert "clipped_dark" in _reasons(a, "refuse")
    flat = (120 + chest_like() // 16).astype(np.uint8)  # 16 grey levels: little range, little entropy
    b = _assess(flat)
    assert "low_dynamic_range" in _reasons(b) and b.scores["dynamic_range"] < 0.08


def test_extreme_aspect_ratio_and_letterbox_bars():
    strip = chest_like(48, 240)
    a = _assess(strip)
    assert a.scores["aspect_ratio"] == pytest.approx(5.0)
    assert _reasons(a, "refuse") == ["extreme_aspect_ratio"]
    boxed = np.zeros((240, 240), np.uint8)
    boxed[60:180] = chest_like(120, 240)  # letterboxed 2:1 content
    region, box = content_region(boxed)
    assert box == (60, 180, 0, 240) and region.shape == (120, 240)
    assert _assess(boxed).scores["aspect_ratio"] == pytest.approx(2.0)


def test_hu_images_use_the_hu_window():
    slice_hu = ct_phantom()[0]
    scores = pixel_scores(slice_hu, {"unit": "HU"})
    # Outside air (-1000 HU) sits above the -1020 HU black end of the window: nothing is clipped.
    assert scores["dark_fraction"] == pytest.approx(0.0) and scores["aspect_ratio"] == 1.0
    assert QualityControl({}, "ct").assess(slice_hu, {"unit": "HU"}).scores["std"] > 0.1


def test_manifest_overrides_and_unknown_checks():
    img = chest_like()
    assert "blank_or_constant" in _reasons(_assess(img, {"pixel": {"std": {"min_refuse": 0.5}}}), "refuse")
    assert _assess(img, {"pixel": {"std": {"min_refuse": None, "min_warn": None}}}).status == "accept"
    with pytest.raises(BundleError, match="unknown check 'sharpness'"):
        QualityControl({"pixel": {"sharpness": {"min_refuse": 1}}}, "xray")
    with pytest.raises(BundleError, match="unknown limits"):
        QualityControl({"pixel": {"std": {"lowest": 1}}}, "xray")


# ------------------------------------------------------------------------------------------ header stage

@pytest.mark.parametrize("view", ["LL", "RL", "LAT", "L", "lateral"])
def test_lateral_view_refused_for_frontal_bundles(view):
    assert [f.reason for f in header_findings({"view_position": view}, {}, "xray")] == ["lateral_view"]
    assert header_findings({"view_position": view}, {"view": "any"}, "xray") == []
    assert header_findings({"view_position": view}, {}, "ct") == []
    assert header_findings({"view_position": "PA"}, {}, "xray") == []


def test_body_part_must_be_a_chest_when_present():
    assert [f.reason for f in header_findings({"body_part": "ABDOMEN"}, {}, "xray")] == ["not_chest"]
    for part in ("CHEST", "THORAX", "CHEST_ABDOMEN", None, ""):
        assert header_findings({"body_part": part}, {}, "xray") == []


def test_age_is_flagged_but_never_reported():
    found = header_findings({"patient_age_years": 7.0}, {"min_age_years": 18}, "xray")
    assert [(f.reason, f.status, f.value, f.limit) for f in found] == [("below_min_age", "warn", None, 18.0)]
    assert "7" not in json.dumps(found[0].to_dict())
    assert header_findings({"patient_age_years": 40.0}, {"min_age_years": 18}, "xray") == []
    assert header_findings({"patient_age_years": 7.0}, {}, "xray") == []


def test_patient_age_parsed_as_a_number_only():
    assert parse_age_years("045Y") == 45.0 and parse_age_years("006M") == 0.5
    assert parse_age_years("014D") == pytest.approx(14 / 365.25)
    assert parse_age_years("Smith") is None and parse_age_years(None) is None


def test_dicom_header_fields_reach_meta_and_lateral_is_refused(dicom_dir, tmp_path):
    import pydicom

    src = os.path.join(dicom_dir, "cxr_pa_cr_monochrome2.dcm")
    array, meta = read_any(src)
    assert (meta["view_position"], meta["body_part"]) == ("PA", "CHEST")
    ds = pydicom.dcmread(src)
    ds.ViewPosition, ds.PatientAge = "LL", "009Y"
    lateral = str(tmp_path / "lateral.dcm")
    ds.save_as(lateral)
    array, meta = read_any(lateral)
    assert meta["patient_age_years"] == 9.0
    a = QualityControl({"min_age_years": 16}, "xray").assess(array, meta)
    assert a.status == "refuse" and _reasons(a) == ["lateral_view", "below_min_age"]


# ------------------------------------------------------------------------------------------- model stage

def test_gaussians_energy_and_calibration_are_exact():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(4, 1, (40, 3))])
    labels = np.array([0] * 50 + [1] * 40)
    means, precision = fit_gaussians(feats, labels, 2, shrinkage=0.0)
    assert np.allclose(means, [feats[:50].mean(0), feats[50:].mean(0)])
    centred = np.concatenate([feats[:50] - means[0], feats[50:] - means[1]])
    assert np.allclose(np.linalg.inv(precision), centred.T @ centred / 89)
    x = rng.normal(2, 1, (5, 3))
    want = [min(float((v - m) @ precision @ (v - m)) for m in means) for v in x]  # plain loops, no scipy
    assert np.allclose(mahalanobis(x, means, precision), want)
    scorer = OodScorer({"feature_output": "f", "thresholds": {}}, means, precision)
    assert np.allclose(scorer.score(x, np.zeros((5, 2)))["mahalanobis"], want)
    logits = rng.normal(0, 3, (7, 4))
    assert np.allclose(energy(logits), [-np.log(np.sum(np.exp(row))) for row in logits])
    scores = np.arange(100, dtype=float)
    assert calibrate(scores, 0.95) == 94.0 and np.mean(scores <= calibrate(scores, 0.95)) == 0.95
    assert calibrate(scores, 1.0) == 99.0


def _ood_bundle(root, keys=("onnx-fp32",), acceptance=0.9):
    """A classifier with a feature output, calibrated per artifact on chest-like images (different per key)."""
    model = classifier_with_features(3)
    quality = {"view": "frontal", "ood": {}}
    root = write_bundle(root, model, "classification", "xray", LABELS, {"covid": 0.4}, positive_label="covid",
                        quality={"view": "frontal"})
    m = Bundle.load(root).manifest
    train = [chest_like(seed=s) for s in range(24)]
    for i, key in enumerate(keys):
        if key != "onnx-fp32":
            shutil.copy(os.path.join(root, "model.onnx"), os.path.join(root, f"{key}.onnx"))
            m["artifacts"][key] = artifact_entry(root, f"{key}.onnx", "onnx", "fp16", "onnxruntime")
        write_manifest(root, m)
        p = Predictor.from_bundle(root, precision=m["artifacts"][key]["precision"], threads=1)
        logits, feats = _outputs(p, [p.prepare(a, dict(DISPLAY), {"file": "t"})[0] for a in train])
        means, precision = fit_gaussians(feats, np.arange(len(train)) % 3, 3)
        scale = 1.0 + i  # a second artifact gets its own, different statistics
        np.savez(os.path.join(root, f"ood-{key}.npz"), means=means * scale, precision=precision)
        thresholds = {"mahalanobis": calibrate(mahalanobis(feats, means * scale, precision), acceptance),
                      "energy": calibrate(energy(logits), acceptance)}
        quality["ood"][key] = dict(artifact_entry(root, f"ood-{key}.npz", "npz", "fp32", "none"),
                                   feature_output="features", thresholds=thresholds, acceptance=acceptance)
    m["quality"] = quality
    write_manifest(root, m)
    return root


def _outputs(predictor, tensors):
    """Logits and features from the backend directly (the bundle has no OOD entry yet while calibrating)."""
    batch = np.stack(tensors).astype(np.float32)
    out = predictor.backend.run_outputs(batch, ["logits", "features"])
    return out["logits"], out["features"]


def test_ood_scores_and_thresholds_per_artifact(tmp_path):
    root = _ood_bundle(tmp_path / "ood", keys=("onnx-fp32", "onnx-fp16"))
    m = Bundle.load(root).manifest
    for precision, key in (("fp32", "onnx-fp32"), ("fp16", "onnx-fp16")):
        p = Predictor.from_bundle(root, precision=precision, threads=1)
        assert p.artifact_key == key
        result = p.predict(chest_like(seed=3))
        q = result["quality"]
        assert q["ood"]["checked"] and q["ood"]["feature_output"] == "features"
        assert q["thresholds"]["model"] == m["quality"]["ood"][key]["thresholds"]
        refused = [r["reason"] for r in q["reasons"] if r["stage"] == "model"]
        want = [f"ood_{s}" for s in ("mahalanobis", "energy")
                if q["scores"][f"ood_{s}"] > m["quality"]["ood"][key]["thresholds"][s]]
        assert refused == want
    fp16 = Predictor.from_bundle(root, precision="fp16", threads=1).predict(chest_like(seed=3))["quality"]
    fp32 = Predictor.from_bundle(root, precision="fp32", threads=1).predict(chest_like(seed=3))["quality"]
    assert fp16["scores"]["ood_mahalanobis"] != fp32["scores"]["ood_mahalanobis"]


def test_ood_refusal_is_not_assessed(tmp_path):
    root = _ood_bundle(tmp_path / "ood")
    m = Bundle.load(root).manifest
    m["quality"]["ood"]["onnx-fp32"]["thresholds"]["mahalanobis"] = -1.0  # everything is far
    write_manifest(root, m)
    result = Predictor.from_bundle(root, threads=1).predict(chest_like())
    assert result["assessed"] is False and result["outcome"] == "not assessed"
    assert "label" not in result and "probabilities" not in result
    assert [r["reason"] for r in result["quality"]["reasons"]] == ["ood_mahalanobis"]


def test_bundle_without_calibration_says_so(tmp_path):
    root = write_bundle(tmp_path / "plain", classifier_model(3), "classification", "xray", LABELS, {"covid": 0.4},
                        positive_label="covid", quality={})
    result = Predictor.from_bundle(root, threads=1).predict(chest_like())
    assert result["assessed"] is True and result["label"] in LABELS
    assert result["quality"]["ood"] == {"checked": False, "note": "no out-of-distribution check: the bundle has "
                                        "no calibration for artifact 'onnx-fp32'"}


def test_ood_entry_for_a_missing_artifact_or_output_is_a_bundle_error(tmp_path):
    root = _ood_bundle(tmp_path / "ood")
    m = Bundle.load(root).manifest
    m["quality"]["ood"]["onnx-int8"] = dict(m["quality"]["ood"]["onnx-fp32"])
    with pytest.raises(BundleError, match="onnx-int8"):
        write_manifest(root, m)
    m["quality"]["ood"].pop("onnx-int8")
    m["quality"]["ood"]["onnx-fp32"]["feature_output"] = "pooled"
    write_manifest(root, m)
    with pytest.raises(BundleError, match="feature output 'pooled'"):
        Predictor.from_bundle(root, threads=1)
    with open(os.path.join(root, "ood-onnx-fp32.npz"), "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(root)


def test_segmenter_area_outside_band_warns(tmp_path):
    root = write_bundle(tmp_path / "lung", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                        {"mask": 0.5}, kind="probabilities",
                        quality={"area": {"lung": [0.5, 0.9]},
                                 "pixel": {"entropy_bits": {"min_refuse": None, "min_warn": None},
                                           "two_class_separability": {"max_refuse": None}}})  # a flat phantom
    result = Predictor.from_bundle(root, threads=1).predict(square_image())
    area = [r for r in result["quality"]["reasons"] if r["reason"] == "implausible_area"][0]
    assert area["status"] == "warn" and area["value"] == pytest.approx(40 * 60 / (96 * 128)) and area["limit"] == 0.5
    assert result["assessed"] is True and "areas" in result


# -------------------------------------------------------------------------------- the not-assessed path

@pytest.fixture
def qc_bundle(tmp_path):
    return write_bundle(tmp_path / "qc-cls", classifier_model(3), "classification", "xray", LABELS, {"covid": 0.4},
                        positive_label="covid", quality={"view": "frontal"})


def test_refused_input_never_reaches_the_model(qc_bundle, monkeypatch):
    p = Predictor.from_bundle(qc_bundle, threads=1)
    calls = []
    real = p.backend.run
    monkeypatch.setattr(p.backend, "run", lambda b: calls.append(len(b)) or real(b))
    noise = np.random.default_rng(1).integers(0, 256, (120, 100)).astype(np.uint8)
    results = p.predict_images([(noise, dict(DISPLAY), {"file": "noise"}), (chest_like(), dict(DISPLAY), {"file": "ok"})])
    assert calls == [1]
    assert [r["assessed"] for r in results] == [False, True]
    refused = results[0]
    assert refused["quality"]["status"] == "refuse" and refused["reason"].startswith("correlation of neighbouring")
    assert not {"label", "probabilities", "positive"} & set(refused)
    assert refused["quality"]["ood"]["note"] == "not reached: refused before the model ran"


def test_xray_pipeline_refuses_before_the_lung_segmenter(qc_bundle, xray_lung_bundle):
    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    pipeline = XrayPipeline(Predictor.from_bundle(qc_bundle, threads=1), lungs)
    result = pipeline.predict(np.full((96, 96), 7, np.uint8))
    assert result["assessed"] is False and "lung" not in result and "mask" not in result


def test_csv_overlay_and_cli_summary_say_not_assessed(qc_bundle, tmp_path, capsys):
    good, noise, bad = str(tmp_path / "good.png"), str(tmp_path / "noise.png"), str(tmp_path / "bad.png")
    cv2.imwrite(good, chest_like())
    cv2.imwrite(noise, np.random.default_rng(2).integers(0, 256, (128, 128)).astype(np.uint8))
    open(bad, "w").write("not a png")
    out = tmp_path / "out"
    rc = cli.main(["infer", good, noise, bad, "--bundle", qc_bundle, "--out", str(out), "--threads", "1"])
    assert rc == 1  # the unreadable file is an error; the refusal is not
    err = capsys.readouterr().err
    assert "1 assessed, 1 not assessed, 1 errors" in err
    assert "noise.png: correlation of neighbouring pixels" in err
    rows = {r["input"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[n]["status"] for n in ("good.png", "noise.png", "bad.png")] == ["ok", "not assessed", "error"]
    assert rows["noise.png"]["label"] == "" and rows["noise.png"]["quality"] == "refuse"
    assert rows["noise.png"]["quality_reason"].startswith("correlation of neighbouring pixels")
    saved = json.loads((out / "noise.json").read_text())
    assert saved["outcome"] == "not assessed" and saved["quality"]["scores"]["neighbour_correlation"] < 0.1
    assert (out / "noise_overlay.png").is_file()


def test_overlay_caption_is_not_assessed():
    result = {"assessed": False, "reason": "blank image", "task": "classification"}
    canvas = render_overlay(chest_like(), dict(DISPLAY), result)
    orange = (canvas[..., 2] > 200) & (canvas[..., 1] > 120) & (canvas[..., 1] < 200) & (canvas[..., 0] < 60)
    assert orange.sum() > 20  # the orange "NOT ASSESSED" caption
    assert summary_row("x", result)["status"] == "not assessed"


def test_ct_study_not_assessed_when_most_slices_refused(tmp_path):
    few_levels = {"pixel": {"entropy_bits": {"min_refuse": None, "min_warn": None}}}  # the phantom has 4 levels
    root = write_bundle(tmp_path / "ct-lesion", segmenter_model(1, cut=1.8), "segmentation", "ct",
                        ["background", "lesion"], {"mask": 0.5}, kind="probabilities", quality=few_levels)
    vol = np.concatenate([ct_phantom(slices=1), np.full((3, 96, 96), -1000.0, np.float32)])  # 3 of 4 blank
    study = CtStudyPipeline(lesion_segmenter=Predictor.from_bundle(root, threads=1)).run(vol, meta={"unit": "HU"})
    assert study["assessed"] is False and study["outcome"] == "not assessed"
    q = study["quality"]
    assert q["slices_refused"] == 3 and q["scores"]["refused_fraction"] == 0.75
    assert q["thresholds"] == {"max_refused_fraction": 0.5} and q["reasons"][0]["slices"] == 3
    assert study.get("severity") is None and study["covid_probability"] is None
    assert [r["quality"] for r in study["per_slice"]][1:] == ["refuse"] * 3


# ------------------------------------------------------------------------------------------- real data

def test_dev_pack_test_images_pass_the_pixel_stage_per_source(xray_cls_dir):
    rows = [r for r in csv.DictReader(open(os.path.join(xray_cls_dir, "manifest.csv"))) if r["split"] == "test"]
    qc = QualityControl({}, "xray")
    by_source = {}
    for r in rows:
        array, meta = read_any(os.path.join(xray_cls_dir, r["file"]))
        by_source.setdefault(r["source"], []).append(not qc.assess(array, meta).refused)
    assert set(by_source) == {"hannover", "ieee8023", "kermany-pediatric", "nih-chestxray14"}
    for source, accepted in by_source.items():
        assert np.mean(accepted) >= 0.97, (source, np.mean(accepted))


def test_dev_pack_images_made_out_of_scope_are_refused(xray_cls_dir):
    rows = [r for r in csv.DictReader(open(os.path.join(xray_cls_dir, "manifest.csv"))) if r["split"] == "test"][:20]
    qc = QualityControl({}, "xray")
    rng = np.random.default_rng(0)
    for r in rows:
        array, meta = read_any(os.path.join(xray_cls_dir, r["file"]))
        assert qc.assess(np.full_like(array, float(array.mean())), meta).refused
        assert qc.assess(rng.permutation(array.ravel()).reshape(array.shape), meta).refused  # same histogram
        h = array.shape[0]
        assert qc.assess(array[h // 2 - h // 10:h // 2 + h // 10], meta).refused  # a thin strip
