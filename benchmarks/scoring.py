"""The bench's scoring of accuracy: per-row reports at each row's threshold, fidelity to the reference, paired
deltas with verdicts, calibration, per-subgroup tables, and the example images the report shows.

Every step reads one ``Scoring`` (the rows, their runners and outputs, the images) and writes into its rows.
"""

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungedge.benchmarks import accuracy as A
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.errors import BundleError


@dataclass
class Scoring:
    """The state every scoring step reads: rows (written into), their runners and outputs, the images."""

    rows: list
    runners: list
    outputs: dict
    images: list
    val: list
    labels: list
    positive: Optional[str]
    groups: list
    cfg: object  # bench.BenchConfig


def probabilities(outputs):
    return np.stack([o["probabilities"] for o in outputs])


def score_classification(sc):
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    val, labels, positive, groups = sc.val, sc.labels, sc.positive, sc.groups
    test_idx = np.array([labels.index(im.label) for im in images])
    val_idx = np.array([labels.index(im.label) for im in val])
    pos = labels.index(positive)
    scored = {}
    for i, (row, r) in enumerate(zip(rows, runners)):
        manifest = r.manifest if r.kind == "bundle" else None
        probs_t = probabilities(outputs[r.name]["test"])
        if cfg.thresholds == "bundle":
            if r.stored_threshold is None:
                raise BundleError(f"{r.name} ships no threshold for {positive!r} (a torch run needs the metrics.json "
                                  "of lungedge train); evaluate with --thresholds val on a folder with a val split")
            row["accuracy"] = A.score_classification_at(labels, positive, test_idx, probs_t, r.stored_threshold)
        else:
            rule = A.threshold_rule_for(manifest) if row["role"] == "variant" else "youden"
            ref_sens = None
            if i and rule == A.MATCH_BASELINE:
                ref_sens = rows[0]["accuracy"]["val"].get("sensitivity")
            probs_v = probabilities(outputs[r.name]["val"])
            row["accuracy"] = A.score_classification(labels, positive, val_idx, probs_v, test_idx, probs_t, rule,
                                                     ref_sens)
            row["per_image_val_probabilities"] = probs_v.tolist()
        row["per_image_probabilities"] = probs_t.tolist()
        row["accuracy"]["test_ci"] = test_cis(test_idx == pos, probs_t[:, pos], row["accuracy"]["threshold"],
                                               groups, cfg)
        row["tolerances"], row["tolerance_source"] = A.tolerances_for(manifest if row["role"] == "variant" else None)
        scored[r.name] = {"probs": probs_t, "threshold": row["accuracy"]["threshold"]}
    ref = scored[runners[0].name]
    for row, r in zip(rows[1:], runners[1:]):
        var = scored[r.name]
        row["fidelity"] = A.fidelity_classification(ref["probs"], var["probs"], pos, ref["threshold"], var["threshold"])
        row["deltas"] = A.classification_deltas(labels, positive, test_idx, groups, ref, var, row["tolerances"],
                                                cfg.n_boot, cfg.seed)
        row["verdict"] = A.overall_verdict(row["deltas"])
    rows[0]["fidelity"], rows[0]["deltas"], rows[0]["verdict"] = None, None, None


def test_cis(y, scores, threshold, groups, cfg):
    """AUC, sensitivity and specificity of the positive label on the evaluated split with patient-bootstrap CIs."""
    from lungedge import metrics as M
    from lungedge.metrics import bootstrap as S
    from lungedge.metrics import strict_sensitivity, strict_specificity

    y = np.asarray(y).astype(int)
    calls = (np.asarray(scores) >= threshold).astype(int)
    out = {}
    for name, fn, s in (("auc", M.roc_auc, scores), ("sensitivity", strict_sensitivity, calls),
                        ("specificity", strict_specificity, calls)):
        try:
            out[name] = S.bootstrap_ci(fn, y, s, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed)
        except M.MetricError as exc:
            out[name] = {"error": str(exc)}
    return out


def score_calibration(sc):
    """ECE (equal-mass bins), Brier score and reliability curve of P(positive) per row, and the change from the
    reference with paired patient-bootstrap intervals."""
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    labels, positive, groups = sc.labels, sc.positive, sc.groups
    from lungedge.metrics import bootstrap as S
    from lungedge.metrics import calibration as C

    pos = labels.index(positive)
    y = np.array([int(im.label == positive) for im in images])
    probs = {r.name: probabilities(outputs[r.name]["test"])[:, pos] for r in runners}
    ref = runners[0].name

    def ece(yy, p):
        return C.expected_calibration_error(yy, p, cfg.calibration_bins)

    for row, r in zip(rows, runners):
        row["calibration"] = C.calibration_report(y, probs[r.name], cfg.calibration_bins)
        if r.name == ref:
            row["calibration"]["delta"] = None
            continue
        delta = {}
        for name, fn in (("ece", ece), ("brier", C.brier_score)):
            try:
                delta[name] = S.paired_bootstrap(fn, y, probs[ref], probs[r.name], groups=groups,
                                                 n_boot=cfg.n_boot, seed=cfg.seed)
            except ValueError as exc:
                delta[name] = {"error": str(exc)}
        row["calibration"]["delta"] = delta


def score_subgroups(sc):
    """Per-subgroup tables (``subgroups.subgroup_tables``) for the configured columns, or None."""
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    labels, positive, groups = sc.labels, sc.positive, sc.groups
    if not cfg.subgroups:
        return None
    from lungedge.benchmarks.subgroups import MAX_DROP, MIN_N, Cases, SubgroupOptions, subgroup_tables

    attributes = [dict(im.extra, label=im.label) for im in images]
    y_idx = np.array([labels.index(im.label) for im in images])
    table_rows = [{"name": r.name, "probs": probabilities(outputs[r.name]["test"]), "threshold": row["accuracy"]["threshold"]}
                  for row, r in zip(rows, runners)]
    tables = subgroup_tables(cfg.subgroups, Cases(attributes, y_idx, groups, labels, positive), table_rows,
                             SubgroupOptions(n_boot=cfg.subgroup_n_boot, seed=cfg.seed))
    return {"columns": list(cfg.subgroups), "min_n": MIN_N, "max_drop": MAX_DROP, "tables": tables}


def score_segmentation(sc):
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    groups = sc.groups
    masks = {r.name: [o["mask"] for o in outputs[r.name]["test"]] for r in runners}
    for row, r in zip(rows, runners):
        row["accuracy"] = A.score_segmentation(masks[r.name], images)
        row["tolerances"], row["tolerance_source"] = A.tolerances_for(r.manifest if row["role"] == "variant" else None)
    ref_name = runners[0].name
    ref_dice = rows[0]["accuracy"]["per_image"]["dice"]
    for row, r in zip(rows[1:], runners[1:]):
        row["fidelity"] = A.fidelity_segmentation(masks[ref_name], masks[r.name])
        row["deltas"] = A.segmentation_deltas(groups, ref_dice, row["accuracy"]["per_image"]["dice"],
                                              row["tolerances"], cfg.n_boot, cfg.seed)
        row["verdict"] = A.overall_verdict(row["deltas"])
    rows[0]["fidelity"], rows[0]["deltas"], rows[0]["verdict"] = None, None, None


def examples(results, images, outputs, k=4):
    """Images where the least faithful variant and the reference disagree most (for the overlay figure)."""
    rows = results["rows"]
    if len(rows) < 2:
        return None
    ref = rows[0]["name"]
    if results["task"] == TaskKind.CLASSIFICATION:
        pos = results["labels"].index(results["positive_label"])
        worst_row = max(rows[1:], key=lambda r: r["fidelity"]["mean_abs_delta_positive"])
        a = np.array([o["probabilities"][pos] for o in outputs[ref]["test"]])
        b = np.array([o["probabilities"][pos] for o in outputs[worst_row["name"]]["test"]])
        order = np.argsort(-np.abs(a - b))[:k]
        return {"task": "classification", "variant": worst_row["name"], "reference": ref,
                "items": [{"image": images[i].array, "file": os.path.basename(images[i].file),
                           "label": images[i].label, "reference_p": float(a[i]), "variant_p": float(b[i])}
                          for i in order]}
    worst_row = min(rows[1:], key=lambda r: r["fidelity"]["dice_to_baseline"]["mean"])
    per = np.array(worst_row["fidelity"]["per_image_dice_to_baseline"])
    order = np.argsort(per)[:k]
    return {"task": "segmentation", "variant": worst_row["name"], "reference": ref,
            "items": [{"image": images[i].array, "file": os.path.basename(images[i].file), "gt": images[i].mask,
                       "reference_mask": outputs[ref]["test"][i]["mask"],
                       "variant_mask": outputs[worst_row["name"]]["test"][i]["mask"],
                       "dice_to_baseline": float(per[i])} for i in order]}


def label_counts(images):
    counts = {}
    for im in images:
        counts[im.label] = counts.get(im.label, 0) + 1
    return counts
