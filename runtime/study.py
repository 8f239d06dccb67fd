"""Study-level CT scoring as pure functions: slice aggregation rules, severity grade, a HU-threshold lung mask.

Aggregation rules used in the COVID-19 CT literature to turn per-slice probabilities into one study score:
the mean, the maximum, the rate of positive slices, and N consecutive positive slices. Each returns a score
in [0, 1]; the study is called positive when the score reaches the study threshold.
"""

import cv2
import numpy as np

from lungedge.runtime.errors import ConfigError, InputError

# CT severity on the CT-0..CT-4 scale from the share of lung volume affected (lesion / lung).
SEVERITY_GRADES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
# Air-like HU below this is lung parenchyma (or air outside the body, removed by border connectivity).
LUNG_HU_MAX = -320.0


def _mean(p):
    return float(np.mean(p))


def _max(p):
    return float(np.max(p))


def _positive_rate(p, threshold=0.5):
    """Share of slices whose probability reaches ``threshold``."""
    return float(np.mean(p >= threshold))


def _consecutive(p, n=3):
    """Max over runs of ``n`` neighbouring slices of their smallest probability.

    The score reaches a threshold exactly when ``n`` consecutive slices all reach it; a study shorter than
    ``n`` slices uses all of them.
    """
    n = int(n)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    n = min(n, len(p))
    windows = np.lib.stride_tricks.sliding_window_view(p, n)
    return float(windows.min(axis=1).max())


AGGREGATION_RULES = {
    "mean": _mean,
    "max": _max,
    "positive_rate": _positive_rate,
    "consecutive": _consecutive,
}


def aggregate_study(slice_probs, rule="mean", **params):
    """One study score in [0, 1] from per-slice probabilities (ordered by slice) under ``rule``."""
    if rule not in AGGREGATION_RULES:
        raise ConfigError(f"unknown aggregation rule {rule!r}; known: {sorted(AGGREGATION_RULES)}")
    p = np.asarray(slice_probs, dtype=np.float64).ravel()
    if p.size == 0:
        raise InputError("no slices to aggregate")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise InputError("slice probabilities must be finite values in [0, 1]")
    return AGGREGATION_RULES[rule](p, **params)


def severity_grade(lesion_ratio):
    """CT-0 (no lesion), CT-1 (< 25 %), CT-2 (25-50 %), CT-3 (50-75 %), CT-4 (> 75 %); None when unknown.

    Boundaries: exactly 25 % is CT-2, exactly 50 % CT-3, exactly 75 % CT-3.
    """
    if lesion_ratio is None:
        return None
    r = float(lesion_ratio)
    if not np.isfinite(r) or r < 0.0:
        raise ConfigError(f"lesion ratio must be a finite fraction >= 0, got {lesion_ratio}")
    if r == 0.0:
        return "CT-0"
    if r < 0.25:
        return "CT-1"
    if r < 0.50:
        return "CT-2"
    if r <= 0.75:
        return "CT-3"
    return "CT-4"


def lung_mask_from_hu(slice_hu, hu_max=LUNG_HU_MAX):
    """Rough lung mask of one HU slice: air-like pixels not connected to the image border (outside air)."""
    air = (np.asarray(slice_hu) < hu_max).astype(np.uint8)
    count, labels = cv2.connectedComponents(air, connectivity=4)
    if count <= 1:
        return np.zeros(air.shape, np.uint8)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = np.ones(count, np.uint8)  # a lookup per component: far faster than np.isin on the whole slice
    keep[border] = 0
    keep[0] = 0  # component 0 is the non-air background
    return keep[labels]


def lesion_ratio(lesion_pixels, lung_pixels):
    """Lesion share of the lung (0..1), or None when the lung area is unknown or empty."""
    if lung_pixels is None or lung_pixels <= 0:
        return None
    return min(1.0, float(lesion_pixels) / float(lung_pixels))
