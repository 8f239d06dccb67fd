"""Accuracy of one variant, its fidelity to the baseline, and the paired-bootstrap verdicts on the deltas.

Classification: the operating threshold is re-fitted on VALIDATION for every variant (the recipe's rule, Youden
by default), then applied unchanged to the evaluated split; never fitted on test. Segmentation: masks on each
image's own grid, pixels labelled ``IGNORE`` (255) counted nowhere, the metrics module's empty-mask
conventions, distances in mm when the image carries a pixel spacing and in pixels otherwise.

Deltas are ``variant - baseline`` on the evaluated split with a 95 % interval from a paired bootstrap that
resamples whole patients; a verdict passes only when the interval's bound clears the tolerance (non-inferiority).
Tolerances come from the variant bundle's ``provenance.recipe.gate`` (``auc_drop``, ``sensitivity_drop``,
``specificity_drop``, ``macro_auc_drop``, ``dice_drop``, as in ``compress.gate.GateConfig``), else ``DEFAULTS``.
"""

import math

import numpy as np

from lungedge import metrics as M
from lungedge.metrics import bootstrap as S
from lungedge.runtime.tasks import IGNORE

DEFAULTS = {"auc": 0.01, "sensitivity": 0.02, "specificity": None, "macro_auc": None, "dice": 0.01}
GATE_KEYS = {"auc_drop": "auc", "sensitivity_drop": "sensitivity", "specificity_drop": "specificity",
             "macro_auc_drop": "macro_auc", "dice_drop": "dice"}
MATCH_BASELINE = "match_baseline_sensitivity"


def recipe_gate(manifest):
    """The ``gate`` section of the recipe recorded in a bundle manifest ({} when absent)."""
    recipe = ((manifest or {}).get("provenance") or {}).get("recipe") or {}
    gate = recipe.get("gate") if isinstance(recipe, dict) else None
    return gate if isinstance(gate, dict) else {}


def tolerances_for(manifest):
    """({metric: tolerance or None}, source): the recipe's gate drops over the defaults."""
    gate = recipe_gate(manifest)
    found = {GATE_KEYS[k]: v for k, v in gate.items() if k in GATE_KEYS}
    tolerances = dict(DEFAULTS)
    tolerances.update(found)
    return tolerances, ("recipe" if found else "default")


def threshold_rule_for(manifest):
    return recipe_gate(manifest).get("threshold_rule") or "youden"


def fit_threshold(y_val, scores_val, rule="youden", reference_sensitivity=None):
    """Threshold fitted on validation; ``match_baseline_sensitivity`` keeps the baseline's validation sensitivity."""
    if rule == MATCH_BASELINE:
        rule = "youden" if reference_sensitivity is None else f"sensitivity>={min(1.0, reference_sensitivity):.12f}"
    return float(M.fit_threshold(y_val, scores_val, rule=rule))


def _safe(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except M.MetricError as exc:
        return {"error": str(exc)}


def score_classification(labels, positive, val_idx, val_probs, test_idx, test_probs, rule="youden",
                         reference_sensitivity=None):
    """Binary report of the positive label at the validation-fitted threshold, plus per-class one-vs-rest."""
    pos = labels.index(positive)
    y_val = (np.asarray(val_idx) == pos).astype(int)
    y_test = (np.asarray(test_idx) == pos).astype(int)
    threshold = fit_threshold(y_val, val_probs[:, pos], rule, reference_sensitivity)
    out = {"threshold": threshold, "threshold_rule": rule, "positive_label": positive,
           "val": _safe(M.classification_report, y_val, val_probs[:, pos], threshold),
           "test": _safe(M.classification_report, y_test, test_probs[:, pos], threshold)}
    if len(labels) > 2:
        out["per_class"] = _safe(M.per_class_report, test_idx, test_probs, labels)
    return out


def score_classification_at(labels, positive, test_idx, test_probs, threshold):
    """Binary report of the positive label at a given (shipped) threshold: external evaluation, nothing refitted."""
    pos = labels.index(positive)
    y_test = (np.asarray(test_idx) == pos).astype(int)
    out = {"threshold": float(threshold), "threshold_rule": "bundle", "positive_label": positive, "val": None,
           "test": _safe(M.classification_report, y_test, test_probs[:, pos], float(threshold))}
    if len(labels) > 2:
        out["per_class"] = _safe(M.per_class_report, test_idx, test_probs, labels)
    return out


def _summary(values):
    arr = np.asarray(values, np.float64)
    finite = bool(np.isfinite(arr).all())
    return {"mean": float(arr.mean()), "std": float(arr.std()) if finite else math.inf,
            "median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}


def foreground(mask):
    return np.asarray(mask) > 0


def score_segmentation(pred_masks, images):
    """Per-image dice, iou, voe, rvd, asd, msd against the ground truth (ignore pixels excluded) and summaries."""
    names = M.SegmentationAccumulator.METRICS
    per_image = {n: [] for n in names}
    units = set()
    for pred, im in zip(pred_masks, images):
        valid = im.mask != IGNORE
        gt = (im.mask > 0) & valid
        spacing = im.meta.get("pixel_spacing")
        units.add("mm" if spacing else "px")
        row = M.segmentation_report(foreground(pred) & valid, gt, spacing)
        for n in names:
            per_image[n].append(float(row[n]))
    return {"per_image": per_image, "summary": {n: _summary(per_image[n]) for n in names},
            "distance_unit": "mm" if units == {"mm"} else ("px" if units == {"px"} else "mixed mm/px"),
            "ignore_label": IGNORE}


def fidelity_classification(ref_probs, var_probs, pos, ref_threshold, var_threshold):
    """Agreement of a variant's outputs with the baseline's on the same images."""
    a, b = np.asarray(ref_probs), np.asarray(var_probs)
    delta = np.abs(a - b)
    return {"label_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "positive_call_agreement": float(np.mean((a[:, pos] >= ref_threshold) == (b[:, pos] >= var_threshold))),
            "mean_abs_delta_prob": float(delta.mean()), "max_abs_delta_prob": float(delta.max()),
            "mean_abs_delta_positive": float(delta[:, pos].mean())}


def fidelity_segmentation(ref_masks, var_masks):
    """Per-image DICE between baseline and variant masks (both empty: 1.0)."""
    dices = [M.dice(foreground(a), foreground(b)) for a, b in zip(ref_masks, var_masks)]
    return {"dice_to_baseline": _summary(dices), "per_image_dice_to_baseline": [float(d) for d in dices],
            "pixel_agreement": float(np.mean([np.mean(foreground(a) == foreground(b))
                                              for a, b in zip(ref_masks, var_masks)]))}


def _with_verdict(ci, tolerance, higher_is_better=True):
    out = dict(ci)
    out["tolerance"] = tolerance
    if "error" in ci or tolerance is None:
        out["verdict"] = None
        return out
    v = S.verdict(ci, tolerance, higher_is_better)
    out["verdict"] = "PASS" if v.passed else "FAIL"
    out["verdict_text"] = str(v)
    return out


def _boot(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except M.MetricError as exc:
        return {"error": str(exc)}


def classification_deltas(labels, positive, test_idx, groups, ref, var, tolerances, n_boot=2000, seed=0):
    """AUC, sensitivity and specificity deltas (and macro AUC for 3+ classes) with patient-level CIs."""
    pos = labels.index(positive)
    y = (np.asarray(test_idx) == pos).astype(int)
    a, b = ref["probs"][:, pos], var["probs"][:, pos]
    call_a = (a >= ref["threshold"]).astype(int)
    call_b = (b >= var["threshold"]).astype(int)
    kw = {"groups": groups, "n_boot": n_boot, "seed": seed}
    deltas = {
        "auc": _with_verdict(_boot(S.paired_bootstrap, M.roc_auc, y, a, b, **kw), tolerances.get("auc")),
        "sensitivity": _with_verdict(_boot(S.paired_bootstrap, M.sensitivity, y, call_a, call_b, **kw),
                                     tolerances.get("sensitivity")),
        "specificity": _with_verdict(_boot(S.paired_bootstrap, M.specificity, y, call_a, call_b, **kw),
                                     tolerances.get("specificity")),
    }
    if len(labels) > 2:
        def macro_auc(y_idx, probs):
            return M.per_class_report(y_idx, probs, labels)["macro"]["auc"]

        deltas["macro_auc"] = _with_verdict(
            _boot(S.paired_bootstrap, macro_auc, np.asarray(test_idx), ref["probs"], var["probs"], **kw),
            tolerances.get("macro_auc"))
    return deltas


def segmentation_deltas(groups, ref_dice, var_dice, tolerances, n_boot=2000, seed=0):
    """Mean-DICE delta with a patient-level CI."""
    ci = _boot(S.paired_bootstrap_mean, ref_dice, var_dice, groups=groups, n_boot=n_boot, seed=seed)
    return {"dice": _with_verdict(ci, tolerances.get("dice"))}


def overall_verdict(deltas):
    """PASS when every checked delta passes, FAIL when one fails, None when nothing was checked."""
    checked_deltas = [d for d in deltas.values() if isinstance(d, dict) and d.get("tolerance") is not None]
    if any("error" in d for d in checked_deltas):
        return "ERROR"
    if not checked_deltas:
        return None
    return "PASS" if all(d["verdict"] == "PASS" for d in checked_deltas) else "FAIL"
