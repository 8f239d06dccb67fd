"""Per-subgroup accuracy (source, age group, view, or any manifest column): a clinical study's table, not a pooled
leaderboard number.

For every subgroup and every row (the reference, then each variant) at that row's own operating threshold:
sensitivity and specificity of the positive label, its AUC where both classes exist, and the one-vs-rest AUC of
every label the subgroup holds with at least one other label (the *within-subgroup* AUC: inside one source, a
model that only recognises the source scores 0.5 there). Each with a 95 % patient-bootstrap interval; for each
variant the paired variant-minus-reference deltas with their intervals. Subgroups under ``min_n`` images are
shown and flagged ``small``, never hidden. A variant whose sensitivity or specificity drops by more than
``max_drop`` (point estimate) in a subgroup is flagged there.

A subgroup column is a manifest column name (``source``) or several joined by ``+`` (``source+label``).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungedge import metrics as M
from lungedge.metrics import bootstrap as S
from lungedge.metrics import strict_sensitivity, strict_specificity

MIN_N = 20
MAX_DROP = 0.05


@dataclass(frozen=True)
class Cases:
    """The evaluated images as the tables need them: one attribute dict (manifest columns + "label"), label index
    and patient group per image, with the label names and the positive label."""

    attributes: list
    y_idx: np.ndarray
    groups: np.ndarray
    labels: list
    positive: Optional[str]

    def __post_init__(self):
        object.__setattr__(self, "y_idx", np.asarray(self.y_idx))
        object.__setattr__(self, "groups", np.asarray(self.groups))


@dataclass(frozen=True)
class SubgroupOptions:
    """Bootstrap resamples and seed; subgroups under ``min_n`` images are flagged small; a variant losing more
    than ``max_drop`` sensitivity or specificity (point estimate) in a subgroup is flagged there."""

    n_boot: int = 1000
    seed: int = 0
    min_n: int = MIN_N
    max_drop: float = MAX_DROP


def subgroup_values(attributes, column):
    """The subgroup of each image for ``column`` ("source" or "source+label"); missing values are "unknown"."""
    parts = [c.strip() for c in column.split("+") if c.strip()]
    if not parts:
        raise M.MetricError(f"empty subgroup column {column!r}")
    return ["/".join(str(a.get(c) or "unknown") for c in parts) for a in attributes]


def _ci(fn, y, scores, groups, n_boot, seed):
    try:
        return S.bootstrap_ci(fn, y, scores, groups=groups, n_boot=n_boot, seed=seed)
    except M.MetricError:
        return None


def _paired(fn, y, a, b, groups, n_boot, seed):
    try:
        return S.paired_bootstrap(fn, y, a, b, groups=groups, n_boot=n_boot, seed=seed)
    except M.MetricError:
        return None


def _binary_metrics(labels, positive, y_idx, probs, threshold, groups, opts):
    n_boot, seed = opts.n_boot, opts.seed
    pos = labels.index(positive)
    y = (y_idx == pos).astype(int)
    calls = (probs[:, pos] >= threshold).astype(int)
    out = {"sensitivity": _ci(strict_sensitivity, y, calls, groups, n_boot, seed),
           "specificity": _ci(strict_specificity, y, calls, groups, n_boot, seed),
           "auc": _ci(M.roc_auc, y, probs[:, pos], groups, n_boot, seed),
           "positive_call_rate": float(calls.mean()), "class_auc": {}}
    present = sorted(set(y_idx.tolist()))
    if len(present) > 1:
        for k in present:
            out["class_auc"][labels[k]] = _ci(M.roc_auc, (y_idx == k).astype(int), probs[:, k], groups, n_boot, seed)
    return out


def _deltas(labels, positive, y_idx, ref, var, groups, opts):
    n_boot, seed = opts.n_boot, opts.seed
    pos = labels.index(positive)
    y = (y_idx == pos).astype(int)
    ref_calls = (ref["probs"][:, pos] >= ref["threshold"]).astype(int)
    var_calls = (var["probs"][:, pos] >= var["threshold"]).astype(int)
    out = {"sensitivity": _paired(strict_sensitivity, y, ref_calls, var_calls, groups, n_boot, seed),
           "specificity": _paired(strict_specificity, y, ref_calls, var_calls, groups, n_boot, seed),
           "auc": _paired(M.roc_auc, y, ref["probs"][:, pos], var["probs"][:, pos], groups, n_boot, seed)}
    drops = [d["delta"] for k, d in out.items() if k != "auc" and d is not None]
    out["flag"] = bool(drops and min(drops) < -opts.max_drop)
    return out


def subgroup_tables(columns, cases, rows, options=SubgroupOptions()):
    """{column: [subgroup entries]} for every requested column of ``cases`` (a Cases).

    rows: [{"name", "probs" (N, C), "threshold"}], the reference first.
    """
    attributes, y_idx, groups, labels, positive = (cases.attributes, cases.y_idx, cases.groups, cases.labels,
                                                   cases.positive)
    opts = options
    tables = {}
    for column in columns:
        values = np.asarray(subgroup_values(attributes, column))
        entries = []
        for value in sorted(set(values.tolist())):
            sel = np.flatnonzero(values == value)
            yi, gi = y_idx[sel], groups[sel]
            counts = {labels[k]: int((yi == k).sum()) for k in sorted(set(yi.tolist()))}
            entry = {"column": column, "value": value, "n": int(sel.size), "n_patients": int(len(set(gi.tolist()))),
                     "small": bool(sel.size < opts.min_n), "label_counts": counts, "rows": {}, "deltas": {}}
            for row in rows:
                entry["rows"][row["name"]] = _binary_metrics(labels, positive, yi, row["probs"][sel],
                                                             row["threshold"], gi, opts)
            ref = rows[0]
            for row in rows[1:]:
                entry["deltas"][row["name"]] = _deltas(
                    labels, positive, yi, {"probs": ref["probs"][sel], "threshold": ref["threshold"]},
                    {"probs": row["probs"][sel], "threshold": row["threshold"]}, gi, opts)
            entries.append(entry)
        tables[column] = entries
    return tables
