"""Binary and one-vs-rest classification metrics in pure numpy, checked against scikit-learn in the tests.

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

Eq. (2) of the survey (shared/reference/covid19-deep-learning-survey.txt, section III), F1, is lost in the text
and is F-beta (eq. 3) at beta = 1; eq. (4), accuracy, reads ``(TP + TN) / N``.
"""

import math
import re
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np

from lungedge.metrics.errors import MetricError, UndefinedMetricError


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


def strict_sensitivity(y, calls):
    """Sensitivity that is undefined (raises, so a bootstrap skips the resample) when ``y`` holds no positive."""
    if not np.any(np.asarray(y) == 1):
        raise UndefinedMetricError("no positives")
    return sensitivity(y, calls)


def strict_specificity(y, calls):
    """Specificity that is undefined (raises) when ``y`` holds no negative."""
    if not np.any(np.asarray(y) == 0):
        raise UndefinedMetricError("no negatives")
    return specificity(y, calls)


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


def proportion_interval(successes: int, n: int, ci: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (e.g. a refusal or acceptance rate).

    Wilson rather than the normal approximation: it stays inside [0, 1] and is not zero-width at 0/n or n/n
    (27 of 27 gives [0.875, 1.0]). It treats the n cases as independent; images sharing a patient make it too
    narrow.
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(successes, (int, np.integer))):
        raise MetricError(f"successes and n must be integers, got {successes!r} and {n!r}")
    if n < 1 or not 0 <= successes <= n:
        raise MetricError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if not 0.0 < ci < 1.0:
        raise MetricError(f"ci must lie strictly between 0 and 1, got {ci!r}")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + ci / 2.0)
    p = successes / float(n)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def rate_verdict(successes: int, n: int, target: float, ci: float = 0.95) -> str:
    """Is a rate (refused, accepted) at least ``target``? ``"met"`` when the lower bound of its ``ci`` Wilson
    interval reaches it, ``"unproven"`` when only the point estimate does (too few cases to show it),
    ``"missed"`` otherwise: the verdict words of the bench's accuracy targets."""
    if successes / float(n) < target:
        return "missed"
    return "met" if proportion_interval(successes, n, ci)[0] >= target else "unproven"
