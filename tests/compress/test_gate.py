"""Accuracy gate: thresholds re-fitted on validation per variant, drops against tolerances, verdict numbers."""

import numpy as np
import pytest

from lungedge.compress.gate import GateConfig, fit_threshold, gate, judge, measure, probabilities
from lungedge.runtime.tasks import task

CLS = task("ct-cls")  # binary: covid / noncovid, positive covid (index 0)
SEG = task("xray-seg")


def scores_for(y, separation, seed):
    """Two-class probabilities whose covid column separates the classes by ``separation``."""
    rng = np.random.default_rng(seed)
    covid = np.clip(0.5 + separation * (y == 0) - separation * (y == 1) + rng.normal(0, 0.2, y.size), 0, 1)
    return np.stack([covid, 1 - covid], 1)


@pytest.fixture
def labels():
    return np.array([0] * 40 + [1] * 60)


def test_identical_variant_passes_with_zero_drops(labels):
    out = scores_for(labels, 0.25, 0)
    cfg = GateConfig()
    base = measure(CLS, out, labels, cfg.threshold_rule)
    verdict = gate(CLS, base, out.copy(), labels, cfg, name="onnx-fp32")
    assert verdict.passed
    assert {c["metric"] for c in verdict.checks} == {"auc", "sensitivity", "specificity"}
    assert all(c["drop"] == pytest.approx(0.0) for c in verdict.checks)
    assert verdict.to_dict()["variant"] == "onnx-fp32" and "PASS onnx-fp32" in verdict.summary()


def test_worse_variant_fails_and_names_the_metric(labels):
    cfg = GateConfig(auc_drop=0.02, sensitivity_drop=None, specificity_drop=None)
    base = measure(CLS, scores_for(labels, 0.25, 0), labels)
    verdict = gate(CLS, base, scores_for(labels, 0.05, 0), labels, cfg)
    assert not verdict.passed
    failed = verdict.failed_checks()
    assert [c["metric"] for c in failed] == ["auc"] and failed[0]["drop"] > 0.02
    # Unchecked metrics are still reported, with tolerance None, and never fail.
    assert all(c["passed"] for c in verdict.checks if c["tolerance"] is None)
    assert "FAIL" in verdict.summary() and "unchecked" in verdict.summary()


def test_better_variant_has_negative_drops(labels):
    base = measure(CLS, scores_for(labels, 0.05, 1), labels)
    verdict = gate(CLS, base, scores_for(labels, 0.3, 1), labels, GateConfig(auc_drop=0.0))
    assert verdict.passed and verdict.checks[0]["drop"] < 0


def test_threshold_is_refitted_per_variant_on_validation(labels):
    out = scores_for(labels, 0.25, 2)
    base = measure(CLS, out, labels, "youden")
    shifted = np.stack([out[:, 0] * 0.5, 1 - out[:, 0] * 0.5], 1)  # same ranking, half the scores
    verdict = gate(CLS, base, shifted, labels, GateConfig(auc_drop=0.0, sensitivity_drop=0.0, specificity_drop=0.0))
    assert verdict.passed, verdict.summary()
    assert verdict.threshold == pytest.approx(base["threshold"] * 0.5)


def test_match_baseline_sensitivity_rule_keeps_sensitivity(labels):
    base = measure(CLS, scores_for(labels, 0.25, 3), labels, "match_baseline_sensitivity")
    variant_out = scores_for(labels, 0.2, 4)
    verdict = gate(CLS, base, variant_out, labels, GateConfig(threshold_rule="match_baseline_sensitivity",
                                                              specificity_drop=None, auc_drop=None))
    sens = next(c for c in verdict.checks if c["metric"] == "sensitivity")
    assert sens["variant"] >= sens["baseline"] and sens["passed"]
    assert fit_threshold(CLS, variant_out, labels, "match_baseline_sensitivity", base) == verdict.threshold


def test_multiclass_reports_macro_auc():
    spec = task("xray-cls")
    y = np.array([0, 1, 2] * 20)
    rng = np.random.default_rng(0)
    logits = np.eye(3)[y] * 2 + rng.normal(0, 1, (60, 3))
    probs = probabilities(logits)
    assert np.allclose(probs.sum(1), 1)
    base = measure(spec, probs, y)
    verdict = judge(spec.kind, base, base, GateConfig(macro_auc_drop=0.01))
    assert "macro_auc" in {c["metric"] for c in verdict.checks} and verdict.passed


def test_segmentation_gate_on_dice():
    rng = np.random.default_rng(0)
    masks = (rng.random((4, 16, 16)) > 0.5).astype(np.uint8)
    masks[0, :2] = 255  # ignore label counts in neither
    good = np.where(masks == 1, 0.9, 0.1).astype(np.float32)
    noisy = np.clip(good + rng.normal(0, 0.5, good.shape), 0, 1).astype(np.float32)
    base = measure(SEG, good, masks)
    assert base["dice"] == pytest.approx(1.0) and base["threshold"] == 0.5
    assert gate(SEG, base, good, masks, GateConfig(dice_drop=0.0)).passed
    verdict = gate(SEG, base, noisy, masks, GateConfig(dice_drop=0.02))
    assert not verdict.passed and verdict.checks[0]["metric"] == "dice"
    logits = np.log(good / (1 - good))[:, None]
    assert np.allclose(probabilities(logits), good, atol=1e-5)


def test_gate_config_contract():
    assert GateConfig.from_dict({"auc_drop": 0.01, "threshold_rule": "sensitivity>=0.9"}).auc_drop == 0.01
    with pytest.raises(ValueError, match="unknown GateConfig keys"):
        GateConfig.from_dict({"auc": 0.01})
    with pytest.raises(ValueError, match="threshold_rule"):
        GateConfig(threshold_rule="best")
    with pytest.raises(ValueError):
        GateConfig(dice_drop=float("nan"))
