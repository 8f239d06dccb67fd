"""lungedge.metrics against scikit-learn (classification) and scipy.ndimage (surfaces)."""

import math
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn import metrics as sk

from lungedge import metrics as M

SEEDS = range(30)


def binary_case(seed):
    """Random labelled scores: sizes from 2 to 300, prevalence from 2% to 98%, many ties in most cases."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    prevalence = rng.uniform(0.02, 0.98)
    y = (rng.random(n) < prevalence).astype(int)
    y[rng.choice(n, 2, replace=False)] = [0, 1]  # both classes present
    signal = rng.uniform(0.0, 2.0)
    scores = 1 / (1 + np.exp(-(signal * (y - 0.5) + rng.normal(size=n))))
    style = seed % 3
    if style == 0:
        scores = np.round(scores, 1)  # heavy ties
    elif style == 1:
        scores = rng.integers(0, 5, n).astype(float)  # integer grades, ties across classes
    return y, scores


# ------------------------------------------------------------------ classification vs scikit-learn


@pytest.mark.parametrize("seed", SEEDS)
def test_threshold_metrics_match_sklearn(seed):
    y, scores = binary_case(seed)
    threshold = float(np.quantile(scores, np.random.default_rng(seed).uniform(0, 1)))
    pred = (scores >= threshold).astype(int)
    c = M.confusion(y, pred)
    np.testing.assert_array_equal(c.as_matrix(), sk.confusion_matrix(y, pred, labels=[0, 1]))
    assert M.sensitivity(y, pred) == pytest.approx(sk.recall_score(y, pred, zero_division=0))
    assert M.recall(y, pred) == M.sensitivity(y, pred)
    assert M.specificity(y, pred) == pytest.approx(sk.recall_score(1 - y, 1 - pred, zero_division=0))
    assert M.precision(y, pred) == pytest.approx(sk.precision_score(y, pred, zero_division=0))
    assert M.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
    assert M.f1(y, pred) == pytest.approx(sk.f1_score(y, pred, zero_division=0))
    assert M.f2(y, pred) == pytest.approx(sk.fbeta_score(y, pred, beta=2, zero_division=0))
    assert M.f_beta(y, pred, 0.5) == pytest.approx(sk.fbeta_score(y, pred, beta=0.5, zero_division=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_curve_and_auc_match_sklearn(seed):
    y, scores = binary_case(seed)
    for drop in (False, True):
        ours = M.roc_curve(y, scores, drop_intermediate=drop)
        theirs = sk.roc_curve(y, scores, drop_intermediate=drop)
        for mine, ref in zip(ours, theirs):
            np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12)
    assert M.roc_auc(y, scores) == pytest.approx(sk.roc_auc_score(y, scores), abs=1e-12)


def test_auc_counts_ties_as_half():
    assert M.roc_auc([0, 1], [0.3, 0.3]) == 0.5
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([True, False], [1, 0]) == 1.0  # bool labels, integer scores


@pytest.mark.parametrize("y_true, y_pred, field, value", [
    ([0, 1, 0, 1], [0, 0, 0, 0], "precision", 0.0),  # no positive predictions
    ([0, 0, 0, 0], [1, 0, 1, 0], "sensitivity", 0.0),  # no positives
    ([1, 1, 1, 1], [1, 0, 1, 0], "specificity", 0.0),  # no negatives
    ([0, 0, 0, 0], [0, 0, 0, 0], "f1", 0.0),  # TP + FP + FN == 0
    ([0, 0, 0, 0], [0, 0, 0, 0], "f2", 0.0),
])
def test_zero_division_is_zero_like_sklearn(y_true, y_pred, field, value):
    assert getattr(M, field)(y_true, y_pred) == value
    reference = {"precision": sk.precision_score, "sensitivity": sk.recall_score, "f1": sk.f1_score}
    if field in reference:
        assert reference[field](y_true, y_pred, zero_division=0) == value


@pytest.mark.parametrize("fn", [M.roc_auc, M.roc_curve, lambda y, s: M.fit_threshold(y, s, "youden")])
@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0]])
def test_one_class_has_no_auc(fn, y):
    with pytest.raises(M.UndefinedMetricError, match="only (positive|negative) cases"):
        fn(y, [0.2, 0.5, 0.9])
    assert issubclass(M.UndefinedMetricError, ValueError)


@pytest.mark.parametrize("call, pattern", [
    (lambda: M.confusion([0, 1, 1, 0, 1], [0, 1, 1, 0]), r"y_true has shape \(5,\) but y_pred has shape \(4,\)"),
    (lambda: M.roc_auc([0, 1, 1], [[0.1], [0.2], [0.3]]), r"scores must be 1-D.*\(3, 1\)"),
    (lambda: M.roc_auc([0, 1, 2], [0.1, 0.2, 0.3]), r"0/1 values.*\[2\]"),
    (lambda: M.roc_auc([0, 1, 1], [0.1, np.nan, 0.3]), r"NaN or inf"),
    (lambda: M.sensitivity([], []), r"empty.*\(0,\)"),
    (lambda: M.f_beta([0, 1], [0, 1], 0), r"beta"),
    (lambda: M.per_class_report([0, 1, 2], np.ones((3, 2)), ["a", "b", "c"]), r"shape \(N, 3\).*\(3, 2\)"),
    (lambda: M.per_class_report([0, 1], np.ones((3, 2)), ["a", "b"]), r"\(2,\).*\(3, 2\)"),
    (lambda: M.per_class_report([0, 3, 1], np.ones((3, 2)), ["a", "b"]), r"integers in \[0, 2\)"),
    (lambda: M.fit_threshold([0, 1], [0.1, 0.9], "sensitivity>=1.5"), r"\(0, 1\]"),
    (lambda: M.fit_threshold([0, 1], [0.1, 0.9], "max_accuracy"), r"unknown threshold rule"),
])
def test_classification_errors_name_the_problem(call, pattern):
    with pytest.raises(M.MetricError, match=pattern):
        call()


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(12))
def test_per_class_report_matches_sklearn_one_vs_rest(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    n = int(rng.integers(3 * k, 250))
    y = np.r_[np.arange(k), rng.choice(k, n - k, p=rng.dirichlet(np.ones(k)))]
    logits = rng.normal(size=(n, k)) + rng.uniform(0, 2) * np.eye(k)[y]
    probs = np.round(softmax(logits), 2) if seed % 2 else softmax(logits)  # rounding makes ties
    labels = ["class%d" % i for i in range(k)]
    report = M.per_class_report(y, probs, labels)

    pred = probs.argmax(axis=1)
    prec, rec, f1, support = sk.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    f2 = sk.fbeta_score(y, pred, beta=2, labels=range(k), average=None, zero_division=0)
    mcm = sk.multilabel_confusion_matrix(y, pred, labels=range(k))
    spec = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    auc = [sk.roc_auc_score(y == i, probs[:, i]) for i in range(k)]
    for i, name in enumerate(labels):
        row = report["classes"][name]
        assert row["sensitivity"] == pytest.approx(rec[i])
        assert row["precision"] == pytest.approx(prec[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["f2"] == pytest.approx(f2[i])
        assert row["specificity"] == pytest.approx(spec[i])
        assert row["auc"] == pytest.approx(auc[i], abs=1e-12)
        assert row["support"] == support[i]
    assert report["macro"]["auc"] == pytest.approx(np.mean(auc), abs=1e-12)
    assert report["macro"]["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
    assert report["macro"]["sensitivity"] == pytest.approx(sk.recall_score(y, pred, average="macro"))
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    if k > 2 and seed % 2 == 0:  # sklearn's multiclass AUC wants rows summing to 1
        assert report["macro"]["auc"] == pytest.approx(
            sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)


def test_per_class_report_rejects_an_absent_class():
    probs = softmax(np.random.default_rng(0).normal(size=(6, 3)))
    with pytest.raises(M.UndefinedMetricError, match="'pneumonia' \\(index 2\\).*0 of 6"):
        M.per_class_report([0, 1, 0, 1, 0, 1], probs, ["normal", "covid", "pneumonia"])


@pytest.mark.parametrize("seed", range(10))
def test_classification_report_matches_sklearn(seed):
    y, scores = binary_case(seed)
    report = M.classification_report(y, scores, threshold=0.5)
    pred = scores >= 0.5
    assert report["auc"] == pytest.approx(sk.roc_auc_score(y, scores))
    assert report["f2"] == pytest.approx(sk.fbeta_score(y, pred, beta=2, zero_division=0))
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[False, True]).ravel()
    assert (report["tp"], report["fp"], report["fn"], report["tn"]) == (tp, fp, fn, tn)
    assert report["n"] == len(y) and report["n_positive"] == int(y.sum())


def brute_force_threshold(y, scores, objective):
    """The highest observed score maximising objective(tp, fp, fn, tn) over predictions score >= t."""
    candidates = np.unique(scores)[::-1]
    values = []
    for t in candidates:
        pred = scores >= t
        values.append(objective(np.sum(pred & (y == 1)), np.sum(pred & (y == 0)),
                                np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))))
    return candidates[int(np.argmax(values))]


def youden(tp, fp, fn, tn):
    return tp / (tp + fn) + tn / (tn + fp) - 1


def f2_score(tp, fp, fn, tn):
    return 5 * tp / (5 * tp + 4 * fn + fp)


@pytest.mark.parametrize("seed", range(15))
def test_fit_threshold_rules(seed):
    y, scores = binary_case(seed)
    assert M.fit_threshold(y, scores, "youden") == brute_force_threshold(y, scores, youden)
    assert M.fit_threshold(y, scores, "f2") == brute_force_threshold(y, scores, f2_score)
    # the brute-force F2 agrees with scikit-learn's at the chosen threshold
    best = M.fit_threshold(y, scores, "f2")
    assert M.f2(y, scores >= best) == pytest.approx(sk.fbeta_score(y, scores >= best, beta=2))

    t = M.fit_threshold(y, scores, "sensitivity>=0.9")
    assert sk.recall_score(y, scores >= t) >= 0.9
    higher = scores[scores > t]
    if higher.size:  # the next observed score up would miss the target
        assert sk.recall_score(y, scores >= higher.min()) < 0.9


def test_fit_threshold_sensitivity_rule_exact_target():
    y = np.array([1] * 10 + [0] * 10)
    scores = np.r_[np.linspace(0.95, 0.5, 10), np.linspace(0.45, 0.0, 10)]
    assert M.fit_threshold(y, scores, "sensitivity>=0.9") == pytest.approx(0.55)
    assert M.fit_threshold(y, scores, "sensitivity >= 1") == pytest.approx(0.5)
    assert M.fit_threshold(y, scores, "youden") == pytest.approx(0.5)


@pytest.mark.parametrize("k,n", [(0, 1), (27, 27), (26, 27), (82, 86), (5, 10), (0, 13), (259, 259), (1, 1000)])
@pytest.mark.parametrize("ci", [0.9, 0.95, 0.99])
def test_proportion_interval_matches_scipy_wilson(k, n, ci):
    from scipy.stats import binomtest

    expected = binomtest(k, n).proportion_ci(ci, method="wilson")
    low, high = M.proportion_interval(k, n, ci)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_rate_verdict_judges_the_interval_bound():
    # 27 of 27 laterals refused: the point estimate reaches 95 %, the Wilson bound (0.875) does not.
    assert M.proportion_interval(27, 27) == pytest.approx((0.87544497, 1.0))
    assert M.rate_verdict(27, 27, 0.95) == "unproven"
    assert M.rate_verdict(26, 27, 0.97) == "missed"
    assert M.rate_verdict(300, 300, 0.97) == "met"  # bound 0.9874
    assert M.rate_verdict(259, 259, 0.99) == "unproven"  # bound 0.9854
    for bad in [(3, 2), (-1, 5), (0, 0), (1.5, 3)]:
        with pytest.raises(M.MetricError, match="successes"):
            M.proportion_interval(*bad)
    with pytest.raises(M.MetricError, match="ci must"):
        M.proportion_interval(1, 2, 1.0)


def test_classification_accumulator_equals_one_shot_report():
    y, scores = binary_case(3)
    acc = M.ClassificationAccumulator(threshold=0.4)
    for part in np.array_split(np.arange(len(y)), 4):
        acc.update(y[part], scores[part])
    result = acc.aggregate()
    expected = M.classification_report(y, scores, 0.4)
    assert {k: result[k] for k in expected} == expected
    assert result["per_image"]["scores"] == scores.tolist() and len(acc) == len(y)

    probs = softmax(np.random.default_rng(1).normal(size=(30, 3)))
    labels_idx = np.arange(30) % 3
    multi = M.ClassificationAccumulator(labels=["a", "b", "c"])
    multi.update(labels_idx[:10], probs[:10])
    multi.update(labels_idx[10:], probs[10:])
    assert multi.aggregate()["macro"] == M.per_class_report(labels_idx, probs, ["a", "b", "c"])["macro"]
    with pytest.raises(M.MetricError, match=r"shape \(4, 3\).*\(4, 2\)"):
        multi.update([0, 1, 2, 0], np.ones((4, 2)))
    with pytest.raises(M.MetricError, match="nothing to aggregate"):
        M.ClassificationAccumulator().aggregate()


# ------------------------------------------------------------------ segmentation vs scipy.ndimage


def blob_mask(rng, shape, fill):
    """Smooth random blobs covering about ``fill`` of the image, with holes and several components."""
    field = ndi.gaussian_filter(rng.random(shape), sigma=rng.uniform(1.0, 4.0))
    return field > np.quantile(field, 1.0 - fill)


def reference_surface_distances(pred, gt, spacing):
    """medpy's recipe: surface = mask minus its cross erosion (border = background), then the EDT."""
    cross = ndi.generate_binary_structure(pred.ndim, 1)
    surf_p = pred & ~ndi.binary_erosion(pred, cross, border_value=0)
    surf_g = gt & ~ndi.binary_erosion(gt, cross, border_value=0)
    to_gt = ndi.distance_transform_edt(~surf_g, sampling=spacing)[surf_p]
    to_pred = ndi.distance_transform_edt(~surf_p, sampling=spacing)[surf_g]
    return surf_p, to_gt, to_pred


def mask_case(seed):
    rng = np.random.default_rng(seed)
    if seed % 2:
        shape = tuple(int(v) for v in rng.integers(4, 24, 3))
    else:
        shape = tuple(int(v) for v in rng.integers(8, 90, 2))
    spacing = tuple(float(v) for v in rng.uniform(0.3, 5.0, len(shape)))
    pred = blob_mask(rng, shape, rng.uniform(0.05, 0.6))
    gt = blob_mask(rng, shape, rng.uniform(0.05, 0.6)) if seed % 5 else pred ^ (rng.random(shape) < 0.05)
    return pred, gt, spacing


@pytest.mark.parametrize("seed", range(40))
def test_surface_distances_match_scipy_edt(seed):
    pred, gt, spacing = mask_case(seed)
    surf_p, to_gt, to_pred = reference_surface_distances(pred, gt, spacing)
    np.testing.assert_array_equal(M.mask_surface(pred), surf_p)
    ours_to_gt, ours_to_pred = M.surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(ours_to_gt, to_gt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours_to_pred, to_pred, rtol=1e-12, atol=1e-12)
    both = np.concatenate([to_gt, to_pred])
    assert M.asd(pred, gt, spacing) == pytest.approx(both.mean(), rel=1e-12)
    assert M.msd(pred, gt, spacing) == pytest.approx(both.max(), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_overlap_metrics_match_sklearn(seed):
    pred, gt, _ = mask_case(seed)
    flat_p, flat_g = pred.ravel(), gt.ravel()
    assert M.dice(pred, gt) == pytest.approx(sk.f1_score(flat_g, flat_p))  # Dice is F1 over voxels
    assert M.iou(pred, gt) == pytest.approx(sk.jaccard_score(flat_g, flat_p))
    assert M.voe(pred, gt) == pytest.approx(1 - sk.jaccard_score(flat_g, flat_p))
    assert M.rvd(pred, gt) == pytest.approx((pred.sum() - gt.sum()) / gt.sum())
    report = M.segmentation_report(pred, gt, (1.0,) * pred.ndim)
    assert report["asd"] == pytest.approx(M.asd(pred, gt)) and report["dice"] == M.dice(pred, gt)


def test_rvd_sign_and_anisotropic_distance():
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True
    over = gt.copy()
    over[6:8, 2:6] = True
    assert M.rvd(over, gt) == pytest.approx(0.5)  # over-segmentation is positive
    assert M.rvd(gt, over) == pytest.approx(-1 / 3)
    shifted = np.roll(gt, 3, axis=1)  # three columns right, 2 mm per column
    assert M.msd(shifted, gt, spacing=(0.5, 2.0)) == pytest.approx(6.0)


def empty_cases():
    blob = np.zeros((8, 12, 10), bool)
    blob[2:5, 3:8, 4:9] = True
    empty = np.zeros_like(blob)
    penalty = math.sqrt((8 * 2.0) ** 2 + (12 * 0.5) ** 2 + (10 * 0.5) ** 2)
    return [
        ("both empty", empty, empty, {"dice": 1.0, "iou": 1.0, "voe": 0.0, "rvd": 0.0, "asd": 0.0, "msd": 0.0}),
        ("gt empty", blob, empty, {"dice": 0.0, "iou": 0.0, "voe": 1.0, "rvd": math.inf, "asd": penalty,
                                   "msd": penalty}),
        ("pred empty", empty, blob, {"dice": 0.0, "iou": 0.0, "voe": 1.0, "rvd": -1.0, "asd": penalty,
                                     "msd": penalty}),
    ]


@pytest.mark.parametrize("name, pred, gt, expected", empty_cases(), ids=[c[0] for c in empty_cases()])
def test_empty_mask_conventions(name, pred, gt, expected):
    spacing = (2.0, 0.5, 0.5)
    report = M.segmentation_report(pred, gt, spacing)
    assert report == pytest.approx(expected)
    assert not any(math.isnan(v) for v in report.values())
    for metric, value in expected.items():
        fn = getattr(M, metric)
        result = fn(pred, gt, spacing) if metric in ("asd", "msd") else fn(pred, gt)
        assert result == pytest.approx(value)


def test_one_empty_mask_surface_distances_are_the_penalty():
    blob = np.zeros((20, 30), bool)
    blob[5:9, 5:9] = True
    to_gt, to_pred = M.surface_distances(blob, np.zeros_like(blob), spacing=(1.0, 2.0))
    assert to_pred.size == 0 and to_gt.size == 12
    assert np.all(to_gt == M.max_distance((20, 30), (1.0, 2.0)))
    assert M.max_distance((20, 30), (1.0, 2.0)) > M.msd(blob, np.roll(blob, 20, axis=1), (1.0, 2.0))


@pytest.mark.parametrize("call, pattern", [
    (lambda: M.dice(np.zeros((4, 5)), np.zeros((5, 4))), r"pred has shape \(4, 5\) but gt has shape \(5, 4\)"),
    (lambda: M.asd(np.zeros((4, 5, 6)), np.zeros((4, 5))), r"\(4, 5, 6\).*\(4, 5\)"),
    (lambda: M.iou(np.zeros(7), np.zeros(7)), r"2-D or 3-D.*\(7,\)"),
    (lambda: M.dice(np.zeros((2, 4, 5, 6)), np.zeros((2, 4, 5, 6))), r"\(2, 4, 5, 6\)"),
    (lambda: M.dice(np.full((4, 4), 255, np.uint8), np.zeros((4, 4))), r"pred.*0/1.*\[255\]"),
    (lambda: M.msd(np.ones((4, 4)), np.ones((4, 4)), spacing=(1.0, 1.0, 1.0)), r"spacing must be 2"),
    (lambda: M.asd(np.ones((4, 4)), np.ones((4, 4)), spacing=(1.0, -1.0)), r"positive"),
])
def test_segmentation_errors_name_the_shape(call, pattern):
    with pytest.raises(M.MetricError, match=pattern):
        call()


def test_segmentation_accumulator_summaries_without_nan():
    rng = np.random.default_rng(7)
    acc = M.SegmentationAccumulator(spacing=(0.8, 0.8))
    rows = [acc.update(blob_mask(rng, (40, 40), 0.3), blob_mask(rng, (40, 40), 0.3)) for _ in range(4)]
    result = acc.aggregate()
    dice_values = [row["dice"] for row in rows]
    assert result["n"] == 4
    assert result["dice"]["per_image"] == dice_values
    assert result["dice"]["mean"] == pytest.approx(np.mean(dice_values))
    assert result["dice"]["std"] == pytest.approx(np.std(dice_values))
    assert result["dice"]["median"] == pytest.approx(np.median(dice_values))

    acc.update(np.ones((40, 40)), np.zeros((40, 40)))  # a false positive on a lesion-free image
    result = acc.aggregate()
    assert result["rvd"]["mean"] == math.inf and result["rvd"]["std"] == math.inf
    assert result["dice"]["per_image"][-1] == 0.0 and result["asd"]["mean"] > rows[0]["asd"]
    for metric in M.SegmentationAccumulator.METRICS:
        assert not any(math.isnan(v) for k, v in result[metric].items() if k != "per_image")
    acc.reset()
    with pytest.raises(M.MetricError, match="nothing to aggregate"):
        acc.aggregate()


@pytest.mark.slow  # a wall-clock bound: kept out of the default run, where a busy machine would fail it
def test_surface_distances_are_fast_on_256_masks():
    rng = np.random.default_rng(0)
    pred = blob_mask(rng, (256, 256), 0.3)
    gt = blob_mask(rng, (256, 256), 0.3)
    M.surface_distances(pred, gt, (0.7, 0.7))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        M.surface_distances(pred, gt, (0.7, 0.7))
        best = min(best, time.perf_counter() - start)
    # about 10 ms on a free core; the bound leaves room for a busy CI machine
    assert best < 0.1


def test_metrics_import_nothing_but_numpy():
    code = ("import sys, lungedge.metrics, lungedge.metrics.bootstrap; "
            "print(sorted({'sklearn', 'scipy', 'torch'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
