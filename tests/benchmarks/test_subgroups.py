"""Per-subgroup tables on synthetic predictions with exact expected numbers."""

import numpy as np
import pytest

from lungedge.benchmarks.subgroups import Cases, SubgroupOptions, subgroup_tables, subgroup_values
from lungedge.metrics.bootstrap import bootstrap_ci
from lungedge.runtime.errors import LungedgeError

LABELS = ["covid", "normal", "pneumonia"]


def _probs(p_covid, p_pneu):
    p_covid, p_pneu = np.asarray(p_covid, float), np.asarray(p_pneu, float)
    return np.stack([p_covid, 1 - p_covid - p_pneu, p_pneu], 1)


def _case():
    # 30 images from source A (10 covid, 10 normal, 10 pneumonia) and 6 from B (normal only).
    y = np.array([0] * 10 + [1] * 10 + [2] * 10 + [1] * 6)
    src = ["A"] * 30 + ["B"] * 6
    # Reference: covid calls on 8/10 covid, 1/10 normals of A, 0 pneumonia, 3/6 normals of B.
    ref_c = np.array([0.9] * 8 + [0.2] * 2 + [0.6] + [0.1] * 9 + [0.1] * 10 + [0.6] * 3 + [0.1] * 3)
    # Variant: drops two covid calls in A (sensitivity 0.6) and calls every B normal covid.
    var_c = np.array([0.9] * 6 + [0.2] * 4 + [0.6] + [0.1] * 9 + [0.1] * 10 + [0.6] * 6)
    pneu = np.array([0.05] * 20 + [0.6] * 10 + [0.05] * 6)
    rows = [{"name": "ref", "probs": _probs(ref_c, pneu), "threshold": 0.5},
            {"name": "var", "probs": _probs(var_c, pneu), "threshold": 0.5}]
    attrs = [{"source": s, "label": LABELS[k]} for s, k in zip(src, y)]
    groups = np.arange(len(y))
    return y, attrs, groups, rows


def test_subgroup_numbers_flags_and_deltas():
    y, attrs, groups, rows = _case()
    tables = subgroup_tables(["source"], Cases(attrs, y, groups, LABELS, "covid"), rows, SubgroupOptions(n_boot=200))
    a, b = tables["source"]
    assert (a["value"], a["n"], a["small"], a["label_counts"]) == ("A", 30, False,
                                                                 {"covid": 10, "normal": 10, "pneumonia": 10})
    assert (b["value"], b["n"], b["small"], b["label_counts"]) == ("B", 6, True, {"normal": 6})
    ra, va = a["rows"]["ref"], a["rows"]["var"]
    assert ra["sensitivity"]["value"] == pytest.approx(0.8) and va["sensitivity"]["value"] == pytest.approx(0.6)
    assert ra["specificity"]["value"] == pytest.approx(19 / 20)
    assert ra["sensitivity"]["low"] <= 0.8 <= ra["sensitivity"]["high"]
    # Within-subgroup AUCs exist for every label A holds; pneumonia is perfectly separated.
    assert set(ra["class_auc"]) == set(LABELS) and ra["class_auc"]["pneumonia"]["value"] == pytest.approx(1.0)
    assert a["deltas"]["var"]["sensitivity"]["delta"] == pytest.approx(-0.2) and a["deltas"]["var"]["flag"]
    # B holds only negatives: no sensitivity and no AUC, specificity 0.5 -> 0.0 flagged.
    rb = b["rows"]["ref"]
    assert rb["sensitivity"] is None and rb["auc"] is None and rb["class_auc"] == {}
    assert rb["specificity"]["value"] == pytest.approx(0.5) and rb["positive_call_rate"] == pytest.approx(0.5)
    assert b["deltas"]["var"]["specificity"]["delta"] == pytest.approx(-0.5) and b["deltas"]["var"]["flag"]
    assert "ref" not in a["deltas"]


def test_crossed_columns_and_missing_values():
    attrs = [{"source": "A", "label": "covid"}, {"label": "normal"}]
    assert subgroup_values(attrs, "source+label") == ["A/covid", "unknown/normal"]
    with pytest.raises(LungedgeError):
        subgroup_values(attrs, "+")


def test_bootstrap_ci_of_one_model():
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])

    def acc(yy, ss):
        return float(np.mean((ss >= 0.5) == yy))

    ci = bootstrap_ci(acc, y, s, groups=[0, 0, 1, 1, 2, 2], n_boot=300, seed=1)
    assert ci["value"] == pytest.approx(5 / 6) and ci["low"] <= ci["value"] <= ci["high"] and ci["n_groups"] == 3
