"""Calibration of predicted probabilities (pure numpy): ECE with equal-mass bins, Brier score, reliability curve.

A well-calibrated model's "0.8" is right 80 % of the time; discrimination (AUC) says nothing about that, and
compression (distillation, INT8) can change calibration while leaving the AUC alone.

Equal-mass bins: the scores are sorted and cut into ``n_bins`` groups of (nearly) equal size, so every bin has
cases to average; ties never straddle a cut (equal scores always share a bin). ECE = sum over bins of
(bin size / N) * |mean predicted - observed positive rate|.
"""

import numpy as np

from lungedge.metrics.errors import MetricError


def _check(y_true, prob):
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(prob, np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise MetricError(f"y_true and prob must be equally long and non-empty, got {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise MetricError("y_true must hold 0/1 labels")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise MetricError("probabilities must be finite and within [0, 1]")
    return y.astype(np.float64), p


def equal_mass_bins(prob, n_bins=10):
    """Bin index per case: sorted scores cut into ``n_bins`` near-equal groups, ties kept together."""
    p = np.asarray(prob, np.float64).reshape(-1)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise MetricError(f"n_bins must be >= 1, got {n_bins}")
    order = np.argsort(p, kind="stable")
    rank_bin = np.minimum((np.arange(p.size) * n_bins) // max(p.size, 1), n_bins - 1)
    sorted_p = p[order]
    # A tie takes the bin of its first member, so equal scores never straddle a cut.
    first = np.searchsorted(sorted_p, sorted_p, side="left")
    bins = np.empty(p.size, np.int64)
    bins[order] = rank_bin[first]
    return bins


def reliability_curve(y_true, prob, n_bins=10):
    """Per non-empty equal-mass bin: mean predicted probability, observed positive rate and count."""
    y, p = _check(y_true, prob)
    bins = equal_mass_bins(p, n_bins)
    used = np.unique(bins)
    count = np.array([(bins == b).sum() for b in used], np.int64)
    mean_p = np.array([p[bins == b].mean() for b in used])
    observed = np.array([y[bins == b].mean() for b in used])
    return {"mean_predicted": mean_p.tolist(), "observed": observed.tolist(), "count": count.tolist(),
            "binning": f"equal-mass, {int(n_bins)} bins"}


def expected_calibration_error(y_true, prob, n_bins=10):
    """ECE over equal-mass bins (0 = perfectly calibrated)."""
    curve = reliability_curve(y_true, prob, n_bins)
    count = np.asarray(curve["count"], np.float64)
    gap = np.abs(np.asarray(curve["mean_predicted"]) - np.asarray(curve["observed"]))
    return float((count / count.sum() * gap).sum())


def brier_score(y_true, prob):
    """Mean squared error of the probability against the 0/1 outcome (0 = perfect)."""
    y, p = _check(y_true, prob)
    return float(np.mean((p - y) ** 2))


def calibration_report(y_true, prob, n_bins=10):
    """ECE, Brier score and the reliability curve of one set of predictions."""
    return {"ece": expected_calibration_error(y_true, prob, n_bins), "brier": brier_score(y_true, prob),
            "reliability": reliability_curve(y_true, prob, n_bins), "n": int(np.size(y_true))}
