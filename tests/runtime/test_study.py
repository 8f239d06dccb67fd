"""Pure study-scoring functions: aggregation rules, CT-0..CT-4 severity, HU lung mask."""

import numpy as np
import pytest
from tinymodels import ct_phantom

from lungedge.runtime.errors import InputError
from lungedge.runtime.study import (
    AGGREGATION_RULES,
    aggregate_study,
    lesion_ratio,
    lung_mask_from_hu,
    severity_grade,
)

PROBS = [0.1, 0.7, 0.8, 0.2, 0.9, 0.95, 0.6, 0.1]


@pytest.mark.parametrize("rule,params,expected", [
    ("mean", {}, np.mean(PROBS)),
    ("max", {}, 0.95),
    ("positive_rate", {"threshold": 0.5}, 5 / 8),
    ("positive_rate", {"threshold": 0.85}, 2 / 8),
    ("consecutive", {"n": 2}, 0.9),    # slices 4-5: min(0.9, 0.95)
    ("consecutive", {"n": 3}, 0.6),    # slices 4-6: min(0.9, 0.95, 0.6)
    ("consecutive", {"n": 1}, 0.95),   # one slice: the max
    ("consecutive", {"n": 20}, 0.1),   # longer than the study: all slices
])
def test_aggregation_rules(rule, params, expected):
    assert aggregate_study(PROBS, rule, **params) == pytest.approx(expected)


def test_consecutive_matches_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(12)
        n, t = int(rng.integers(1, 5)), 0.5
        runs = any(all(p[i:i + n] >= t) for i in range(len(p) - n + 1))
        assert (aggregate_study(p, "consecutive", n=n) >= t) == runs


def test_rules_are_a_plain_dict():
    assert set(AGGREGATION_RULES) == {"mean", "max", "positive_rate", "consecutive"}


@pytest.mark.parametrize("bad", [[], [0.2, float("nan")], [1.5], [-0.1]])
def test_aggregation_rejects_bad_probabilities(bad):
    with pytest.raises(InputError):
        aggregate_study(bad, "mean")


def test_aggregation_rejects_unknown_rule_and_params():
    with pytest.raises(ValueError, match="unknown aggregation rule 'median'"):
        aggregate_study(PROBS, "median")
    with pytest.raises(TypeError):
        aggregate_study(PROBS, "max", threshold=0.5)


@pytest.mark.parametrize("ratio,grade", [
    (0.0, "CT-0"), (1e-6, "CT-1"), (0.2499, "CT-1"), (0.25, "CT-2"), (0.4999, "CT-2"), (0.50, "CT-3"),
    (0.75, "CT-3"), (0.7501, "CT-4"), (1.0, "CT-4"), (None, None),
])
def test_severity_grade(ratio, grade):
    assert severity_grade(ratio) == grade


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_severity_rejects_bad_ratio(bad):
    with pytest.raises(ValueError):
        severity_grade(bad)


def test_lesion_ratio():
    assert lesion_ratio(10, 40) == 0.25
    assert lesion_ratio(10, None) is None and lesion_ratio(0, 0) is None
    assert lesion_ratio(50, 40) == 1.0


def test_lung_mask_from_hu_excludes_outside_air():
    hu = ct_phantom()[0]
    mask = lung_mask_from_hu(hu)
    expected = (hu == -850.0)
    np.testing.assert_array_equal(mask.astype(bool), expected)
    assert lung_mask_from_hu(np.full((40, 40), -1000.0)).sum() == 0
