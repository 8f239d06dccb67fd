"""Modality check: refuse an image of the other modality (an X-ray sent to a CT bundle, a CT slice to an X-ray
bundle) when no header says which it is (PNG, JPEG, NIfTI). A DICOM's Modality tag settles it instead: the
predictor refuses a mismatch with a typed error (``InputError``, wrong modality), and a match needs no check.

The image is described by 74 numbers read from the pixel stage's small copy of its content region (no model):
an 8x8 thumbnail of the image stretched between its 1st and 99th percentiles (where things are: a CT slice's
body ellipse on black air, a radiograph's two lung fields beside the mediastinum) and ten quantiles of its
grey levels (how they are spread: a CT slice's air and tissue, a radiograph's continuum). A logistic regression,
fitted on the training splits of the bundle's modality and of the other modality, turns them into one score,
higher for the bundle's modality; its threshold is the ``acceptance`` quantile of the bundle's validation split
(never its test split), stored in the manifest as ``quality.modality_check`` with what it was fitted on. A
bundle without that entry says so in each result (``thresholds.modality_check.checked`` false).

This is a discriminant between the two modalities a lungedge pack holds, not a general out-of-distribution
detector: it is measured on the other modality's *test* images and on natural images by ``lungedge bench qc``.

Hounsfield-unit inputs (CT DICOM, NIfTI) are put on 0..1 through the bundle preprocessing's ``window_ct`` before
the descriptor is taken (``QualityControl.display_window``), as the dev pack's PNG slices were rendered through
a window; the pixel checks keep their own wide HU window.
"""

from __future__ import annotations

import numpy as np

from lungedge.runtime.errors import BundleError
from lungedge.runtime.quality import Finding

DESCRIPTOR = "thumb8x8_p1p99+quantiles5to95x10"
THUMB = 8
QUANTILES = np.linspace(0.05, 0.95, 10)
N_FEATURES = THUMB * THUMB + len(QUANTILES)
_LEVELS = np.r_[0.01, 0.99, QUANTILES]
# Acceptance of the bundle's own validation images, and the L2 penalty of the logistic regression.
ACCEPTANCE = 0.99
L2 = 1.0
REASON = "other_modality"
WORDS = {"xray": "an X-ray", "ct": "a CT"}


def descriptor(u):
    """The 74 numbers of one unit-scaled 2-D image (the pixel stage's content region, 0..1)."""
    import cv2

    u = np.asarray(u, np.float32)
    if u.ndim != 2 or min(u.shape) < 1:
        raise ValueError(f"descriptor needs a 2-D image, got shape {u.shape}")
    q = _quantiles(u, _LEVELS)  # the stretch's 1st and 99th percentiles and the ten quantiles, one sort
    lo, hi = q[0], q[1]
    stretched = np.clip((u - np.float32(lo)) * np.float32(1.0 / max(float(hi - lo), 1e-6)), 0.0, 1.0)
    thumb = cv2.resize(stretched, (THUMB, THUMB), interpolation=cv2.INTER_AREA).ravel()
    return np.concatenate([thumb, q[2:]]).astype(np.float64)


def _quantiles(u, levels):
    """``np.quantile(u, levels)`` (its default linear method and interpolation formula, in float64: equal to
    float32 rounding) without its per-call overhead, most of the cost on the pixel stage's small images (about
    80 of 100 microseconds)."""
    s = np.sort(u, axis=None).astype(np.float64)
    pos = np.asarray(levels, np.float64) * (s.size - 1)
    lo = np.floor(pos).astype(np.intp)
    a, b = s[lo], s[np.minimum(lo + 1, s.size - 1)]
    t = pos - lo
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)


def fit_logistic(features, targets, l2=L2, iterations=50):
    """L2-penalised logistic regression by Newton's method on standardised features.

    Returns (mean, scale, weights, bias): score(x) = ((x - mean) / scale) @ weights + bias, the log-odds of
    target 1. Classes are weighted to equal total weight (the two packs differ in size)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    if x.ndim != 2 or len(x) != len(y) or not (0 < y.sum() < len(y)):
        raise ValueError("fit_logistic needs (N, D) features and targets holding both classes")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w_class = np.where(y > 0, 0.5 / y.sum(), 0.5 / (len(y) - y.sum())) * len(y)
    beta = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], float(l2))
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w_class * (p - y)) + penalty * beta
        hess = (z * (w_class * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, beta[:-1], float(beta[-1])


def linear_model(entry):
    """(mean, scale, weights, bias) of a manifest entry's logistic regression as float64 arrays."""
    return (np.asarray(entry["mean"], np.float64), np.asarray(entry["scale"], np.float64),
            np.asarray(entry["weights"], np.float64), float(entry["bias"]))


def scores_of(features, entry):
    """The log-odds of (N, 74) descriptors under a manifest entry (or its ``linear_model``)."""
    mean, scale, weights, bias = entry if isinstance(entry, tuple) else linear_model(entry)
    x = np.asarray(features, np.float64).reshape(-1, N_FEATURES)
    return ((x - mean) / scale) @ weights + bias


def fit_linear(positives, negatives, l2=L2):
    """The manifest fields ``mean``, ``scale``, ``weights``, ``bias`` of a logistic regression of descriptors,
    log-odds of ``positives`` (target 1) against ``negatives`` (target 0); ``scores_of`` reads them."""
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    x = np.concatenate([positives, negatives])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    mean, scale, weights, bias = fit_logistic(x, y, l2)
    return {"mean": [float(v) for v in mean], "scale": [float(v) for v in scale],
            "weights": [float(v) for v in weights], "bias": bias}


def validate_linear(entry, where):
    """Raise BundleError naming the first problem in the logistic regression fields of ``entry`` (at ``where``
    in the manifest) and its ``threshold``."""
    for key in ("mean", "scale", "weights", "bias", "threshold"):
        if key not in entry:
            raise BundleError(f"{where} lacks {key!r}")
    for key in ("mean", "scale", "weights"):
        if not isinstance(entry[key], list) or len(entry[key]) != N_FEATURES:
            raise BundleError(f"{where}.{key} must be a list of {N_FEATURES} numbers")
    if any(float(v) <= 0 for v in entry["scale"]):
        raise BundleError(f"{where}.scale must be positive")


def fit_check(own_train, other_train, own_val, modality, other_modality, acceptance=ACCEPTANCE, l2=L2):
    """The ``quality.modality_check`` entry from descriptors of the bundle's modality (train, val) and of the
    other modality (train)."""
    entry = {"descriptor": DESCRIPTOR, "modality": modality, "other_modality": other_modality,
             **fit_linear(own_train, other_train, l2), "l2": float(l2), "acceptance": float(acceptance)}
    val_scores = scores_of(own_val, entry)
    threshold = float(np.quantile(val_scores, 1.0 - acceptance))
    entry["threshold"] = threshold
    entry["val_accepted"] = float(np.mean(val_scores >= threshold))
    entry["other_train_refused"] = float(np.mean(scores_of(other_train, entry) < threshold))
    return entry


def validate_modality_check(entry):
    """Raise BundleError naming the first problem in a manifest's ``quality.modality_check`` entry."""
    if not isinstance(entry, dict):
        raise BundleError("quality.modality_check must be an object")
    for key in ("descriptor", "other_modality"):
        if key not in entry:
            raise BundleError(f"quality.modality_check lacks {key!r}")
    if entry["descriptor"] != DESCRIPTOR:
        raise BundleError(f"quality.modality_check.descriptor is {entry['descriptor']!r}; this runtime computes "
                          f"{DESCRIPTOR!r} (refit with python -m lungedge.compress.quality modality)")
    validate_linear(entry, "quality.modality_check")


class ModalityCheck:
    """Scores one image's descriptor and refuses it below the bundle's threshold."""

    def __init__(self, entry):
        validate_modality_check(entry)
        self.entry = entry
        self.threshold = float(entry["threshold"])
        self.other = entry["other_modality"]
        self.model = linear_model(entry)

    def score(self, u):
        return self.score_descriptor(descriptor(u))

    def score_descriptor(self, features):
        return float(scores_of(features, self.model)[0])

    def findings(self, score, modality):
        if score >= self.threshold:
            return []
        other = WORDS.get(self.other, f"a {self.other}")
        own = WORDS.get(modality, f"a {modality}")
        return [Finding("pixels", REASON, "refuse",
                        f"looks like {other} image, not {own} image (modality score {score:.3g} below "
                        f"{self.threshold:.3g})", score, self.threshold)]

    def describe(self):
        return {"checked": True, "other_modality": self.other, "threshold": self.threshold,
                "acceptance": self.entry.get("acceptance"), "fitted_on": self.entry.get("fitted_on")}


NOT_CHECKED = {"checked": False, "note": "no modality check in this bundle (python -m lungedge.compress.quality "
               "modality fits one)"}
