"""Diagnostic metrics in pure numpy: binary and one-vs-rest classification, binary segmentation.

Pure functions first, thin accumulators second (the MONAI ``meandice`` habit). numpy only and Python 3.8
syntax, so the same code scores a model on a workstation and on the edge device; the tests check it
against scikit-learn and scipy. Errors are ``MetricError`` (a ``ValueError``) and name the bad shape.

Classification conventions (label 1 is positive; a case is called positive when ``score >= threshold``):

==========================================  ==================================================
case                                        value
==========================================  ==================================================
sensitivity (recall) with no positives      0.0  (scikit-learn's ``zero_division=0``)
specificity with no negatives               0.0  (same rule)
precision with no positive predictions      0.0  (same rule)
F-beta when TP + FP + FN == 0               0.0  (same rule)
ROC curve / AUC with one class in y_true    ``UndefinedMetricError``: no AUC exists there
NaN or inf scores, empty input              ``MetricError``
==========================================  ==================================================

Segmentation conventions (binary 2-D or 3-D masks; ``gt`` is the ground truth A, ``pred`` the
prediction B; ``spacing`` is mm per axis, default 1). No case returns NaN, because a NaN silently
drops a missed lesion out of a mean (MONAI issue #9095):

==========================  =====  =====  =====  ======  ==================  ==================
case                        dice   iou    voe    rvd     asd                 msd
==========================  =====  =====  =====  ======  ==================  ==================
both empty                  1.0    1.0    0.0    0.0     0.0                 0.0
gt empty, pred not          0.0    0.0    1.0    +inf    ``max_distance``    ``max_distance``
pred empty, gt not          0.0    0.0    1.0    -1.0    ``max_distance``    ``max_distance``
==========================  =====  =====  =====  ======  ==================  ==================

- ``rvd = (|B| - |A|) / |A|`` is signed: positive means over-segmentation. With an empty ground truth
  any prediction is infinitely too large, so it is ``+inf`` (visible in a mean, never NaN).
- ``max_distance(shape, spacing)`` is the field-of-view diagonal ``sqrt(sum((n_i * s_i)**2))``: larger
  than any distance between two voxels, so a miss always scores worse than any hit, yet finite.
- Surface voxels are mask voxels with a background 4-neighbour (2-D) or 6-neighbour (3-D), i.e. the
  mask minus its erosion by a cross; outside the image counts as background (scipy ``binary_erosion``
  with ``border_value=0``, as medpy does).
- ``asd`` is the mean of the union of both directed surface-distance sets (Heimann et al. 2009), not
  medpy's ``assd`` (the average of the two directed means); ``msd`` is its maximum (Hausdorff).
- Volume ratios (dice, iou, voe, rvd) do not depend on spacing, so only the surface metrics take it.

Where the survey (shared/reference/covid19-deep-learning-survey.txt, section III) differs:

- Eq. (6) prints VOE as ``2(Vseg - Vgt)/(Vseg + Vgt)``; we use the standard ``1 - |A∩B|/|A∪B|``.
- Eq. (7) gives RVD as ``(Vseg/Vgt - 1) x 100%``: the same sign and quantity, but we return a fraction.
- Eqs. (9) and (10) print ``min`` for both ASD and MSD; ASD is the mean and MSD the maximum.
- Eq. (8) (``Ag`` garbled for ``A_gt``) is our directed distance; eq. (2), F1, is lost in the text and
  is F-beta (eq. 3) at beta = 1; eq. (4), accuracy, reads ``(TP + TN) / N``.
"""

import math
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from lungedge.runtime.errors import LungedgeError


class MetricError(LungedgeError, ValueError):
    """Inputs a metric cannot use: mismatched shapes, non-binary labels or masks, NaN scores, no cases."""


class UndefinedMetricError(MetricError):
    """The metric has no meaning on these data, e.g. an AUC when y_true holds a single class."""


# ---------------------------------------------------------------------------------------------------------
# Classification: pure functions
# ---------------------------------------------------------------------------------------------------------


class Confusion(NamedTuple):
    """Counts of a binary confusion matrix."""

    tp: int
    fp: int
    fn: int
    tn: int

    def as_matrix(self) -> np.ndarray:
        """scikit-learn's layout: ``[[tn, fp], [fn, tp]]``."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricError(f"{name} must be 1-D (one value per case), got shape {arr.shape}")
    if arr.size == 0:
        raise MetricError(f"{name} is empty, got shape {arr.shape}: there are no cases to score")
    return arr


def _as_binary(values, name: str) -> np.ndarray:
    """0/1 (or bool) values as a bool array; anything else is an error rather than a silent cast."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise MetricError(f"{name} must hold 0/1 values, got dtype {arr.dtype} (shape {arr.shape})")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        found = np.unique(arr[bad])[:5].tolist()
        raise MetricError(f"{name} must hold only 0/1 values (shape {arr.shape}), found {found}; "
                          "threshold or map the labels first")
    return arr == 1


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise MetricError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def _labels_and_predictions(y_true, y_pred) -> Tuple[np.ndarray, np.ndarray]:
    y = _as_binary(_as_1d(y_true, "y_true"), "y_true")
    p = _as_binary(_as_1d(y_pred, "y_pred"), "y_pred")
    _check_same_shape(y, p, "y_true", "y_pred")
    return y, p


def _labels_and_scores(y_true, scores) -> Tuple[np.ndarray, np.ndarray]:
    y = _as_binary(_as_1d(y_true, "y_true"), "y_true")
    s = _as_1d(scores, "scores")
    _check_same_shape(y, s, "y_true", "scores")
    if not (s.dtype == bool or np.issubdtype(s.dtype, np.number)) or np.iscomplexobj(s):
        raise MetricError(f"scores must be real numbers, got dtype {s.dtype} (shape {s.shape})")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise MetricError(f"scores (shape {s.shape}) hold {int((~np.isfinite(s)).sum())} NaN or inf values")
    return y, s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive" if n_pos else "negative"
        raise UndefinedMetricError(f"{what} is undefined: y_true (shape {y.shape}) holds only {only} cases; "
                                   "it needs both classes")


def _ratio(num: float, den: float) -> float:
    """num / den, or 0.0 when den is 0 (scikit-learn's zero_division=0 convention)."""
    return float(num) / float(den) if den else 0.0


def _confusion(y: np.ndarray, p: np.ndarray) -> Confusion:
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(y)) - tp
    return Confusion(tp=tp, fp=fp, fn=fn, tn=y.size - tp - fp - fn)


def _f_beta(c: Confusion, beta: float) -> float:
    b2 = beta * beta
    return _ratio((1 + b2) * c.tp, (1 + b2) * c.tp + b2 * c.fn + c.fp)


def confusion(y_true, y_pred) -> Confusion:
    """Binary confusion counts (tp, fp, fn, tn); labels are 0/1 or bool."""
    return _confusion(*_labels_and_predictions(y_true, y_pred))


def sensitivity(y_true, y_pred) -> float:
    """TP / (TP + FN), the recall; 0.0 when y_true holds no positives."""
    c = confusion(y_true, y_pred)
    return _ratio(c.tp, c.tp + c.fn)


recall = sensitivity


def specificity(y_true, y_pred) -> float:
    """TN / (TN + FP); 0.0 when y_true holds no negatives."""
    c = confusion(y_true, y_pred)
    return _ratio(c.tn, c.tn + c.fp)


def precision(y_true, y_pred) -> float:
    """TP / (TP + FP); 0.0 when nothing is predicted positive."""
    c = confusion(y_true, y_pred)
    return _ratio(c.tp, c.tp + c.fp)


def accuracy(y_true, y_pred) -> float:
    """(TP + TN) / N."""
    c = confusion(y_true, y_pred)
    return _ratio(c.tp + c.tn, len(np.asarray(y_true)))


def f_beta(y_true, y_pred, beta: float) -> float:
    """(1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP): beta > 1 weighs sensitivity up; 0.0 when TP+FP+FN == 0."""
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise MetricError(f"beta must be a positive finite number, got {beta!r}")
    return _f_beta(confusion(y_true, y_pred), float(beta))


def f1(y_true, y_pred) -> float:
    """F-beta at beta = 1, the harmonic mean of precision and sensitivity."""
    return f_beta(y_true, y_pred, 1.0)


def f2(y_true, y_pred) -> float:
    """F-beta at beta = 2, the survey's recommendation for COVID-19 screening (misses cost more)."""
    return f_beta(y_true, y_pred, 2.0)


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps, tps, thresholds) at each distinct score, highest first, counting ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y[order])[last_of_value]
    fps = last_of_value + 1 - tps
    return fps, tps, s_sorted[last_of_value]


def roc_curve(y_true, scores, drop_intermediate: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's ``roc_curve``: thresholds are the distinct scores, highest
    first, behind a leading ``inf`` so the curve starts at (0, 0).

    Unlike scikit-learn the default keeps every threshold (``drop_intermediate=False``), which is what
    ``fit_threshold`` needs; ``drop_intermediate=True`` drops collinear points exactly as scikit-learn does.
    """
    y, s = _labels_and_scores(y_true, scores)
    _require_both_classes(y, "the ROC curve")
    fps, tps, thresholds = _threshold_counts(y, s)
    if drop_intermediate and fps.size > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, corner, True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0, fps].astype(np.float64)
    tps = np.r_[0, tps].astype(np.float64)
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts_run = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    run = np.cumsum(starts_run) - 1
    first = np.flatnonzero(starts_run)
    end = np.r_[first[1:], s.size]
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = ((first + 1 + end) / 2.0)[run]
    return ranks


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (a tie counts 1/2), equal to scikit-learn's
    ``roc_auc_score``; ``UndefinedMetricError`` when y_true holds one class only."""
    y, s = _labels_and_scores(y_true, scores)
    _require_both_classes(y, "the AUC")
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _rates(c: Confusion) -> Dict[str, float]:
    return {
        "sensitivity": _ratio(c.tp, c.tp + c.fn),
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "f1": _f_beta(c, 1.0),
        "f2": _f_beta(c, 2.0),
    }


def classification_report(y_true, scores, threshold: float = 0.5) -> Dict[str, float]:
    """Binary report at ``score >= threshold``: counts, sensitivity, specificity, precision, accuracy, F1,
    F2 and AUC (which raises ``UndefinedMetricError`` when y_true holds one class only)."""
    y, s = _labels_and_scores(y_true, scores)
    c = _confusion(y, s >= threshold)
    report = {"threshold": float(threshold), "n": int(y.size), "n_positive": int(y.sum())}
    report.update(c._asdict())
    report.update(_rates(c))
    report["accuracy"] = _ratio(c.tp + c.tn, y.size)
    report["auc"] = roc_auc(y, s)
    return report


def _class_indices(y_true_idx, n_classes: int) -> np.ndarray:
    y = _as_1d(y_true_idx, "y_true_idx")
    if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise MetricError(f"y_true_idx must hold class indices, got dtype {y.dtype} (shape {y.shape})")
    if np.any(y != np.round(y)) or y.min() < 0 or y.max() >= n_classes:
        raise MetricError(f"y_true_idx (shape {y.shape}) must hold integers in [0, {n_classes}), "
                          f"found values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def per_class_report(y_true_idx, probs, labels: Sequence[str]) -> Dict[str, object]:
    """One-vs-rest report for K classes: per class sensitivity, specificity, precision, F1, F2 (the
    predicted class is ``argmax(probs)``, ties to the lower index) and AUC (on ``probs[:, k]``), plus
    their unweighted (macro) means and the overall accuracy.

    probs: (N, K) scores, one column per entry of ``labels``; they need not sum to 1.
    A class absent from y_true (or making up all of it) has no AUC: ``UndefinedMetricError``.
    """
    labels = [str(name) for name in labels]
    if len(set(labels)) != len(labels):
        raise MetricError(f"labels must be unique, got {labels}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(labels):
        raise MetricError(f"probs must have shape (N, {len(labels)}) for labels {labels}, got shape {p.shape}")
    y = _class_indices(y_true_idx, len(labels))
    if p.shape[0] != y.shape[0]:
        raise MetricError(f"y_true_idx has shape {y.shape} but probs has shape {p.shape}; "
                          "they need one row per case")
    if not np.isfinite(p).all():
        raise MetricError(f"probs (shape {p.shape}) hold NaN or inf values")
    predicted = p.argmax(axis=1)
    classes = {}
    for k, name in enumerate(labels):
        actual_k = y == k
        if not actual_k.any() or actual_k.all():
            raise UndefinedMetricError(f"one-vs-rest AUC of class {name!r} (index {k}) is undefined: "
                                       f"{int(actual_k.sum())} of {y.size} cases belong to it")
        c = _confusion(actual_k, predicted == k)
        row = _rates(c)
        row["auc"] = roc_auc(actual_k, p[:, k])
        row["support"] = int(actual_k.sum())
        classes[name] = row
    keys = ("sensitivity", "specificity", "precision", "f1", "f2", "auc")
    macro = {key: float(np.mean([classes[name][key] for name in labels])) for key in keys}
    return {"classes": classes, "macro": macro, "accuracy": float(np.mean(predicted == y)), "n": int(y.size)}


_SENSITIVITY_RULE = re.compile(r"sensitivity\s*>=\s*([0-9]*\.?[0-9]+)")


def fit_threshold(y_true, scores, rule: str = "youden") -> float:
    """Operating threshold fitted on validation data; cases with ``score >= threshold`` are positive.

    rule: ``"youden"`` maximises sensitivity + specificity - 1; ``"sensitivity>=x"`` (e.g.
    ``"sensitivity>=0.95"``) is the highest threshold whose sensitivity reaches x, hence the best
    specificity under that constraint; ``"f2"`` maximises F2. The threshold is always one of the
    observed scores, and among equally good thresholds the highest (most specific) wins.
    """
    y, s = _labels_and_scores(y_true, scores)
    _require_both_classes(y, f"fitting a threshold by {rule!r}")
    fps, tps, thresholds = _threshold_counts(y, s)
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    match = _SENSITIVITY_RULE.fullmatch(rule.strip()) if isinstance(rule, str) else None
    if rule == "youden":
        best = int(np.argmax(tps / n_pos - fps / n_neg))
    elif rule == "f2":
        best = int(np.argmax(5.0 * tps / (5.0 * tps + 4.0 * (n_pos - tps) + fps)))
    elif match is not None:
        target = float(match.group(1))
        if not 0.0 < target <= 1.0:
            raise MetricError(f"rule {rule!r}: the sensitivity target must lie in (0, 1]")
        # tps only grows as the threshold falls, and the lowest threshold has sensitivity 1.
        best = int(np.argmax(tps / n_pos >= target - 1e-12))
    else:
        raise MetricError(f"unknown threshold rule {rule!r}; use 'youden', 'f2' or 'sensitivity>=x' "
                          "with x in (0, 1]")
    return float(thresholds[best])


# ---------------------------------------------------------------------------------------------------------
# Segmentation: pure functions
# ---------------------------------------------------------------------------------------------------------


def _as_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise MetricError(f"{name} must be a non-empty 2-D or 3-D mask (one image or volume), got shape "
                          f"{arr.shape}; score a batch one case at a time")
    return _as_binary(arr, name)


def _mask_pair(pred, gt) -> Tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    _check_same_shape(p, g, "pred", "gt")
    return p, g


def _as_spacing(spacing, ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise MetricError(f"spacing must be {ndim} positive mm values, one per mask axis, got {spacing!r}")
    return values


def dice(pred, gt) -> float:
    """2 |A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    p, g = _mask_pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 2.0 * np.count_nonzero(p & g) / total if total else 1.0


def iou(pred, gt) -> float:
    """|A∩B| / |A∪B| (Jaccard); 1.0 when both masks are empty."""
    p, g = _mask_pair(pred, gt)
    union = np.count_nonzero(p | g)
    return float(np.count_nonzero(p & g)) / union if union else 1.0


def voe(pred, gt) -> float:
    """Volumetric overlap error 1 - |A∩B| / |A∪B|; 0.0 when both masks are empty."""
    return 1.0 - iou(pred, gt)


def rvd(pred, gt) -> float:
    """Relative volume difference (|B| - |A|) / |A|, A = gt: positive means over-segmentation; 0.0 when
    both are empty, +inf when only gt is empty."""
    p, g = _mask_pair(pred, gt)
    v_pred, v_gt = np.count_nonzero(p), np.count_nonzero(g)
    if v_gt == 0:
        return 0.0 if v_pred == 0 else math.inf
    return float(v_pred - v_gt) / v_gt


def max_distance(shape: Sequence[int], spacing=None) -> float:
    """The miss penalty for surface distances: the field-of-view diagonal sqrt(sum((n_i * s_i)^2)) in mm."""
    s = _as_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * v) ** 2 for n, v in zip(shape, s))))


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the cross (4-/6-neighbour) element, outside the image being background."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = [slice(1, n + 1) for n in mask.shape]
    eroded = mask.copy()
    for axis, n in enumerate(mask.shape):
        for start in (0, 2):
            window = list(inner)
            window[axis] = slice(start, start + n)
            eroded &= padded[tuple(window)]
    return eroded


def mask_surface(mask) -> np.ndarray:
    """Surface voxels of a binary mask: those with a background 4-neighbour (2-D) or 6-neighbour (3-D)."""
    m = _as_mask(mask, "mask")
    return m & ~_erode_cross(m)


def _squared_distance_along_last_axis(target: np.ndarray, step: float) -> np.ndarray:
    """Squared distance (mm^2) from every voxel to the nearest True voxel in the same last-axis line;
    inf in lines without one."""
    n = target.shape[-1]
    position = np.arange(n)
    far = 2 * n + 1
    previous = np.maximum.accumulate(np.where(target, position, -far), axis=-1)
    following = np.flip(np.minimum.accumulate(np.flip(np.where(target, position, far), -1), axis=-1), -1)
    squared = np.square(np.minimum(position - previous, following - position) * step)
    squared[~target.any(axis=-1)] = np.inf
    return squared


def _min_plus_parabola(squared: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Exact 1-D pass of a separable distance transform along ``axis``:
    out[.., x, ..] = min over a of ((x - a) * step)^2 + squared[.., a, ..]. Brute force over a (the
    callers pass the shortest axis), skipping slices that hold no finite value."""
    squared = np.moveaxis(squared, axis, 0)
    useful = np.flatnonzero(np.isfinite(squared).any(axis=tuple(range(1, squared.ndim))))
    source = squared[useful]
    offset_sq = np.square((np.arange(squared.shape[0])[:, None] - useful[None, :]) * step)
    out = np.empty_like(squared)
    for x in range(squared.shape[0]):
        out[x] = (source + offset_sq[x].reshape((-1,) + (1,) * (squared.ndim - 1))).min(axis=0)
    return np.moveaxis(out, 0, axis)


def _nearest_distances(points: np.ndarray, target: np.ndarray, spacing: Tuple[float, ...]) -> np.ndarray:
    """Exact Euclidean distance (mm) from each voxel index in ``points`` (P, ndim) to the nearest True
    voxel of ``target`` (which holds at least one).

    A separable exact distance transform, cropped to the bounding box of both sets: a linear nearest-
    neighbour sweep along the longest axis, a brute-force pass along the shortest (3-D only), then for
    each point a minimum over the remaining axis. Cost ~ volume x shortest side + points x middle side.
    """
    corners = np.vstack([points, np.argwhere(target)])
    low, high = corners.min(axis=0), corners.max(axis=0) + 1
    target = target[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    points = points - low
    # axes: gather axis first, brute-force axis (3-D) next, sweep axis last
    by_size = list(np.argsort(target.shape, kind="stable"))
    order = [by_size[-2], by_size[0], by_size[-1]] if target.ndim == 3 else [by_size[0], by_size[1]]
    target = np.transpose(target, order)
    points = points[:, order]
    step = [spacing[a] for a in order]

    squared = _squared_distance_along_last_axis(target, step[-1])
    if target.ndim == 3:
        squared = _min_plus_parabola(squared, 1, step[1])
    by_cell = squared.reshape(target.shape[0], -1).T.copy()  # (cells of the other axes, gather axis)
    flat = np.ravel_multi_index(tuple(points[:, 1:].T), target.shape[1:])
    offset_sq = np.square((np.arange(target.shape[0])[None, :] - np.arange(target.shape[0])[:, None]) * step[0])
    out = np.empty(len(points))
    chunk = max(1, (1 << 20) // target.shape[0])  # keeps the (chunk, gather axis) temporaries near 8 MB
    for start in range(0, len(points), chunk):
        part = slice(start, start + chunk)
        out[part] = np.sqrt((by_cell[flat[part]] + offset_sq[points[part, 0]]).min(axis=1))
    return out


def surface_distances(pred, gt, spacing=None) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): (from each pred surface voxel to the gt surface, from each gt
    surface voxel to the pred surface), each in C order of the voxels.

    Exact Euclidean with anisotropic ``spacing``. When one mask is empty, the other's surface voxels all
    get ``max_distance`` and the empty side is an empty array; both empty gives two empty arrays.
    """
    p, g = _mask_pair(pred, gt)
    s = _as_spacing(spacing, p.ndim)
    surf_p, surf_g = p & ~_erode_cross(p), g & ~_erode_cross(g)
    pts_p, pts_g = np.argwhere(surf_p), np.argwhere(surf_g)
    if pts_p.size == 0 or pts_g.size == 0:
        # A finite penalty, not NaN: a NaN would drop the miss out of a mean (MONAI issue #9095).
        penalty = max_distance(p.shape, s)
        return np.full(len(pts_p), penalty), np.full(len(pts_g), penalty)
    return _nearest_distances(pts_p, surf_g, s), _nearest_distances(pts_g, surf_p, s)


def _asd_msd(distances: Tuple[np.ndarray, np.ndarray]) -> Tuple[float, float]:
    both = np.concatenate(distances)
    return (float(both.mean()), float(both.max())) if both.size else (0.0, 0.0)


def asd(pred, gt, spacing=None) -> float:
    """Average symmetric surface distance (mm): the mean over both directed distance sets together."""
    return _asd_msd(surface_distances(pred, gt, spacing))[0]


def msd(pred, gt, spacing=None) -> float:
    """Maximum symmetric surface distance (mm), i.e. the Hausdorff distance between the surfaces."""
    return _asd_msd(surface_distances(pred, gt, spacing))[1]


def segmentation_report(pred, gt, spacing=None) -> Dict[str, float]:
    """dice, iou, voe, rvd, asd and msd of one image or volume, surfaces computed once."""
    p, g = _mask_pair(pred, gt)
    mean_distance, max_dist = _asd_msd(surface_distances(p, g, spacing))
    overlap = iou(p, g)
    return {"dice": dice(p, g), "iou": overlap, "voe": 1.0 - overlap, "rvd": rvd(p, g),
            "asd": mean_distance, "msd": max_dist}


# ---------------------------------------------------------------------------------------------------------
# Accumulators
# ---------------------------------------------------------------------------------------------------------


def _summary(values: List[float]) -> Dict[str, object]:
    """mean, std (population, ddof=0) and median; std is inf, never NaN, when a value is infinite."""
    arr = np.asarray(values, dtype=np.float64)
    finite = bool(np.isfinite(arr).all())
    return {"mean": float(arr.mean()), "std": float(arr.std()) if finite else math.inf,
            "median": float(np.median(arr)), "per_image": [float(v) for v in values]}


class SegmentationAccumulator:
    """Collects ``segmentation_report`` per image or volume; ``aggregate()`` summarises each metric."""

    METRICS = ("dice", "iou", "voe", "rvd", "asd", "msd")

    def __init__(self, spacing=None):
        self.spacing = spacing
        self.reset()

    def reset(self) -> None:
        self._values: Dict[str, List[float]] = {name: [] for name in self.METRICS}

    def __len__(self) -> int:
        return len(self._values["dice"])

    def update(self, pred, gt, spacing=None) -> Dict[str, float]:
        """Score one case (``spacing`` overrides the accumulator's) and return its metrics."""
        row = segmentation_report(pred, gt, self.spacing if spacing is None else spacing)
        for name in self.METRICS:
            self._values[name].append(row[name])
        return row

    def aggregate(self) -> Dict[str, object]:
        """{metric: {mean, std, median, per_image}} for each metric, plus the case count ``n``."""
        if not len(self):
            raise MetricError("nothing to aggregate: call update() with at least one case first")
        result: Dict[str, object] = {name: _summary(self._values[name]) for name in self.METRICS}
        result["n"] = len(self)
        return result


class ClassificationAccumulator:
    """Collects labels and scores batch by batch; ``aggregate()`` reports on all of them together.

    Binary (``labels=None``): ``update(y_true, scores)`` with 0/1 labels and 1-D scores, reported by
    ``classification_report`` at ``threshold``. Multiclass: ``update(y_true_idx, probs)`` with (N, K)
    probs, reported by ``per_class_report``.
    """

    def __init__(self, threshold: float = 0.5, labels: Optional[Sequence[str]] = None):
        self.threshold = float(threshold)
        self.labels = None if labels is None else [str(name) for name in labels]
        self.reset()

    def reset(self) -> None:
        self._y: List[np.ndarray] = []
        self._scores: List[np.ndarray] = []

    def __len__(self) -> int:
        return int(sum(len(y) for y in self._y))

    def update(self, y_true, scores) -> None:
        y = _as_1d(y_true, "y_true")
        s = np.asarray(scores)
        expected = (y.shape[0],) if self.labels is None else (y.shape[0], len(self.labels))
        if s.shape != expected:
            raise MetricError(f"scores must have shape {expected} for y_true of shape {y.shape}, got {s.shape}")
        self._y.append(y)
        self._scores.append(s)

    def aggregate(self) -> Dict[str, object]:
        """The report on every case so far, plus ``per_image``: the labels and scores it was built from."""
        if not self._y:
            raise MetricError("nothing to aggregate: call update() with at least one batch first")
        y = np.concatenate(self._y)
        s = np.concatenate(self._scores)
        if self.labels is None:
            result: Dict[str, object] = dict(classification_report(y, s, self.threshold))
        else:
            result = per_class_report(y, s, self.labels)
        result["per_image"] = {"y_true": y.tolist(), "scores": s.tolist()}
        return result
