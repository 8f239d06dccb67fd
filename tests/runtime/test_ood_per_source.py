"""OOD thresholds with a minimum acceptance per source: hand-made score tables with known answers."""

import numpy as np
import pytest

from lungedge.runtime.errors import BundleError
from lungedge.runtime.ood import (
    NO_SOURCE_FLOOR,
    OodScorer,
    calibrate_per_group,
    group_acceptance,
    relax_per_group,
)

# Two sources of four images, two scores, thresholds starting at 4: source x accepts 3 of 4 (its b = 6 is above
# 4), source y 2 of 4 (y2's a = 5, y3's b = 8).
GROUPS = ["x"] * 4 + ["y"] * 4
SCORES = {"a": [1, 2, 3, 4, 1, 2, 5, 3], "b": [1, 2, 3, 6, 1, 2, 3, 8]}
START = {"a": 4.0, "b": 4.0}


def test_group_acceptance_needs_every_score_at_or_below_its_threshold():
    assert group_acceptance(SCORES, START, GROUPS) == {"x": (3, 4), "y": (2, 4)}


def test_relaxing_lets_in_the_cheapest_refused_image_of_the_worst_source():
    # y is short of 3 of 4. Letting in y2 raises a from 4 to 5, passing one more of the eight a scores (1/8);
    # letting in y3 raises b from 4 to 8, passing two more b scores (6 and 8: 2/8). y2 is cheaper.
    thresholds, counts = relax_per_group(SCORES, GROUPS, START, 0.75)
    assert thresholds == {"a": 5.0, "b": 4.0}
    assert counts == {"x": (3, 4), "y": (3, 4)}


def test_a_floor_of_one_accepts_every_validation_image():
    # y first (a -> 5), then x and y tie at 3/4 and x goes first by name (b -> 6), then y again (b -> 8).
    thresholds, counts = relax_per_group(SCORES, GROUPS, START, 1.0)
    assert thresholds == {"a": 5.0, "b": 8.0}
    assert counts == {"x": (4, 4), "y": (4, 4)}


def test_a_met_floor_leaves_the_thresholds_alone():
    assert relax_per_group(SCORES, GROUPS, START, 0.5) == (START, {"x": (3, 4), "y": (2, 4)})
    assert relax_per_group(SCORES, GROUPS, START, 0.0)[0] == START


def test_calibration_starts_at_the_pooled_quantile_and_relaxes_per_source():
    scores = {"s": np.arange(1.0, 11.0)}  # x: 1..5, y: 6..10
    groups = ["x"] * 5 + ["y"] * 5
    # Pooled 80%: 8 (eight of ten at or below it); y then accepts 6, 7, 8 = 3 of 5.
    assert calibrate_per_group(scores, groups, 0.8, 0.0) == ({"s": 8.0}, {"x": (5, 5), "y": (3, 5)})
    assert calibrate_per_group(scores, groups, 0.8, 0.8) == ({"s": 9.0}, {"x": (5, 5), "y": (4, 5)})
    assert calibrate_per_group(scores, groups, 0.8, 0.99) == ({"s": 10.0}, {"x": (5, 5), "y": (5, 5)})


@pytest.mark.parametrize("bad", [
    dict(scores={"a": [1, 2]}, groups=["x"], thresholds={"a": 1.0}, floor=0.5),
    dict(scores={"a": [1, 2]}, groups=["x", "y"], thresholds={"b": 1.0}, floor=0.5),
    dict(scores={"a": [1, 2]}, groups=["x", "y"], thresholds={"a": 1.0}, floor=1.5),
])
def test_bad_tables_are_refused(bad):
    with pytest.raises(ValueError):
        relax_per_group(bad["scores"], bad["groups"], bad["thresholds"], bad["floor"])


def _scorer(**extra):
    entry = {"feature_output": "features", "thresholds": {"mahalanobis": 10.0}, "acceptance": 0.99, **extra}
    return OodScorer(entry, np.zeros((2, 3)), np.eye(3))


def test_results_say_whether_the_thresholds_hold_a_floor_per_source():
    assert _scorer().describe()["per_source"] == {"checked": False, "note": NO_SOURCE_FLOOR}
    assert "python -m lungedge.compress.quality ood" in NO_SOURCE_FLOOR
    floor = _scorer(rule="pooled_then_relax", min_source_acceptance=0.99).describe()["per_source"]
    assert floor == {"checked": True, "rule": "pooled_then_relax", "min_source_acceptance": 0.99}


def test_a_scorer_may_check_the_feature_distance_alone():
    scorer = _scorer()
    scores = scorer.score(np.array([[4.0, 0.0, 0.0]]), np.array([[0.0, 0.0]]))
    assert scores["mahalanobis"][0] == pytest.approx(16.0)
    findings = scorer.findings({k: v[0] for k, v in scores.items()})
    assert [f.reason for f in findings] == ["ood_mahalanobis"]  # the energy is scored, not checked
    with pytest.raises(BundleError, match="unknown scores"):
        OodScorer({"feature_output": "f", "thresholds": {"confidence": 1.0}}, np.zeros((2, 3)), np.eye(3))
