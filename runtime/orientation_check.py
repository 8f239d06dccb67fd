"""Orientation check: refuse an image shown with inverted grey levels or rotated by a quarter or half turn.

A film exported with its polarity inverted (bone dark, lungs white: a MONOCHROME1 image read as MONOCHROME2,
or a negative saved from a viewer) or turned on its side still decodes, passes every pixel check and, without
this check, gets a diagnosis: the dev pack's bench refused only 60 % of inverted films, through checks built
for other things. No header says it for PNG and JPEG, and a DICOM's own tags can be wrong, so the check looks
at the pixels of every input.

It reuses the modality check's 74-number descriptor (``lungedge.runtime.modality_check.descriptor``: an 8x8
stretched thumbnail and ten grey-level quantiles of the content region) and, per transform, one logistic
regression fitted self-supervised on the bundle's own training split: the images as stored (target 1) against
the same images transformed (target 0):

- ``inverted``: grey levels flipped over the whole image (letterbox bars turn white) and over the content region
  only (bars stay black, as when an inverted original is letterboxed);
- ``rotated``: turned by 90, 180 and 270 degrees (X-ray bundles only: ``KINDS``).

The threshold of each is the log-odds 0 (where the transformed reading becomes the likelier one), lowered to
the ``1 - acceptance`` quantile of the validation split's scores where that is lower, so that the check never
refuses more than ``1 - acceptance`` of validation images. It is stored in the manifest as
``quality.orientation_check`` with what it was fitted on; a bundle without it says so in each result.

What it does not see: a mirror image (left-right flip; a frontal film and its mirror are both plausible) and a
small tilt. A film that is both rotated and inverted is usually refused by one of the two.
"""

from __future__ import annotations

import numpy as np

from lungedge.runtime.errors import BundleError
from lungedge.runtime.modality_check import (
    DESCRIPTOR,
    descriptor,
    fit_linear,
    linear_model,
    scores_of,
    validate_linear,
)
from lungedge.runtime.quality import Finding, content_region

# Acceptance of the validation images below which a threshold is lowered, and the L2 penalty.
ACCEPTANCE = 0.99
L2 = 1.0
# Transform -> (named reason, what the refusal says).
TRANSFORMS = {
    "inverted": ("inverted_polarity", "grey levels look inverted (bone dark, lungs bright)"),
    "rotated": ("rotated", "looks rotated by a quarter or half turn"),
}
# Transforms checked per modality. An axial CT slice is nearly symmetric (a body ellipse) and its thumbnail tells
# turns apart less well: at the log-odds 0 the rotation check refused 1 of the 78 ct-cls validation slices (none
# of the 271 xray-cls validation films), so CT bundles check polarity only.
KINDS = {"xray": ("inverted", "rotated"), "ct": ("inverted",)}
NOT_CHECKED = {"checked": False, "note": "no orientation check in this bundle (python -m lungedge.compress.quality "
               "orientation fits one)"}


def transformed(image, kind):
    """The training negatives of one image (2-D array) for ``kind``: a list of arrays."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"transformed needs a 2-D image, got shape {a.shape}")
    if kind == "inverted":
        low, high = a.min(), a.max()
        whole = (high - a) + low if np.issubdtype(a.dtype, np.integer) else high + low - a
        _, (y0, y1, x0, x1) = content_region(a)
        inner = a.copy()
        inner[y0:y1, x0:x1] = whole[y0:y1, x0:x1]
        return [whole.astype(a.dtype), inner]
    if kind == "rotated":
        return [np.ascontiguousarray(np.rot90(a, k)) for k in (1, 2, 3)]
    raise ValueError(f"unknown transform {kind!r}; known: {sorted(TRANSFORMS)}")


def fit_transform(stored, negatives, val_stored, acceptance=ACCEPTANCE, l2=L2):
    """One transform's entry from descriptors of images as stored (train), transformed (train) and as stored
    (validation)."""
    entry = fit_linear(stored, negatives, l2)
    val = scores_of(val_stored, entry)
    threshold = min(0.0, float(np.quantile(val, 1.0 - acceptance)))
    entry.update(threshold=threshold, val_accepted=float(np.mean(val >= threshold)),
                 train_transformed_refused=float(np.mean(scores_of(negatives, entry) < threshold)))
    return entry


def fit_check(train, val_descriptors, describe, acceptance=ACCEPTANCE, l2=L2, kinds=tuple(TRANSFORMS)):
    """The ``quality.orientation_check`` entry: ``train`` holds (2-D array, meta) pairs as stored,
    ``describe(array, meta)`` turns one into its descriptor as the runtime would (``QualityControl``; a
    transformed copy keeps its image's meta), ``val_descriptors`` are the validation split's descriptors."""
    stored = np.stack([describe(a, meta) for a, meta in train])
    checks = {}
    for kind in kinds:
        negatives = np.stack([describe(t, meta) for a, meta in train for t in transformed(a, kind)])
        checks[kind] = fit_transform(stored, negatives, val_descriptors, acceptance, l2)
    return {"descriptor": DESCRIPTOR, "acceptance": float(acceptance), "l2": float(l2), "checks": checks}


def validate_orientation_check(entry):
    """Raise BundleError naming the first problem in a manifest's ``quality.orientation_check`` entry."""
    if not isinstance(entry, dict):
        raise BundleError("quality.orientation_check must be an object")
    if entry.get("descriptor") != DESCRIPTOR:
        raise BundleError(f"quality.orientation_check.descriptor is {entry.get('descriptor')!r}; this runtime "
                          f"computes {DESCRIPTOR!r} (refit with python -m lungedge.compress.quality orientation)")
    checks = entry.get("checks")
    if not isinstance(checks, dict) or not checks:
        raise BundleError("quality.orientation_check.checks must be a non-empty object")
    for kind, check in checks.items():
        if kind not in TRANSFORMS:
            raise BundleError(f"quality.orientation_check.checks has unknown transform {kind!r}; known: "
                              f"{sorted(TRANSFORMS)}")
        validate_linear(check, f"quality.orientation_check.checks.{kind}")


class OrientationCheck:
    """Scores one image's descriptor per transform and refuses it below a transform's threshold."""

    def __init__(self, entry):
        validate_orientation_check(entry)
        self.entry = entry
        self.checks = entry["checks"]
        self.models = {kind: linear_model(check) for kind, check in self.checks.items()}

    def scores(self, features):
        """{transform: log-odds of "as stored"} of one descriptor."""
        return {kind: float(scores_of(features, model)[0]) for kind, model in self.models.items()}

    def score(self, u):
        return self.scores(descriptor(u))

    def findings(self, scores):
        out = []
        for kind, value in scores.items():
            limit = float(self.checks[kind]["threshold"])
            if value < limit:
                reason, words = TRANSFORMS[kind]
                out.append(Finding("pixels", reason, "refuse", f"{words} (score {value:.3g} below {limit:.3g})",
                                   value, limit))
        return out

    def describe(self):
        return {"checked": True, "transforms": sorted(self.checks),
                "thresholds": {k: float(c["threshold"]) for k, c in sorted(self.checks.items())},
                "acceptance": self.entry.get("acceptance"), "fitted_on": self.entry.get("fitted_on")}
