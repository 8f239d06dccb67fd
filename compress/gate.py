"""Accuracy gate: a compressed variant against its baseline on the VALIDATION split (same images, same run).

Each variant's operating threshold is re-fitted on validation by the recipe's rule (never on test), then the
drops ``baseline - variant`` of AUC, sensitivity and specificity (classification) or mean DICE (segmentation)
are compared with the tolerances. A verdict carries every number it was decided on, so a bundle's manifest and
a failure report can show why a variant passed or was refused. Which nodes to keep in float when INT8 fails
is ``compress.sensitivity``'s job.

Threshold rules: ``youden``, ``f2``, ``sensitivity>=x`` (``lungedge.metrics.fit_threshold``) and
``match_baseline_sensitivity``: the highest threshold whose validation sensitivity reaches the baseline's,
so the variant pays for compression in specificity, never silently in missed cases.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungedge import metrics as M
from lungedge.compress.errors import ConfigError, config_from_dict
from lungedge.models.evaluate import evaluate
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.predictor import sigmoid, softmax

MATCH_BASELINE = "match_baseline_sensitivity"
FIXED_RULES = ("youden", "f2", MATCH_BASELINE)


@dataclass(frozen=True)
class GateConfig:
    """Largest tolerated drops (baseline minus variant, on validation); None leaves a metric unchecked."""

    auc_drop: Optional[float] = 0.02
    sensitivity_drop: Optional[float] = 0.05
    specificity_drop: Optional[float] = 0.05
    macro_auc_drop: Optional[float] = None  # multi-class tasks: one-vs-rest macro AUC
    dice_drop: Optional[float] = 0.02
    threshold_rule: str = "youden"

    def __post_init__(self):
        for name in ("auc_drop", "sensitivity_drop", "specificity_drop", "macro_auc_drop", "dice_drop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"gate {name} must be a number or null, got {value!r}")
        rule = self.threshold_rule
        if rule not in FIXED_RULES and not (isinstance(rule, str) and rule.startswith("sensitivity>=")):
            raise ConfigError(f"threshold_rule {rule!r} is not one of {FIXED_RULES} or 'sensitivity>=x'")

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateVerdict:
    """Outcome of one gate: ``passed`` plus one check per metric with baseline, variant, drop and tolerance."""

    variant: str
    passed: bool
    checks: tuple
    threshold: float
    metrics: dict

    def to_dict(self):
        return {"variant": self.variant, "passed": self.passed, "threshold": self.threshold,
                "checks": [dict(c) for c in self.checks]}

    def failed_checks(self):
        return [c for c in self.checks if not c["passed"]]

    def summary(self):
        """One line: PASS/FAIL and each metric as baseline -> variant (drop / tolerance)."""
        parts = [f"{c['metric']} {c['baseline']:.4f}->{c['variant']:.4f} (drop {c['drop']:+.4f}"
                 + (f" / tol {c['tolerance']:.4f})" if c["tolerance"] is not None else ", unchecked)")
                 for c in self.checks]
        return f"{'PASS' if self.passed else 'FAIL'} {self.variant}: " + "; ".join(parts)


def probabilities(logits):
    """Softmax over classes for (N, C) logits; foreground sigmoid (N, H, W) for (N, 1, H, W) segmentation."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 2:
        return softmax(logits, axis=1).astype(np.float32)
    if logits.ndim == 4:
        return sigmoid(logits[:, 0]).astype(np.float32)
    raise ValueError(f"expected (N, C) or (N, 1, H, W) logits, got shape {logits.shape}")


def onnx_logits(path, images, batch_size=32, threads=None):
    """Raw outputs of an ONNX model over (N, 1, H, W) images on the runtime's ONNX Runtime backend (CPU)."""
    from lungedge.runtime.backends import create_backend

    with create_backend("onnxruntime", path, threads=threads) as backend:
        return np.concatenate([backend.run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def fit_threshold(spec, outputs, targets, rule, baseline=None):
    """Operating threshold fitted on validation by ``rule`` (segmentation keeps 0.5)."""
    if spec.kind != TaskKind.CLASSIFICATION:
        return 0.5
    pos = spec.labels.index(spec.positive_label)
    y = (np.asarray(targets) == pos).astype(int)
    if rule == MATCH_BASELINE:
        if baseline is None:  # the baseline itself: its own Youden point defines the sensitivity to keep
            rule = "youden"
        else:
            rule = f"sensitivity>={min(1.0, float(baseline['sensitivity'])):.12f}"
    return float(M.fit_threshold(y, np.asarray(outputs)[:, pos], rule=rule))


def measure(spec, outputs, targets, rule="youden", baseline=None):
    """Validation metrics (``models.evaluate.evaluate``) at the threshold fitted by ``rule``."""
    threshold = fit_threshold(spec, outputs, targets, rule, baseline)
    return evaluate(spec, outputs, targets, threshold=threshold)


def _check(metric, baseline, variant, tolerance):
    drop = float(baseline[metric]) - float(variant[metric])
    ok = tolerance is None or drop <= tolerance + 1e-9
    return {"metric": metric, "baseline": float(baseline[metric]), "variant": float(variant[metric]),
            "drop": drop, "tolerance": tolerance, "passed": bool(ok)}


def judge(kind, baseline, variant, config, name="variant"):
    """Compare two validation metric dicts (``measure``) under ``config``; returns a GateVerdict."""
    if kind == TaskKind.CLASSIFICATION:
        checks = [_check("auc", baseline, variant, config.auc_drop),
                  _check("sensitivity", baseline, variant, config.sensitivity_drop),
                  _check("specificity", baseline, variant, config.specificity_drop)]
        if "macro_auc" in baseline and "macro_auc" in variant:
            checks.append(_check("macro_auc", baseline, variant, config.macro_auc_drop))
    else:
        checks = [_check("dice", baseline, variant, config.dice_drop)]
    passed = all(c["passed"] for c in checks)
    return GateVerdict(variant=name, passed=passed, checks=tuple(checks), threshold=float(variant["threshold"]),
                       metrics=variant)


def gate(spec, baseline_val, outputs, targets, config, name="variant"):
    """Measure a variant's validation ``outputs`` (probabilities) and judge it against ``baseline_val``."""
    variant = measure(spec, outputs, targets, config.threshold_rule, baseline=baseline_val)
    return judge(spec.kind, baseline_val, variant, config, name)
