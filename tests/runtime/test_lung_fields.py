"""Lung-field plausibility: statistics of a lung mask, bands fitted on in-distribution films, the pipeline refusal."""

import os

import cv2
import numpy as np
import pytest
from tinymodels import classifier_model, square_image, write_bundle

from lungedge.runtime.bundle import Bundle, write_manifest
from lungedge.runtime.errors import BundleError
from lungedge.runtime.lung_fields import (
    STATISTICS,
    accepted_fraction,
    band_findings,
    fit_bands,
    lung_field_scores,
    validate_lung_fields,
)
from lungedge.runtime.pipelines import XrayPipeline
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.quality import Assessment

BANDS = {"lung_fraction": {"min": 0.1, "max": 0.6}, "midline_fill": {"max": 0.2},
         "field_separation": {"min": 0.25, "max": 0.6}, "field_overlap": {"min": 0.5}}
# Pixel checks the flat synthetic films would fail (a few flat grey levels: low entropy, a CT-like two-class
# histogram); the lung-field check is under test.
FLAT_OK = {"entropy_bits": {"min_refuse": None, "min_warn": None}, "two_class_separability": {"max_refuse": None}}


def two_fields(h=100, w=100):
    """Two lungs side by side: rows 20-80, columns 10-40 and 60-90 of a 100 x 100 mask."""
    m = np.zeros((h, w), np.uint8)
    m[20:80, 10:40] = 1
    m[20:80, 60:90] = 1
    return m


def one_field():
    """One lung-shaped blob across the middle, as a lateral film's mask looks."""
    m = np.zeros((100, 100), np.uint8)
    m[20:80, 30:70] = 1
    return m


def test_two_lung_fields_have_exact_statistics():
    assert lung_field_scores(two_fields()) == {"lung_fraction": 0.36, "midline_fill": 0.0, "field_separation": 0.5,
                                               "field_overlap": 1.0}
    assert band_findings(lung_field_scores(two_fields()), BANDS) == []


def test_one_field_across_the_middle_is_refused_with_its_values():
    scores = lung_field_scores(one_field())
    assert scores == {"lung_fraction": 0.24, "midline_fill": 1.0, "field_separation": 0.2, "field_overlap": 0.0}
    found = {f.reason: (f.status, f.value, f.limit) for f in band_findings(scores, BANDS)}
    assert found == {"lung_fields_midline": ("refuse", 1.0, 0.2), "lung_fields_separation": ("refuse", 0.2, 0.25),
                     "lung_fields_not_side_by_side": ("refuse", 0.0, 0.5)}


def test_no_lung_and_stacked_fields_are_refused():
    empty = lung_field_scores(np.zeros((300, 260), np.uint8))
    assert empty == {"lung_fraction": 0.0, "midline_fill": 1.0, "field_separation": 0.0, "field_overlap": 0.0}
    assert "lung_fields_area" in {f.reason for f in band_findings(empty, BANDS)}
    stacked = two_fields().T.copy()  # a film rotated by 90 degrees: one field above the other
    reasons = {f.reason for f in band_findings(lung_field_scores(stacked), BANDS)}
    assert {"lung_fields_midline", "lung_fields_not_side_by_side"} <= reasons


def test_statistics_are_on_the_content_region_and_scale_free():
    image = np.zeros((100, 100), np.uint8)
    image[25:75] = np.arange(100, dtype=np.uint8)[None, :] + 50  # letterbox bars above and below the film
    mask = np.zeros((100, 100), np.uint8)
    mask[30:70, 10:40] = 1
    mask[30:70, 60:90] = 1
    assert lung_field_scores(mask, image)["lung_fraction"] == 2 * 40 * 30 / (50 * 100)
    big = np.kron(two_fields(), np.ones((3, 3), np.uint8))  # 300 x 300: strided to 100 x 100
    assert lung_field_scores(big) == lung_field_scores(two_fields())
    with pytest.raises(ValueError, match="differ in shape"):
        lung_field_scores(mask, image[:50])


def test_bands_are_equal_tail_quantiles_of_the_fitting_films():
    values = np.arange(101) / 100.0
    scores = [{name: v for name in STATISTICS} for v in values]
    bands = fit_bands(scores, acceptance=0.94)  # six checked sides: 1% of the films beyond each
    assert bands == {"lung_fraction": {"min": 0.01, "max": 0.99}, "midline_fill": {"max": 0.99},
                     "field_separation": {"min": 0.01, "max": 0.99}, "field_overlap": {"min": 0.01}}
    assert accepted_fraction(scores, bands) == pytest.approx(99 / 101)
    with pytest.raises(ValueError, match="no lung masks"):
        fit_bands([])


@pytest.mark.parametrize("entry, message", [
    ({"bands": BANDS}, "lacks 'segmenter_manifest_sha256'"),
    ({"segmenter_manifest_sha256": "x", "bands": {"heart_size": {"max": 1}}}, "unknown statistic 'heart_size'"),
    ({"segmenter_manifest_sha256": "x", "bands": {"midline_fill": {"high": 1}}}, "must hold 'min' and/or 'max'"),
])
def test_malformed_manifest_entries_are_bundle_errors(entry, message):
    with pytest.raises(BundleError, match=message):
        validate_lung_fields(entry)


# ------------------------------------------------------------------------------------------- the pipeline

def two_lung_film():
    """A synthetic frontal film: two bright fields on a grey chest, which the tiny segmenter marks as lung."""
    img = np.full((96, 128), 30, np.uint8)
    img[0, 0] = img[-1, -1] = 0  # not a letterbox: the content region is the whole film
    img[16:80, 16:52] = 220
    img[16:80, 76:112] = 220
    return img


def _with_bands(classifier_root, lungs, bands=BANDS):
    manifest = dict(Bundle.load(classifier_root).manifest)
    manifest["quality"] = dict(manifest["quality"], lung_fields={
        "segmenter": lungs.name, "segmenter_manifest_sha256": lungs.bundle.manifest_sha256, "acceptance": 0.99,
        "bands": bands, "fitted_on": "test"})
    write_manifest(classifier_root, manifest)
    return Predictor.from_bundle(classifier_root, threads=1)


@pytest.fixture
def qc_classifier(tmp_path):
    return write_bundle(tmp_path / "qc-cls", classifier_model(3), "classification", "xray",
                        ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                        quality={"view": "frontal", "pixel": FLAT_OK})


def test_pipeline_accepts_two_fields_and_refuses_one_before_the_classifier(qc_classifier, xray_lung_bundle,
                                                                           monkeypatch):
    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    classifier = _with_bands(qc_classifier, lungs)
    calls = []
    real = classifier.backend.run
    monkeypatch.setattr(classifier.backend, "run", lambda b: calls.append(len(b)) or real(b))
    pipeline = XrayPipeline(classifier, lungs)
    ok = pipeline.predict(two_lung_film())
    assert ok["assessed"] is True and ok["quality"]["lung_fields"]["checked"] is True
    assert ok["quality"]["scores"]["midline_fill"] == 0.0 and ok["quality"]["thresholds"]["lung_fields"] == BANDS
    assert calls == [1]
    blob = square_image(box=(16, 40, 80, 88))
    blob[0, 0] = 0
    refused = pipeline.predict(blob)
    assert calls == [1]  # the classifier never ran on the refused film
    assert refused["assessed"] is False and refused["outcome"] == "not assessed"
    reasons = {r["reason"]: r for r in refused["quality"]["reasons"]}
    assert reasons["lung_fields_midline"]["status"] == "refuse" and reasons["lung_fields_midline"]["value"] == 1.0
    assert reasons["lung_fields_midline"]["limit"] == 0.2 and reasons["lung_fields_midline"]["stage"] == "lung_fields"
    assert "mask" not in refused and "label" not in refused and refused["lung"]["crop_box"] is not None
    assert refused["quality"]["ood"]["note"] == "not reached: refused before the model ran"


def test_bundle_without_bands_says_so_and_other_segmenters_are_refused(qc_classifier, xray_lung_bundle, tmp_path):
    from tinymodels import segmenter_model

    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    plain = XrayPipeline(Predictor.from_bundle(qc_classifier, threads=1), lungs).predict(two_lung_film())
    assert plain["quality"]["lung_fields"]["checked"] is False
    assert plain["quality"]["lung_fields"]["note"].startswith("no lung-field check: the bundle has no quality.lung_fields")
    classifier = _with_bands(qc_classifier, lungs)
    no_segmenter = XrayPipeline(classifier).predict(two_lung_film())
    assert no_segmenter["quality"]["lung_fields"] == {"checked": False,
                                                      "note": "no lung-field check: no lung segmenter was given"}
    other = Predictor.from_bundle(write_bundle(tmp_path / "other-lungs", segmenter_model(1, cut=0.5), "segmentation",
                                               "xray", ["background", "lung"], {"mask": 0.5},
                                               kind="probabilities"), threads=1)
    with pytest.raises(BundleError, match="fitted with segmenter"):
        XrayPipeline(classifier, other)


def test_refused_before_the_segmenter_says_not_reached(qc_classifier, xray_lung_bundle):
    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    result = XrayPipeline(_with_bands(qc_classifier, lungs), lungs).predict(np.full((96, 96), 7, np.uint8))
    assert result["assessed"] is False
    assert result["quality"]["lung_fields"] == {"checked": False, "note": "not reached: refused before the lung "
                                                                          "segmenter"}


def test_assess_adds_scores_thresholds_and_findings():
    from lungedge.runtime.lung_fields import LungFieldCheck

    check = LungFieldCheck({"segmenter_manifest_sha256": "x", "bands": BANDS, "acceptance": 0.99})
    assessment = Assessment()
    check.assess(assessment, one_field(), None)
    assert assessment.refused and assessment.scores["field_overlap"] == 0.0
    assert assessment.to_dict()["lung_fields"]["checked"] is True


# ------------------------------------------------------------------------------------------- real data

def _gt_mask(folder, row):
    mask = cv2.imread(os.path.join(folder, row["mask_file"]), cv2.IMREAD_GRAYSCALE)
    return ((mask > 0) & (mask != 255)).astype(np.uint8)


def test_annotated_frontal_lungs_fit_their_bands_and_rotated_ones_do_not(xray_seg_dir, manifest_rows):
    """Bands fitted on the training split's annotated lung masks accept the test split's frontal masks per
    source and refuse the same masks rotated by 90 degrees (one field above the other)."""
    rows = [r for r in manifest_rows(xray_seg_dir) if r["mask_file"]]
    train = [lung_field_scores(_gt_mask(xray_seg_dir, r)) for r in rows if r["split"] == "train"]
    bands = fit_bands(train)
    test = [r for r in rows if r["split"] == "test"]
    assert test
    masks = [_gt_mask(xray_seg_dir, r) for r in test]
    accepted = [not band_findings(lung_field_scores(m), bands) for m in masks]
    assert np.mean(accepted) >= 0.95, np.mean(accepted)
    rotated = [not band_findings(lung_field_scores(np.ascontiguousarray(np.rot90(m))), bands) for m in masks]
    assert np.mean(rotated) <= 0.05, np.mean(rotated)


def test_segmenters_say_whether_their_areas_are_checked(tmp_path):
    from tinymodels import segmenter_model

    unbanded = write_bundle(tmp_path / "unbanded", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                            {"mask": 0.5}, kind="probabilities", quality={"pixel": FLAT_OK})
    plain = Predictor.from_bundle(unbanded, threads=1).predict(two_lung_film())
    assert plain["quality"]["ood"]["note"].endswith("no plausible-area bands (quality.area): predicted areas are "
                                                    "not checked")
    banded = write_bundle(tmp_path / "banded", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                          {"mask": 0.5}, kind="probabilities", quality={"area": {"lung": [0.2, 0.6]}, "pixel": FLAT_OK})
    result = Predictor.from_bundle(banded, threads=1).predict(two_lung_film())
    assert result["quality"]["ood"]["note"].endswith("checked against the bundle's plausible bands (quality.area)")
    assert result["quality"]["status"] == "accept" and result["areas"]["lung"]["fraction"] == 2 * 64 * 36 / (96 * 128)
