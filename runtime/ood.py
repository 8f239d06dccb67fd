"""Model-side out-of-distribution scores: Mahalanobis distance of the pooled features, energy of the logits.

The deployed artifact exports its pooled feature vector as a second ONNX output (``feature_output``; no
second model). Class-conditional Gaussians with one shared covariance are fitted on the training split's
features *of that artifact* (INT8 and FP16 features shift), and each score's refusal threshold is the
``acceptance`` quantile of the validation split's scores, so that a fixed fraction of in-distribution images
is accepted by each score; ``calibrate_per_group`` then relaxes them until every source of the validation
split accepts at least a floor (the manifest records the rule and each source's acceptance). Everything here is numpy; compress calls ``fit_gaussians`` and ``calibrate``,
the runtime calls ``OodScorer``.

- Mahalanobis: min over classes of (f - mu_c)^T P (f - mu_c), P the shrunk shared precision (Lee et al. 2018).
- Energy: -logsumexp(logits); higher means less like the training data (Liu et al. 2020).
"""

from __future__ import annotations

import os

import numpy as np

from lungedge.runtime.errors import BundleError
from lungedge.runtime.quality import Finding

SCORES = ("mahalanobis", "energy")
# What a result says when its bundle's thresholds were calibrated at a pooled acceptance only.
NO_SOURCE_FLOOR = ("thresholds calibrated at a pooled validation acceptance only: no minimum acceptance per "
                   "source (refit with python -m lungedge.compress.quality ood)")
# Shrinkage of the shared covariance towards its scaled identity (features outnumber images in small packs).
SHRINKAGE = 0.1


def energy(logits):
    """Energy score per row: -logsumexp(logits) (float64)."""
    z = np.asarray(logits, np.float64).reshape(len(logits), -1)
    m = z.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def fit_gaussians(features, labels, n_classes, shrinkage=SHRINKAGE):
    """(means (C, D), precision (D, D)) of class-conditional Gaussians with one shared, shrunk covariance."""
    f = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y):
        raise ValueError(f"features must be (N, D) with one label each, got {f.shape} and {y.shape}")
    means = np.zeros((n_classes, f.shape[1]))
    centred = []
    for c in range(n_classes):
        members = f[y == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training features")
        means[c] = members.mean(axis=0)
        centred.append(members - means[c])
    centred = np.concatenate(centred)
    cov = centred.T @ centred / max(1, len(centred) - 1)
    scale = np.trace(cov) / cov.shape[0] if cov.shape[0] else 1.0
    cov = (1.0 - shrinkage) * cov + shrinkage * max(scale, 1e-12) * np.eye(cov.shape[0])
    return means, np.linalg.inv(cov)


def mahalanobis(features, means, precision):
    """Min over classes of the squared Mahalanobis distance, per row (float64)."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    best = None
    for mu in means:
        d = f - mu
        dist = np.einsum("nd,de,ne->n", d, precision, d)
        best = dist if best is None else np.minimum(best, dist)
    return best


def calibrate(val_scores, acceptance):
    """Threshold accepting ``acceptance`` of the validation scores (scores above it are refused)."""
    s = np.sort(np.asarray(val_scores, np.float64).ravel())
    if s.size == 0:
        raise ValueError("no validation scores to calibrate on")
    if not 0.0 < acceptance <= 1.0:
        raise ValueError(f"acceptance must be in (0, 1], got {acceptance}")
    # The smallest score that keeps at least ``acceptance`` of the validation images at or below it.
    return float(s[max(0, int(np.ceil(acceptance * s.size - 1e-9)) - 1)])


def group_acceptance(scores, thresholds, groups):
    """{group: (accepted, n)} of the images whose every score is at or below its threshold."""
    ok = np.ones(len(groups), bool)
    for name, limit in thresholds.items():
        ok &= np.asarray(scores[name], np.float64) <= limit
    out = {}
    for g in sorted(set(groups)):
        members = np.asarray([x == g for x in groups])
        out[g] = (int(ok[members].sum()), int(members.sum()))
    return out


def calibrate_per_group(scores, groups, acceptance, min_group_acceptance):
    """Thresholds of several scores (``{name: (N,)}``, higher is worse) that accept at least
    ``min_group_acceptance`` of every group (source) of the validation images, all scores together.

    Rule ``pooled_then_relax``: each score starts at its pooled ``acceptance`` quantile (``calibrate``), then
    ``relax_per_group`` lets in refused images until every group meets the floor. Returns (thresholds,
    {group: (accepted, n)}).
    """
    start = {k: calibrate(v, acceptance) for k, v in scores.items()}
    return relax_per_group(scores, groups, start, min_group_acceptance)


def relax_per_group(scores, groups, thresholds, min_group_acceptance):
    """Raise ``thresholds`` until every group accepts at least ``min_group_acceptance`` of its images.

    An image is accepted when each of its scores is at or below that score's threshold. While a group is short
    of its floor, the refused image of the worst group (lowest acceptance, then name) that costs least is let
    in, raising each threshold to that image's value. Cost: the rise of the pooled quantile level of every
    threshold together (the fewest other images newly let in); ties go to the first image. Returns
    (thresholds, {group: (accepted, n)}).
    """
    scores = {k: np.asarray(v, np.float64).ravel() for k, v in scores.items()}
    groups = [str(g) for g in groups]
    if set(scores) != set(thresholds):
        raise ValueError(f"scores {sorted(scores)} and thresholds {sorted(thresholds)} differ")
    if any(len(v) != len(groups) for v in scores.values()):
        raise ValueError("every score needs one value per image, and every image a group")
    if not 0.0 <= min_group_acceptance <= 1.0:
        raise ValueError(f"min_group_acceptance must be in [0, 1], got {min_group_acceptance}")
    thresholds = {k: float(v) for k, v in thresholds.items()}
    sorted_scores = {k: np.sort(v) for k, v in scores.items()}
    n = len(groups)

    def level(name, value):  # pooled fraction of the scores at or below ``value``
        return np.searchsorted(sorted_scores[name], value, side="right") / n

    while True:
        counts = group_acceptance(scores, thresholds, groups)
        short = [(a / m, g) for g, (a, m) in counts.items() if a < np.ceil(min_group_acceptance * m - 1e-9)]
        if not short:
            return thresholds, counts
        worst = min(short)[1]
        best, best_cost = None, None
        for i in (i for i, g in enumerate(groups) if g == worst):
            if all(scores[k][i] <= t for k, t in thresholds.items()):
                continue
            cost = sum(level(k, max(t, scores[k][i])) - level(k, t) for k, t in thresholds.items())
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = i, cost
        thresholds = {k: max(t, float(scores[k][best])) for k, t in thresholds.items()}


class OodScorer:
    """Scores of one artifact: ``score(features, logits) -> {"mahalanobis": (N,), "energy": (N,)}``."""

    def __init__(self, entry, means, precision):
        self.entry = entry
        self.feature_output = entry["feature_output"]
        self.thresholds = {k: float(v) for k, v in entry["thresholds"].items()}
        unknown = set(self.thresholds) - set(SCORES)
        if unknown:
            raise BundleError(f"quality.ood thresholds have unknown scores {sorted(unknown)}")
        self.means = np.asarray(means, np.float64)
        self.precision = np.asarray(precision, np.float64)
        if self.precision.shape != (self.means.shape[1],) * 2:
            raise BundleError(f"OOD statistics disagree: means {self.means.shape}, precision {self.precision.shape}")
        # P = L L^T, so (f - mu)^T P (f - mu) = |L^T f - L^T mu|^2: one matrix-vector product per input.
        try:
            self.whiten = np.linalg.cholesky(self.precision)
        except np.linalg.LinAlgError:
            raise BundleError("OOD precision matrix is not positive definite; rebuild the bundle") from None
        self.white_means = self.means @ self.whiten

    @classmethod
    def from_bundle(cls, bundle, artifact_key):
        """The scorer calibrated for ``artifact_key``, or None when the bundle has none for it."""
        entry = ((bundle.manifest.get("quality") or {}).get("ood") or {}).get(artifact_key)
        if entry is None:
            return None
        for field in ("path", "feature_output", "thresholds"):
            if field not in entry:
                raise BundleError(f"quality.ood[{artifact_key!r}] lacks {field!r}")
        path = os.path.join(bundle.root, entry["path"])
        try:
            with np.load(path) as stats:
                return cls(entry, stats["means"], stats["precision"])
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"cannot read OOD statistics {entry['path']}: {exc}") from None

    def score(self, features, logits):
        z = np.asarray(features, np.float64).reshape(len(features), -1) @ self.whiten
        dist = ((z[:, None, :] - self.white_means[None]) ** 2).sum(axis=2).min(axis=1)
        return {"mahalanobis": dist, "energy": energy(logits)}

    def findings(self, scores):
        """Refusals for the scores above their thresholds (one dict of floats for one input)."""
        out = []
        for name, limit in self.thresholds.items():
            value = float(scores[name])
            if value > limit:
                word = "feature distance" if name == "mahalanobis" else "energy score"
                out.append(Finding("model", f"ood_{name}", "refuse",
                                   f"out of distribution: {word} {value:.4g} above {limit:.4g}", value, limit))
        return out

    def describe(self):
        """What the result's quality block says about this check (and whether it holds a per-source floor)."""
        out = {"checked": True, "feature_output": self.feature_output,
               "acceptance": self.entry.get("acceptance"), "calibrated_on": self.entry.get("calibrated_on")}
        rule = self.entry.get("rule")
        if rule is None:
            out["per_source"] = {"checked": False, "note": NO_SOURCE_FLOOR}
        else:
            out["per_source"] = {"checked": True, "rule": rule,
                                 "min_source_acceptance": self.entry.get("min_source_acceptance")}
        return out


def area_findings(areas, bands):
    """Warnings for segmented areas (fractions of the image) outside their plausible [low, high] band."""
    out = []
    for label, band in (bands or {}).items():
        if label not in areas:
            continue
        low, high = float(band[0]), float(band[1])
        value = float(areas[label]["fraction"])
        if value < low or value > high:
            limit = low if value < low else high
            out.append(Finding("model", "implausible_area", "warn",
                               f"predicted {label} area {value:.3g} of the image is outside the plausible "
                               f"band {low:g}-{high:g}", value, limit))
    return out
