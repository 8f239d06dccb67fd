"""Validation shared by the mask metrics: binary 2-D/3-D masks of one shape, spacing in mm per axis."""

import math
from typing import Tuple

import numpy as np

from lungedge.metrics.classification import _as_binary, _check_same_shape
from lungedge.metrics.errors import MetricError


def as_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise MetricError(f"{name} must be a non-empty 2-D or 3-D mask (one image or volume), got shape "
                          f"{arr.shape}; score a batch one case at a time")
    return _as_binary(arr, name)


def mask_pair(pred, gt) -> Tuple[np.ndarray, np.ndarray]:
    p = as_mask(pred, "pred")
    g = as_mask(gt, "gt")
    _check_same_shape(p, g, "pred", "gt")
    return p, g


def as_spacing(spacing, ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise MetricError(f"spacing must be {ndim} positive mm values, one per mask axis, got {spacing!r}")
    return values
