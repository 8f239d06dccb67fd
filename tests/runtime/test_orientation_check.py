"""The orientation check (lungedge.runtime.orientation_check): inverted or turned images are refused.

Synthetic films with exact expectations; the dev pack's X-ray films when it is present (skipped without it, a
failure under CI=true): fitted on the train split and its transformed copies, thresholds on the validation split,
judged on the test split and its inverted and rotated copies.
"""

import os

import numpy as np
import pytest
from tinymodels import chest_like

from lungedge.runtime.errors import BundleError
from lungedge.runtime.io import read_any
from lungedge.runtime.modality_check import DESCRIPTOR, N_FEATURES, descriptor, scores_of
from lungedge.runtime.orientation_check import (
    KINDS,
    NOT_CHECKED,
    OrientationCheck,
    fit_check,
    fit_transform,
    transformed,
    validate_orientation_check,
)
from lungedge.runtime.quality import QualityControl, stats_image, validate_quality_spec

DISPLAY = {"unit": "display", "intensity_max": 255.0}


def describe(image, meta=DISPLAY):
    return descriptor(stats_image(image, meta)[0])


def letterboxed(seed):
    """A chest-like film centred on a black 160x160 canvas (bars left and right, as the dev pack's PNGs)."""
    canvas = np.zeros((160, 160), np.uint8)
    canvas[:, 8:152] = np.maximum(chest_like(160, 144, seed), 1)
    return canvas


def synthetic_entry(n_train=16):
    train = [(letterboxed(i), DISPLAY) for i in range(n_train)]
    val = np.stack([describe(letterboxed(100 + i)) for i in range(6)])
    return fit_check(train, val, describe), val


def test_transformed_copies_are_exact():
    film = letterboxed(0)
    whole, inner = transformed(film, "inverted")
    hi = int(film.max())  # the minimum is the bars' 0
    assert whole.dtype == inner.dtype == np.uint8
    assert np.array_equal(whole.astype(int), hi - film.astype(int))  # the bars turn white (hi)
    assert inner[:, :8].max() == inner[:, 152:].max() == 0  # ... or stay black
    assert np.array_equal(inner[:, 8:152].astype(int), hi - film[:, 8:152].astype(int))
    turns = transformed(film[:, :150], "rotated")
    assert [t.shape for t in turns] == [(150, 160), (160, 150), (150, 160)]
    assert np.array_equal(turns[1], film[::-1, 149::-1])
    with pytest.raises(ValueError, match="unknown transform 'mirrored'"):
        transformed(film, "mirrored")
    with pytest.raises(ValueError, match="2-D"):
        transformed(film[None], "inverted")


def test_threshold_is_log_odds_zero_unless_validation_needs_lower():
    rng = np.random.default_rng(0)
    stored = rng.normal(1.0, 0.3, (40, N_FEATURES))
    negatives = rng.normal(-1.0, 0.3, (40, N_FEATURES))
    entry = fit_transform(stored, negatives, stored[:10])
    assert entry["threshold"] == 0.0 and entry["val_accepted"] == 1.0
    assert entry["train_transformed_refused"] == 1.0
    # A validation set whose lowest 1 % falls below 0 lowers the threshold to that quantile.
    odd = np.vstack([stored[:10], negatives[:1]])
    low = fit_transform(stored, negatives, odd, acceptance=0.95)
    expected = float(np.quantile(scores_of(odd, low), 0.05))
    assert expected < 0 and low["threshold"] == pytest.approx(expected)


def test_fit_check_refuses_inverted_and_turned_films():
    entry, val = synthetic_entry()
    assert entry["descriptor"] == DESCRIPTOR and sorted(entry["checks"]) == ["inverted", "rotated"]
    check = OrientationCheck(entry)
    for c in entry["checks"].values():
        assert c["threshold"] <= 0.0 and c["val_accepted"] >= 0.99
    unseen = [letterboxed(200 + i) for i in range(5)]
    for film in unseen:
        assert not check.findings(check.scores(describe(film)))
        for kind in ("inverted", "rotated"):
            for copy in transformed(film, kind):
                reasons = [f.reason for f in check.findings(check.scores(describe(copy)))]
                assert {"inverted": "inverted_polarity", "rotated": "rotated"}[kind] in reasons


def test_quality_control_refuses_an_inverted_film_and_says_why():
    entry, _ = synthetic_entry()
    qc = QualityControl({"orientation_check": entry, "pixel": {}}, "xray")
    film = letterboxed(300)
    ok = qc.assess(film, DISPLAY)
    assert not ok.refused and ok.to_dict()["thresholds"]["orientation_check"]["checked"] is True
    assert set(ok.scores) >= {"orientation_inverted", "orientation_rotated"}
    negative = qc.assess(255 - film, DISPLAY)
    reasons = [f for f in negative.findings if f.reason == "inverted_polarity"]
    assert negative.refused and len(reasons) == 1 and reasons[0].stage == "pixels"
    assert reasons[0].message.startswith("grey levels look inverted")
    assert reasons[0].value == pytest.approx(negative.scores["orientation_inverted"])
    assert reasons[0].limit == entry["checks"]["inverted"]["threshold"]
    # A DICOM header naming the modality does not skip it (its photometric tags can be wrong too).
    assert qc.assess(255 - film, dict(DISPLAY, modality="xray")).refused


def test_without_an_entry_results_say_there_is_no_orientation_check():
    out = QualityControl({}, "xray").assess(chest_like(seed=1), DISPLAY).to_dict()
    assert out["thresholds"]["orientation_check"] == NOT_CHECKED
    assert not [k for k in out["scores"] if k.startswith("orientation_")]


def test_malformed_entries_are_refused_by_name():
    entry, _ = synthetic_entry(6)
    inverted = entry["checks"]["inverted"]
    for broken, match in [(dict(entry, descriptor="other"), "descriptor"),
                          (dict(entry, checks={}), "non-empty"),
                          (dict(entry, checks={"mirrored": inverted}), "unknown transform 'mirrored'"),
                          (dict(entry, checks={"inverted": dict(inverted, weights=[1.0])}), "weights must be"),
                          (dict(entry, checks={"inverted": dict(inverted, scale=[0.0] * N_FEATURES)}),
                           "scale must be positive"),
                          (dict(entry, checks={"inverted": {k: v for k, v in inverted.items() if k != "bias"}}),
                           "lacks 'bias'")]:
        with pytest.raises(BundleError, match=match):
            validate_orientation_check(broken)
        with pytest.raises(BundleError, match=match):
            validate_quality_spec({"orientation_check": broken}, "xray")
    OrientationCheck(entry)


def _split(rows_of, folder, split):
    out = []
    for r in rows_of(folder):
        if r["split"] == split:
            array, meta = read_any(os.path.join(folder, r["file"]))[:2]
            out.append((np.asarray(array), meta, r["source"]))
    return out


def test_dev_pack_films_inverted_or_turned_are_refused(xray_cls_dir, manifest_rows):
    train = [(a, m) for a, m, _ in _split(manifest_rows, xray_cls_dir, "train")]
    val = np.stack([describe(a, m) for a, m, _ in _split(manifest_rows, xray_cls_dir, "val")])
    entry = fit_check(train, val, describe, kinds=KINDS["xray"])
    check = OrientationCheck(entry)
    test = _split(manifest_rows, xray_cls_dir, "test")
    sources = sorted({s for _, _, s in test})
    for source in sources:  # the qc benchmark's acceptance target, per source
        accepted = [not check.findings(check.scores(describe(a, m))) for a, m, s in test if s == source]
        assert np.mean(accepted) >= 0.97, source
    for kind, reason in (("inverted", "inverted_polarity"), ("rotated", "rotated")):
        refused = [reason in [f.reason for f in check.findings(check.scores(describe(t, m)))]
                   for a, m, _ in test for t in transformed(a, kind)]
        assert np.mean(refused) >= 0.99, kind
