"""Anatomical plausibility of an X-ray from its lung segmentation: does it show two lung fields side by side?

A frontal chest film shows two lung fields, left and right of the mediastinum, side by side over the same rows,
covering a plausible part of the image. A lateral film shows one field across the middle; an axial CT slice
shows two fields spread across the whole width; a photograph or noise shows scattered or no "lung". The X-ray
pipeline already runs the lung segmenter for its crop, so the mask costs nothing extra. Four statistics, each
on the mask (strided to at most ``MASK_SIDE`` pixels a side) within the image's content region (letterbox bars
excluded):

- ``lung_fraction``: lung pixels over the content area.
- ``midline_fill``: the lung's column count at the emptiest column of the middle half of the lung box, over the
  fullest column's count: 0 when a mediastinal gap separates two fields, high for one field across the middle.
- ``field_separation``: the distance between the centroids of the lung left and right of that column, over the
  content width.
- ``field_overlap``: rows shared by the two largest connected lung regions over the rows they span together
  (0 with a single region): two lungs lie side by side over the same rows.

Each has a plausible band fitted by ``fit_bands`` on in-distribution (training and validation) films, stored
in the classifier's manifest as ``quality.lung_fields`` for the segmenter it names; a value outside its band
refuses the film with the statistic's named reason.
"""

from __future__ import annotations

import cv2
import numpy as np

from lungedge.runtime.errors import BundleError
from lungedge.runtime.quality import Finding, content_region

# Statistic -> (named reason, words for people, the band's sides that are checked).
STATISTICS = {
    "lung_fraction": ("lung_fields_area", "lung area as a fraction of the image", ("min", "max")),
    "midline_fill": ("lung_fields_midline", "lung filling the middle of the chest (no mediastinal gap)", ("max",)),
    "field_separation": ("lung_fields_separation", "distance between the left and right lung fields",
                         ("min", "max")),
    "field_overlap": ("lung_fields_not_side_by_side", "rows shared by the two largest lung regions", ("min",)),
}
# The masks' longer side is strided down to at most this before the statistics (gross anatomy, tiny cost).
MASK_SIDE = 128
# In-distribution fraction the bands accept together: each checked side gets an equal share of the rest.
LUNG_FIELD_ACCEPTANCE = 0.99


def lung_field_scores(mask, image=None):
    """The four statistics of one lung mask (H, W; nonzero = lung) on ``image``'s grid (for its content region)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"lung mask must be 2-D (H, W), got shape {m.shape}")
    step = max(1, int(np.ceil(max(m.shape) / float(MASK_SIDE))))
    small = m[::step, ::step] != 0
    y0, y1, x0, x1 = 0, small.shape[0], 0, small.shape[1]
    if image is not None:
        a = np.asarray(image)
        a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
        if a.shape != m.shape:
            raise ValueError(f"lung mask {m.shape} and image {a.shape} differ in shape")
        _, (y0, y1, x0, x1) = content_region(a[::step, ::step])
    small = small[y0:y1, x0:x1]
    total = int(small.sum())
    if total == 0:
        return {"lung_fraction": 0.0, "midline_fill": 1.0, "field_separation": 0.0, "field_overlap": 0.0}
    rows, cols = np.nonzero(small)
    box = small[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    per_column = box.sum(axis=0).astype(np.float64)
    w = len(per_column)
    lo, hi = w // 4, max(3 * w // 4, w // 4 + 1)
    gap = lo + int(np.argmin(per_column[lo:hi]))
    x = np.arange(w, dtype=np.float64)
    left, right = per_column[:gap], per_column[gap:]
    separation = 0.0
    if left.sum() > 0 and right.sum() > 0:
        separation = float((right @ x[gap:]) / right.sum() - (left @ x[:gap]) / left.sum()) / small.shape[1]
    return {"lung_fraction": total / float(small.size),
            "midline_fill": float(per_column[gap] / per_column.max()),
            "field_separation": separation,
            "field_overlap": _row_overlap(small)}


def _row_overlap(mask):
    """Rows shared by the two largest 8-connected regions over the rows they span together (0 for one region)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n < 3:  # background plus at most one region
        return 0.0
    first, second = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
    (a0, ah), (b0, bh) = ((stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_HEIGHT]) for i in (first, second))
    shared = max(0, min(a0 + ah, b0 + bh) - max(a0, b0))
    return float(shared / float(max(a0 + ah, b0 + bh) - min(a0, b0)))


def fit_bands(scores, acceptance=LUNG_FIELD_ACCEPTANCE):
    """{statistic: {"min"/"max": limit}} from in-distribution score dicts: each checked side cuts an equal share
    of ``1 - acceptance`` (the ``(1 - acceptance) / sides`` quantile), so the bands together accept about
    ``acceptance`` of them."""
    if not scores:
        raise ValueError("no lung masks to fit the lung-field bands on")
    if not 0.0 < acceptance <= 1.0:
        raise ValueError(f"acceptance must be in (0, 1], got {acceptance}")
    share = (1.0 - acceptance) / sum(len(sides) for _, _, sides in STATISTICS.values())
    bands = {}
    for name, (_, _, sides) in STATISTICS.items():
        values = np.array([s[name] for s in scores], np.float64)
        bands[name] = {side: round(float(np.quantile(values, share if side == "min" else 1.0 - share)), 6)
                       for side in sides}
    return bands


def accepted_fraction(scores, bands):
    """Fraction of score dicts inside every band."""
    return float(np.mean([not band_findings(s, bands) for s in scores])) if scores else float("nan")


def band_findings(scores, bands):
    """Refusals for the statistics outside their bands (one per statistic)."""
    out = []
    for name, band in bands.items():
        reason, words, _ = STATISTICS[name]
        value = float(scores[name])
        low, high = band.get("min"), band.get("max")
        if low is not None and value < low:
            out.append(Finding("lung_fields", reason, "refuse", f"{words} {value:.3g} below the plausible {low:.3g} "
                               "of frontal chest films", value, low))
        elif high is not None and value > high:
            out.append(Finding("lung_fields", reason, "refuse", f"{words} {value:.3g} above the plausible {high:.3g} "
                               "of frontal chest films", value, high))
    return out


def validate_lung_fields(entry):
    """Raise BundleError naming the first problem in a manifest's ``quality.lung_fields`` entry."""
    if not isinstance(entry, dict):
        raise BundleError("quality.lung_fields must be an object")
    for key in ("segmenter_manifest_sha256", "bands"):
        if key not in entry:
            raise BundleError(f"quality.lung_fields lacks {key!r}")
    bands = entry["bands"]
    if not isinstance(bands, dict) or not bands:
        raise BundleError("quality.lung_fields.bands must be a non-empty object")
    for name, band in bands.items():
        if name not in STATISTICS:
            raise BundleError(f"quality.lung_fields.bands has unknown statistic {name!r}; known: {sorted(STATISTICS)}")
        if not isinstance(band, dict) or not band or set(band) - {"min", "max"}:
            raise BundleError(f"quality.lung_fields.bands.{name} must hold 'min' and/or 'max', got {band!r}")


class LungFieldCheck:
    """The lung-field bands of one classifier for the segmenter they were fitted with.

    ``from_manifest(manifest, segmenter)`` returns (check or None, why none): a bundle without bands, or a
    pipeline without a lung segmenter, runs without the check and says so in every result; bands fitted with
    another segmenter are a BundleError (the statistics are those of that segmenter's masks).
    """

    def __init__(self, entry):
        validate_lung_fields(entry)
        self.entry = entry
        self.bands = {k: dict(v) for k, v in entry["bands"].items()}

    @classmethod
    def from_manifest(cls, manifest, segmenter):
        quality = manifest.get("quality") or {}
        entry = quality.get("lung_fields")
        if not quality.get("enabled", True):
            return None, "quality control is switched off in this bundle's manifest (quality.enabled false)"
        if entry is None:
            return None, ("no lung-field check: the bundle has no quality.lung_fields bands (fit them with "
                          "python -m lungedge.compress.quality lung-fields)")
        if segmenter is None:
            return None, "no lung-field check: no lung segmenter was given"
        if entry.get("segmenter_manifest_sha256") != segmenter.bundle.manifest_sha256:
            raise BundleError(f"quality.lung_fields was fitted with segmenter {entry.get('segmenter')!r}, not "
                              f"{segmenter.name!r}: use that lung bundle or refit the bands")
        return cls(entry), None

    def assess(self, assessment, mask, image):
        """Add the statistics, their bands and any refusal of one film to its assessment."""
        scores = lung_field_scores(mask, image)
        assessment.scores.update(scores)
        assessment.thresholds["lung_fields"] = {k: dict(v) for k, v in self.bands.items()}
        assessment.lung_fields = self.describe()
        for finding in band_findings(scores, self.bands):
            assessment.add(finding)
        return scores

    def describe(self):
        """What the result's quality block says about this check."""
        return {"checked": True, "segmenter": self.entry.get("segmenter"),
                "acceptance": self.entry.get("acceptance"), "fitted_on": self.entry.get("fitted_on")}
