"""Paired bootstrap confidence intervals for "is the compressed model as good as the baseline?".

Model A (the baseline) and model B (the compressed student) are scored on the same cases, so the
bootstrap resamples cases once per round and scores both models on that same resample: the interval is
for the paired difference ``metric(B) - metric(A)``. With ``groups`` (patient ids) whole patients are
drawn with replacement and bring all their images, because images of one patient are not independent
and image-level resampling makes the interval too narrow.

Conventions: percentile intervals; the point estimate is the delta on all cases; a resample on which the
metric is undefined (it raises ``ValueError``, e.g. an AUC on a resample holding one class, or returns
NaN) is skipped and counted in ``n_skipped``, never filled in. ``verdict`` judges the interval's bound,
not the point estimate. numpy only, Python 3.8.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Mapping, Tuple, Union

import numpy as np

from lungedge.metrics.errors import MetricError, UndefinedMetricError

_CHUNK_ELEMENTS = 1 << 20  # group draws generated per chunk (8 MB of int64)


class _Groups:
    """Cases sorted by group, so a drawn group is one contiguous slice of ``order``."""

    def __init__(self, groups, n_cases: int):
        if groups is None:
            inverse = np.arange(n_cases)
        else:
            labels = np.asarray(groups)
            if labels.shape != (n_cases,):
                raise MetricError(f"groups must have shape ({n_cases},), one id per case, got {labels.shape}")
            inverse = np.unique(labels, return_inverse=True)[1].reshape(-1)
        self.order = np.argsort(inverse, kind="stable")
        self.counts = np.bincount(inverse)
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.inverse = inverse

    def __len__(self) -> int:
        return int(self.counts.size)

    def cases(self, drawn: np.ndarray) -> np.ndarray:
        """Indices of every case of the drawn groups (a group drawn twice comes twice)."""
        lengths = self.counts[drawn]
        shift = np.repeat(self.starts[drawn] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return self.order[shift + np.arange(lengths.sum())]


def _draws(rng: np.random.Generator, n_groups: int, n_boot: int) -> Iterator[np.ndarray]:
    """(rounds, n_groups) arrays of drawn group indices, n_boot rounds in all; both bootstraps share it so
    the same seed gives the same resamples."""
    rounds = max(1, _CHUNK_ELEMENTS // n_groups)
    for start in range(0, n_boot, rounds):
        yield rng.integers(0, n_groups, size=(min(rounds, n_boot - start), n_groups))


def _check_options(n_boot: int, ci: float) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise MetricError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise MetricError(f"ci must lie strictly between 0 and 1, got {ci!r}")


def _interval(point: float, deltas: np.ndarray, n_boot: int, ci: float, n_groups: int) -> Dict[str, float]:
    if deltas.size == 0:
        raise UndefinedMetricError(f"the metric was undefined on all {n_boot} resamples; no interval exists")
    tail = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return {"delta": float(point), "low": float(low), "high": float(high), "ci": float(ci),
            "se": float(deltas.std(ddof=1)) if deltas.size > 1 else 0.0, "n_boot": int(n_boot),
            "n_skipped": int(n_boot - deltas.size), "n_groups": int(n_groups)}


def _first_axis_match(arrays: Mapping[str, np.ndarray]) -> int:
    lengths = {name: (arr.shape[0] if arr.ndim else None) for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values() or 0 in lengths.values():
        shapes = ", ".join(f"{name} {arr.shape}" for name, arr in arrays.items())
        raise MetricError(f"inputs need the same non-zero number of cases on their first axis, got {shapes}")
    return next(iter(lengths.values()))


def paired_bootstrap(metric_fn: Callable[[np.ndarray, np.ndarray], float], y_true, a_scores, b_scores,
                     groups=None, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> Dict[str, float]:
    """Bootstrap interval of ``metric_fn(y_true, b_scores) - metric_fn(y_true, a_scores)``.

    metric_fn: any ``f(y_true, scores) -> float`` (``roc_auc``, a lambda thresholding scores, ...);
    scores may be (N,) or (N, K). groups: an id per case (patient); whole groups are resampled.
    Returns delta (on all cases), low, high, ci, se (std of the bootstrap deltas), n_boot, n_skipped
    (resamples where the metric raised ValueError or gave NaN) and n_groups.
    """
    _check_options(n_boot, ci)
    y, a, b = np.asarray(y_true), np.asarray(a_scores), np.asarray(b_scores)
    n_cases = _first_axis_match({"y_true": y, "a_scores": a, "b_scores": b})
    # On all cases errors propagate: a bad input must fail loudly, not count as 2000 skips.
    point = float(metric_fn(y, b)) - float(metric_fn(y, a))
    if not math.isfinite(point):
        raise UndefinedMetricError(f"the metric delta on all {n_cases} cases is {point}; nothing to bootstrap")
    grouping = _Groups(groups, n_cases)
    deltas = _resampled(lambda idx: float(metric_fn(y[idx], b[idx])) - float(metric_fn(y[idx], a[idx])),
                        grouping, n_boot, seed)
    return _interval(point, deltas, n_boot, ci, len(grouping))


def _resampled(statistic, grouping, n_boot, seed):
    """``statistic(case indices)`` on each group resample; undefined (ValueError) or non-finite ones are skipped."""
    values = []
    for block in _draws(np.random.default_rng(seed), len(grouping), n_boot):
        for drawn in block:
            try:
                v = statistic(grouping.cases(drawn))
            except ValueError:
                continue
            if math.isfinite(v):
                values.append(v)
    return np.asarray(values, dtype=np.float64)


def paired_bootstrap_mean(per_image_a, per_image_b, groups=None, n_boot: int = 2000, seed: int = 0,
                          ci: float = 0.95) -> Dict[str, float]:
    """Bootstrap interval of ``mean(per_image_b) - mean(per_image_a)`` for per-image metrics (Dice, ASD),
    the images paired by position; same resamples and result keys as ``paired_bootstrap``.

    Every value must be finite: an inf (rvd with an empty ground truth) has no mean to bootstrap.
    """
    _check_options(n_boot, ci)
    a = np.asarray(per_image_a, dtype=np.float64)
    b = np.asarray(per_image_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise MetricError(f"per_image_a and per_image_b must be 1-D, equally long and non-empty, got shapes "
                          f"{a.shape} and {b.shape}")
    bad = np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))
    if bad.size:
        raise MetricError(f"per-image values must be finite; images {bad[:10].tolist()} are NaN or inf")
    grouping = _Groups(groups, a.size)
    diff_sum = np.bincount(grouping.inverse, weights=b - a)
    deltas = []
    for block in _draws(np.random.default_rng(seed), len(grouping), n_boot):
        deltas.append(diff_sum[block].sum(axis=1) / grouping.counts[block].sum(axis=1))
    return _interval(float(np.mean(b - a)), np.concatenate(deltas), n_boot, ci, len(grouping))


@dataclass(frozen=True)
class Verdict:
    """Outcome of a non-inferiority check; truthy only when it passed."""

    passed: bool
    bound: float
    tolerance: float
    higher_is_better: bool

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        side, limit, op = (("lower", -self.tolerance, ">=") if self.higher_is_better
                           else ("upper", self.tolerance, "<="))
        outcome = "PASS" if self.passed else "FAIL"
        return f"{outcome}: {side} bound of the delta {self.bound:+.4f} {op} {limit:+.4f} required"


def verdict(delta_ci: Union[Mapping[str, float], Tuple[float, float]], tolerance: float,
            higher_is_better: bool = True) -> Verdict:
    """Non-inferiority of B against A: passes only if the whole interval clears the tolerance, i.e. the
    lower bound of delta = B - A is >= -tolerance (higher is better) or the upper bound is <= +tolerance
    (lower is better, e.g. ASD). A NaN bound fails.

    delta_ci: a ``paired_bootstrap`` result or a (low, high) pair.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise MetricError(f"tolerance must be a finite number >= 0 (in the metric's units), got {tolerance!r}")
    if isinstance(delta_ci, Mapping):
        low, high = delta_ci["low"], delta_ci["high"]
    else:
        low, high = delta_ci
    low, high = float(low), float(high)
    bound = low if higher_is_better else high
    passed = bound >= -tolerance if higher_is_better else bound <= tolerance
    return Verdict(passed=bool(passed), bound=bound, tolerance=float(tolerance),
                   higher_is_better=bool(higher_is_better))



def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float], y_true, scores, groups=None,
                 n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> Dict[str, float]:
    """Bootstrap interval of ``metric_fn(y_true, scores)`` for one model (whole groups resampled).

    Same conventions as ``paired_bootstrap``: percentile interval, point value on all cases, resamples where
    the metric is undefined are skipped and counted. Returns value, low, high, ci, se, n_boot, n_skipped,
    n_groups.
    """
    _check_options(n_boot, ci)
    y, s = np.asarray(y_true), np.asarray(scores)
    n_cases = _first_axis_match({"y_true": y, "scores": s})
    point = float(metric_fn(y, s))
    if not math.isfinite(point):
        raise UndefinedMetricError(f"the metric on all {n_cases} cases is {point}; nothing to bootstrap")
    grouping = _Groups(groups, n_cases)
    values = _resampled(lambda idx: float(metric_fn(y[idx], s[idx])), grouping, n_boot, seed)
    out = _interval(point, values, n_boot, ci, len(grouping))
    out["value"] = out.pop("delta")
    return out
