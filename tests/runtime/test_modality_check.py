"""The modality check (lungedge.runtime.modality_check): an image of the pack's other modality is refused.

Synthetic cases with exact expectations; the dev pack's CT slices and X-ray films when it is present (skipped
without it, a failure under CI=true): fitted on train splits, calibrated on the validation split, judged on
the test splits.
"""

import os

import numpy as np
import pytest
from test_ct_like_histogram import ct_like_slice
from tinymodels import chest_like, classifier_model, write_bundle

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.io import read_any
from lungedge.runtime.modality_check import (
    DESCRIPTOR,
    N_FEATURES,
    NOT_CHECKED,
    ModalityCheck,
    descriptor,
    fit_check,
    fit_logistic,
    scores_of,
    validate_modality_check,
)
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.quality import QualityControl, stats_image, validate_quality_spec

DISPLAY = {"unit": "display", "intensity_max": 255.0}


def desc_of(image, meta=DISPLAY):
    return descriptor(stats_image(image, meta)[0])


def test_descriptor_of_a_constant_image_is_exact():
    d = desc_of(np.full((40, 50), 51, np.uint8))
    assert d.shape == (N_FEATURES,)
    assert np.all(d[:64] == 0.0)  # nothing to stretch: the thumbnail is flat at 0
    np.testing.assert_allclose(d[64:], 51 / 255.0, rtol=1e-6)  # every quantile is the one grey level


def test_descriptor_thumbnail_finds_where_things_are():
    img = np.zeros((64, 64), np.uint8)
    img[:, 32:] = 200  # dark left half, bright right half
    d = desc_of(img, {"unit": "display", "intensity_max": 200.0})
    thumb = d[:64].reshape(8, 8)
    assert np.all(thumb[:, :4] == 0.0) and np.all(thumb[:, 4:] == 1.0)
    np.testing.assert_allclose(d[64:], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # quantiles 5..95 %: half 0, half 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 5), (53, 64), (256, 256)])
def test_descriptor_quantiles_equal_numpys(shape):
    from lungedge.runtime.modality_check import _LEVELS, _quantiles

    u = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    assert np.allclose(_quantiles(u, _LEVELS), np.quantile(u, _LEVELS), rtol=0, atol=1e-6)
    assert np.array_equal(_quantiles(np.arange(11.0), [0.0, 0.25, 0.5, 1.0]), [0.0, 2.5, 5.0, 10.0])


def test_fit_logistic_separates_and_weights_classes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(0, 1, (20, 3)) + [8, 0, 0]])
    y = np.r_[np.zeros(200), np.ones(20)]
    mean, scale, w, b = fit_logistic(x, y)
    z = ((x - mean) / scale) @ w + b
    assert w[0] > 0 and abs(w[0]) > 5 * max(abs(w[1]), abs(w[2]))  # only the first feature separates
    assert np.mean(z[y == 1] > 0) == 1.0 and np.mean(z[y == 0] < 0) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.zeros(len(x)))


def synthetic_entry(n=24):
    ct = np.stack([desc_of(ct_like_slice(96, seed=s)) for s in range(n)])
    xr = np.stack([desc_of(chest_like(seed=s)) for s in range(n)])
    return fit_check(ct[: n // 2], xr[: n // 2], ct[n // 2:], "ct", "xray", acceptance=1.0), ct, xr


def test_fit_check_thresholds_on_validation_and_refuses_the_other_modality():
    entry, ct, xr = synthetic_entry()
    assert entry["descriptor"] == DESCRIPTOR and entry["other_modality"] == "xray"
    val_scores = scores_of(ct[12:], entry)
    assert entry["threshold"] == pytest.approx(val_scores.min())  # acceptance 1.0: the lowest validation score
    assert entry["val_accepted"] == 1.0 and entry["other_train_refused"] == 1.0
    assert np.all(scores_of(xr[12:], entry) < entry["threshold"])  # unseen synthetic films: all refused


def test_quality_control_refuses_an_xray_sent_to_a_ct_bundle():
    entry, _, _ = synthetic_entry()
    qc = QualityControl({"modality_check": entry, "pixel": {}}, "ct")
    film = qc.assess(chest_like(seed=99), DISPLAY)
    assert film.refused
    reasons = [f for f in film.findings if f.reason == "other_modality"]
    assert len(reasons) == 1 and reasons[0].stage == "pixels" and reasons[0].limit == entry["threshold"]
    assert reasons[0].message.startswith("looks like an X-ray image, not a CT image (modality score")
    assert film.scores["modality_score"] == pytest.approx(reasons[0].value)
    ct = qc.assess(ct_like_slice(96, seed=99), DISPLAY)
    assert not [f for f in ct.findings if f.reason == "other_modality"]
    assert ct.to_dict()["thresholds"]["modality_check"]["checked"] is True


def test_without_an_entry_results_say_there_is_no_modality_check():
    qc = QualityControl({}, "ct")
    out = qc.assess(chest_like(seed=1), DISPLAY).to_dict()
    assert out["thresholds"]["modality_check"] == NOT_CHECKED
    assert "modality_score" not in out["scores"]


def test_malformed_entries_are_refused_by_name():
    entry, _, _ = synthetic_entry(8)
    for broken, match in [(dict(entry, descriptor="other"), "descriptor"),
                          (dict(entry, weights=[1.0] * 3), "weights must be a list of"),
                          (dict(entry, scale=[0.0] * N_FEATURES), "scale must be positive"),
                          ({k: v for k, v in entry.items() if k != "threshold"}, "lacks 'threshold'")]:
        with pytest.raises(BundleError, match=match):
            validate_modality_check(broken)
        with pytest.raises(BundleError, match=match):
            validate_quality_spec({"modality_check": broken}, "ct")
    ModalityCheck(entry)  # the intact entry loads


def _descriptors(rows_of, folder, split):
    rows = [r for r in rows_of(folder) if r["split"] == split]
    out = []
    for r in rows:
        array, meta = read_any(os.path.join(folder, r["file"]))[:2]
        out.append(descriptor(stats_image(array, meta)[0]))
    return np.stack(out)


def test_dev_pack_xrays_are_refused_by_a_ct_check_fitted_on_train_splits(ct_cls_dir, xray_cls_dir, manifest_rows):
    entry = fit_check(_descriptors(manifest_rows, ct_cls_dir, "train"),
                      _descriptors(manifest_rows, xray_cls_dir, "train"),
                      _descriptors(manifest_rows, ct_cls_dir, "val"), "ct", "xray")
    check = ModalityCheck(entry)
    ct_test = scores_of(_descriptors(manifest_rows, ct_cls_dir, "test"), entry)
    xray_test = scores_of(_descriptors(manifest_rows, xray_cls_dir, "test"), entry)
    assert np.mean(ct_test >= check.threshold) >= 0.97  # the qc benchmark's acceptance target
    assert np.mean(xray_test < check.threshold) >= 0.99  # ... and its refusal target


def test_hu_input_is_scored_through_the_bundles_display_window():
    """A CT slice in Hounsfield units scores as its display rendering through the preprocessing's window_ct
    (the check was fitted on rendered slices), not through the pixel checks' wide HU window."""
    from lungedge.runtime.quality import display_window

    entry, _, _ = synthetic_entry()
    manifest = {"modality": "ct", "quality": {"modality_check": entry},
                "preprocessing": [{"op": "window_ct", "center": -600.0, "width": 1500.0}]}
    assert display_window(manifest) == (-1350.0, 150.0)
    display = ct_like_slice(96, seed=5)
    hu = display.astype(np.float32) / 255.0 * 1500.0 - 1350.0
    as_png = QualityControl.from_manifest(manifest).assess(display, DISPLAY).scores["modality_score"]
    as_hu = QualityControl.from_manifest(manifest).assess(hu, {"unit": "HU"}).scores["modality_score"]
    assert as_hu == pytest.approx(as_png, rel=1e-4, abs=1e-3)
    wide = QualityControl(manifest["quality"], "ct").assess(hu, {"unit": "HU"}).scores["modality_score"]
    assert abs(wide - as_png) > 0.1  # without the window the same slice reads differently
    assert display_window({"preprocessing": [{"op": "letterbox", "size": [8, 8]}]}) is None


def test_a_header_that_names_the_modality_settles_it(dicom_dir, tmp_path):
    """DICOM: the Modality tag decides, not the pixel discriminant. A CR film sent to a CT bundle is a typed
    wrong-modality error (as before the check existed); a CT DICOM is never second-guessed by it."""
    entry, _, _ = synthetic_entry()
    qc = QualityControl({"modality_check": entry}, "ct")
    film = chest_like(seed=3)
    assert "modality_score" in qc.assess(film, DISPLAY).scores
    told = qc.assess(film, dict(DISPLAY, modality="ct"))
    assert "modality_score" not in told.scores and not [f for f in told.findings if f.reason == "other_modality"]
    bundle = write_bundle(tmp_path / "ct", classifier_model(2), "classification", "ct", ["covid", "noncovid"],
                          {"covid": 0.5}, positive_label="covid", quality={"modality_check": entry})
    predictor = Predictor.from_bundle(bundle, threads=1)
    with pytest.raises(InputError, match="wrong modality"):
        predictor.predict(os.path.join(dicom_dir, "cxr_pa_cr_monochrome2.dcm"))
    ct = predictor.predict(os.path.join(dicom_dir, "ct_small_thorax_128.dcm"))
    assert "modality_score" not in ct["quality"]["scores"]
