"""Paired bootstrap intervals and the non-inferiority verdict of lungedge.metrics.bootstrap."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungedge import metrics as M
from lungedge.metrics import bootstrap as S


def scored_cases(seed, n=120):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    a = y * 0.8 + rng.normal(size=n)
    b = y * 1.0 + rng.normal(size=n)
    return y, a, b


def mean_score(y, scores):
    return float(np.mean(scores))


def test_identical_models_give_exactly_zero():
    y, a, _ = scored_cases(0)
    groups = np.arange(len(y)) // 3
    result = S.paired_bootstrap(M.roc_auc, y, a, a.copy(), groups=groups, n_boot=300)
    assert (result["delta"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert result["n_boot"] == 300 and result["n_groups"] == 40
    same = S.paired_bootstrap_mean(a, a.copy(), groups=groups, n_boot=300)
    assert (same["delta"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


def test_constant_shift_gives_the_shift():
    rng = np.random.default_rng(1)
    dice_a = rng.uniform(0.5, 0.9, 80)
    result = S.paired_bootstrap_mean(dice_a, dice_a + 0.05, groups=np.arange(80) % 17, n_boot=500)
    for key in ("delta", "low", "high"):
        assert result[key] == pytest.approx(0.05, abs=1e-12)
    assert result["se"] == pytest.approx(0.0, abs=1e-12)


def test_interval_width_matches_the_analytic_standard_error():
    rng = np.random.default_rng(2)
    a = rng.normal(0.8, 0.1, 400)
    diff = rng.normal(0.02, 0.1, 400)
    se = diff.std() / math.sqrt(diff.size)  # the plug-in standard error the bootstrap estimates
    result = S.paired_bootstrap_mean(a, a + diff, n_boot=4000, seed=3)
    assert result["high"] - result["low"] == pytest.approx(2 * 1.959964 * se, rel=0.08)
    assert result["se"] == pytest.approx(se, rel=0.08)
    assert result["low"] < result["delta"] < result["high"]
    assert result["delta"] == pytest.approx(diff.mean())


def patient_cases(n_patients=25, images_each=8, seed=4):
    """Per-image deltas dominated by a per-patient effect: images of one patient are far from independent."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), images_each)
    patient_effect = rng.normal(0.0, 0.2, n_patients)
    a = rng.uniform(0.6, 0.9, groups.size)
    b = a + patient_effect[groups] + rng.normal(0.0, 0.01, groups.size)
    return a, b, groups


def test_patient_resampling_widens_the_interval_as_it_should():
    a, b, groups = patient_cases()
    by_image = S.paired_bootstrap_mean(a, b, n_boot=3000)
    by_patient = S.paired_bootstrap_mean(a, b, groups=groups, n_boot=3000)
    patient_means = np.array([np.mean((b - a)[groups == g]) for g in np.unique(groups)])
    se_patient = patient_means.std() / math.sqrt(patient_means.size)
    width = by_patient["high"] - by_patient["low"]
    assert width == pytest.approx(2 * 1.959964 * se_patient, rel=0.15)
    assert width > 2.5 * (by_image["high"] - by_image["low"])  # ~sqrt(8) narrower if images counted alone
    assert by_patient["n_groups"] == 25 and by_image["n_groups"] == 200


def test_resamples_keep_whole_patients_together():
    sizes = np.arange(1, 11)  # patient p has p + 1 images, so partial patients would show
    patient = np.repeat(np.arange(sizes.size), sizes)
    shuffled = np.random.default_rng(5).permutation(patient.size)
    patient = patient[shuffled]  # a patient's images need not be adjacent
    seen = []

    def check(y, scores):
        counts = np.bincount(y, minlength=sizes.size)
        if np.any(counts % sizes):
            raise AssertionError(f"a patient was split: counts {counts.tolist()}")
        seen.append(counts.sum())
        return float(scores.mean())

    scores = np.random.default_rng(6).random(patient.size)
    S.paired_bootstrap(check, patient, scores, scores[::-1].copy(), groups=patient, n_boot=200)
    assert len(seen) == 2 * 201 and len(set(seen)) > 10  # resampled sizes vary with the drawn patients


def test_generic_and_mean_bootstraps_draw_the_same_resamples():
    a, b, groups = patient_cases(n_patients=12, images_each=5, seed=7)
    generic = S.paired_bootstrap(mean_score, np.zeros(a.size), a, b, groups=groups, n_boot=400, seed=9)
    fast = S.paired_bootstrap_mean(a, b, groups=groups, n_boot=400, seed=9)
    for key in ("delta", "low", "high", "se"):
        assert generic[key] == pytest.approx(fast[key], abs=1e-12)
    other = S.paired_bootstrap_mean(a, b, groups=groups, n_boot=400, seed=10)
    assert other["low"] != fast["low"]


def test_undefined_resamples_are_skipped_and_counted():
    y = np.array([1] + [0] * 11)
    a = np.linspace(0.0, 1.0, 12)
    b = a[::-1].copy()
    result = S.paired_bootstrap(M.roc_auc, y, a, b, n_boot=1000)
    expected = 1000 * (11 / 12) ** 12  # resamples that miss the only positive
    assert abs(result["n_skipped"] - expected) < 4 * math.sqrt(expected)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_sklearn_metrics_skip_the_same_resamples():
    # older scikit-learn raised ValueError on one class, newer versions warn and return NaN: both are skipped
    y = np.array([1, 1] + [0] * 10)
    a = np.linspace(0.0, 1.0, 12)
    b = a[::-1].copy()
    ours = S.paired_bootstrap(M.roc_auc, y, a, b, n_boot=300)
    theirs = S.paired_bootstrap(roc_auc_score, y, a, b, n_boot=300)
    assert ours["n_skipped"] == theirs["n_skipped"] > 0
    assert (ours["low"], ours["high"]) == pytest.approx((theirs["low"], theirs["high"]))


def test_nan_metric_values_are_skipped_too():
    y, a, b = scored_cases(8, n=30)
    def nan_on_odd_sum(labels, scores):
        return float("nan") if labels.sum() % 2 else float(np.mean(scores))

    if y.sum() % 2:
        y = y.copy()
        y[np.flatnonzero(y == 0)[0]] = 1
    result = S.paired_bootstrap(nan_on_odd_sum, y, a, b, n_boot=400)
    assert 0 < result["n_skipped"] < 400


def test_errors_on_all_cases_propagate():
    y, a, b = scored_cases(9)
    with pytest.raises(M.UndefinedMetricError, match="only negative"):
        S.paired_bootstrap(M.roc_auc, np.zeros_like(y), a, b, n_boot=10)
    with pytest.raises(M.MetricError, match=r"a_scores \(119,\)"):
        S.paired_bootstrap(M.roc_auc, y, a[:-1], b, n_boot=10)
    with pytest.raises(M.MetricError, match=r"groups must have shape \(120,\)"):
        S.paired_bootstrap(M.roc_auc, y, a, b, groups=np.arange(10), n_boot=10)
    with pytest.raises(M.MetricError, match="images \\[3\\]"):
        S.paired_bootstrap_mean(a, np.where(np.arange(a.size) == 3, np.inf, b))
    with pytest.raises(M.MetricError, match=r"\(120,\) and \(119,\)"):
        S.paired_bootstrap_mean(a, b[:-1])
    with pytest.raises(M.MetricError, match="ci must lie"):
        S.paired_bootstrap_mean(a, b, ci=95)


def test_multiclass_macro_auc_through_the_generic_bootstrap():
    rng = np.random.default_rng(11)
    y = np.arange(90) % 3
    a = rng.normal(size=(90, 3)) + 0.5 * np.eye(3)[y]
    b = a + 0.5 * np.eye(3)[y]

    def macro_auc(labels, probs):
        return M.per_class_report(labels, probs, ["normal", "covid", "pneumonia"])["macro"]["auc"]

    result = S.paired_bootstrap(macro_auc, y, a, b, n_boot=200)
    assert 0 < result["low"] <= result["delta"] <= result["high"]


@pytest.mark.parametrize("interval, tolerance, higher_is_better, passed", [
    ({"delta": 0.010, "low": -0.030, "high": 0.050}, 0.02, True, False),  # good point, too wide: fail
    ({"delta": -0.005, "low": -0.015, "high": 0.004}, 0.02, True, True),  # worse point, bound inside: pass
    ((-0.02, 0.01), 0.02, True, True),  # bound exactly on the tolerance passes
    ((-0.1, 0.3), 0.5, False, True),  # lower is better (ASD in mm): the upper bound decides
    ((-0.1, 0.6), 0.5, False, False),
    ((float("nan"), 0.1), 0.5, True, False),
])
def test_verdict_uses_the_bound(interval, tolerance, higher_is_better, passed):
    result = S.verdict(interval, tolerance, higher_is_better)
    assert bool(result) is passed and result.passed is passed
    assert str(result).startswith("PASS" if passed else "FAIL")
    low, high = (interval["low"], interval["high"]) if isinstance(interval, dict) else interval
    assert result.bound == pytest.approx(low if higher_is_better else high, nan_ok=True)


def test_verdict_rejects_a_negative_tolerance():
    with pytest.raises(M.MetricError, match="tolerance"):
        S.verdict((0.0, 0.1), -0.01)


def test_segmentation_bootstrap_from_accumulators():
    rng = np.random.default_rng(12)
    baseline, student = M.SegmentationAccumulator(), M.SegmentationAccumulator()
    for _ in range(6):
        gt = np.zeros((32, 32), bool)
        r, c = rng.integers(4, 20, 2)
        gt[r:r + 8, c:c + 8] = True
        baseline.update(np.roll(gt, 1, axis=0), gt)
        student.update(np.roll(gt, 2, axis=0), gt)
    a, b = baseline.aggregate(), student.aggregate()
    dice = S.paired_bootstrap_mean(a["dice"]["per_image"], b["dice"]["per_image"], n_boot=200)
    assert dice["delta"] == pytest.approx(-0.125) and dice["low"] == pytest.approx(-0.125)
    assert not S.verdict(dice, tolerance=0.05)
    asd = S.paired_bootstrap_mean(a["asd"]["per_image"], b["asd"]["per_image"], n_boot=200)
    assert asd["delta"] > 0 and not S.verdict(asd, tolerance=0.1, higher_is_better=False)
