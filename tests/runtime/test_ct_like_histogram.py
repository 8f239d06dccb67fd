"""The X-ray bundle's modality check: a CT slice's two-class histogram (air and tissue) is refused.

Synthetic cases with exact expectations, plus the dev pack's X-ray train and val films and CT slices when the
dev pack is present (skipped without it, a failure under CI=true).
"""

import csv
import os

import numpy as np
import pytest
from tinymodels import chest_like

from lungedge.runtime.errors import BundleError
from lungedge.runtime.io import read_any
from lungedge.runtime.ood import calibrate_per_group
from lungedge.runtime.quality import (
    PIXEL_LIMITS,
    TWO_CLASS_LIMIT,
    QualityControl,
    pixel_limits,
    pixel_scores,
    two_class_separability,
)

DISPLAY = {"unit": "display", "intensity_max": 255.0}


def ct_like_slice(side=128, seed=0):
    """An axial slice in a lung window: a disc of body (bright soft tissue) holding two dark lungs, inside a
    black square (air outside the bore), with a little grain as a scanner has."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    c = side / 2.0
    img = np.zeros((side, side), np.float32)
    img[(x - c) ** 2 / (0.45 * side) ** 2 + (y - c) ** 2 / (0.38 * side) ** 2 <= 1.0] = 210.0
    for cx in (0.32 * side, 0.68 * side):
        img[(x - cx) ** 2 / (0.13 * side) ** 2 + (y - c) ** 2 / (0.26 * side) ** 2 <= 1.0] = 35.0
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(img, 1, 254).astype(np.uint8)


def _assess(image, spec=None, modality="xray"):
    return QualityControl(spec or {}, modality).assess(image, dict(DISPLAY))


def test_two_flat_classes_separate_perfectly_and_a_uniform_histogram_does_not():
    two = np.zeros(256)
    two[[10, 200]] = [300, 700]
    assert two_class_separability(two) == pytest.approx(1.0)
    # Uniform over 256 levels: best split at 128, between-class variance 64^2 = 4096 of (256^2 - 1) / 12.
    assert two_class_separability(np.ones(256)) == pytest.approx(4096 / ((256 ** 2 - 1) / 12.0))
    assert two_class_separability(np.zeros(256)) == 0.0  # empty
    one = np.zeros(256)
    one[77] = 5
    assert two_class_separability(one) == 0.0  # one level: no variance to split


def test_a_window_change_leaves_the_separability_alone():
    """The statistic reads the shape of the histogram, not where a window puts it."""
    img = ct_like_slice()
    narrow = (img.astype(np.float32) * 0.5 + 60).astype(np.uint8)  # a linear window: half the width, shifted
    a, b = (pixel_scores(x, DISPLAY)["two_class_separability"] for x in (img, narrow))
    assert a == pytest.approx(b, abs=0.01)


def test_a_ct_like_slice_is_refused_with_the_named_reason():
    a = _assess(ct_like_slice())
    assert a.status == "refuse"
    assert [f.reason for f in a.findings] == ["ct_like_histogram"]  # nothing else is wrong with it
    finding = a.findings[0]
    assert finding.stage == "pixels" and finding.limit == TWO_CLASS_LIMIT and finding.value > 0.95
    assert "two-class separability" in finding.message


def test_a_frontal_film_like_image_passes():
    a = _assess(chest_like())
    assert a.status == "accept"
    assert a.scores["two_class_separability"] < TWO_CLASS_LIMIT


def test_the_check_belongs_to_xray_bundles_and_a_manifest_can_override_it():
    assert PIXEL_LIMITS["xray"]["two_class_separability"] == {"max_refuse": TWO_CLASS_LIMIT}
    assert "two_class_separability" not in PIXEL_LIMITS["ct"]  # a CT bundle expects exactly this histogram
    assert _assess(ct_like_slice(), modality="ct").status == "accept"
    off = {"pixel": {"two_class_separability": {"max_refuse": None}}}
    assert _assess(ct_like_slice(), off).status == "accept"
    with pytest.raises(BundleError, match="unknown check"):
        pixel_limits({"pixel": {"two_class_separability": {"max_refuse": 0.9}}}, "ct")


def _dev_pack():
    data = os.environ.get("LUNGEDGE_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                        "data"))
    if not os.path.exists(os.path.join(data, "xray-cls", "manifest.csv")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev pack {data} is missing under CI=true")
        pytest.skip(f"dev pack {data} not present")
    return data


def _separability(folder, split_filter):
    with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if split_filter(r["split"])]
    out = {}
    for r in rows:
        array, meta = read_any(os.path.join(folder, r["file"]))
        out.setdefault(r["source"], []).append(pixel_scores(array, meta)["two_class_separability"])
    return {k: np.asarray(v) for k, v in out.items()}


def test_the_limit_is_what_the_xray_train_and_val_films_give():
    """The limit is fitted on X-ray train + val only, by the OOD thresholds' rule (pooled 99%, then every source
    at least 99%), rounded up at the fourth decimal; the CT slices lie above it."""
    data = _dev_pack()
    fit = _separability(os.path.join(data, "xray-cls"), lambda split: split in ("train", "val"))
    values = np.concatenate(list(fit.values()))
    groups = [source for source, v in fit.items() for _ in v]
    thresholds, counts = calibrate_per_group({"s": values}, groups, 0.99, 0.99)
    assert TWO_CLASS_LIMIT == np.ceil(thresholds["s"] * 1e4) / 1e4
    assert all(accepted >= 0.99 * n for accepted, n in counts.values())
    ct = np.concatenate(list(_separability(os.path.join(data, "ct-cls"), lambda split: split == "test").values()))
    assert np.mean(ct > TWO_CLASS_LIMIT) >= 0.9  # the other stages refuse the rest (bench qc)
