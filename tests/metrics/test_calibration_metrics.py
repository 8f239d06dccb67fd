"""Calibration metrics with hand-computed expectations: equal-mass bins (ties kept together), ECE, Brier."""

import numpy as np
import pytest

from lungedge.metrics import MetricError
from lungedge.metrics import calibration as C


def test_equal_mass_bins_split_sorted_scores_evenly_and_keep_ties_together():
    p = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    assert C.equal_mass_bins(p, 3).tolist() == [2, 0, 1, 1, 2, 0]
    tied = np.array([0.2, 0.2, 0.2, 0.8])  # the cut after two cases would split the three ties
    assert C.equal_mass_bins(tied, 2).tolist() == [0, 0, 0, 1]


def test_ece_and_brier_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # Two bins: {0.1, 0.3} mean 0.2 vs observed 0; {0.6, 0.8} mean 0.7 vs observed 1 -> (0.2 + 0.3) / 2.
    assert C.expected_calibration_error(y, p, 2) == pytest.approx(0.25)
    assert C.brier_score(y, p) == pytest.approx((0.01 + 0.09 + 0.16 + 0.04) / 4)
    curve = C.reliability_curve(y, p, 2)
    assert curve["count"] == [2, 2] and curve["observed"] == [0.0, 1.0]
    assert curve["mean_predicted"] == pytest.approx([0.2, 0.7])


def test_perfectly_calibrated_bins_have_zero_ece():
    y = np.array([0, 1] * 5 + [1] * 10)
    p = np.array([0.5] * 10 + [1.0] * 10)
    assert C.expected_calibration_error(y, p, 2) == pytest.approx(0.0)


@pytest.mark.parametrize("y,p", [([0, 1], [0.5]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.2]), ([], [])])
def test_bad_inputs_are_typed_errors(y, p):
    with pytest.raises(MetricError):
        C.calibration_report(y, p)


def test_occlusion_finds_what_the_model_reads():
    """A model reading only the top-left quadrant gets all its importance there."""
    from lungedge.benchmarks.attention import attention_summary, lung_share, occlusion_map

    def predict(batch):
        p = 1.0 / (1.0 + np.exp(-batch[:, 0, :16, :16].mean(axis=(1, 2))))
        return np.stack([p, 1 - p], 1)

    x = np.ones((1, 32, 32), np.float32)
    x[0, 31, 31] = -1.0  # the padding value patches are filled with
    imp = occlusion_map(predict, x, 0, patch=16)
    assert imp.shape == (2, 2) and imp[0, 0] > 0 and np.allclose(imp.ravel()[1:], 0.0)
    lungs = np.zeros((32, 32), bool)
    lungs[:16, :16] = True
    assert lung_share(imp, lungs, 16) == (1.0, 0.25)
    assert lung_share(imp, ~lungs, 16) == (0.0, 0.75)
    summary = attention_summary(predict, [x, x], [lungs, lungs], 0, patch=16)
    assert summary["lung_share_of_importance"] == 1.0 and summary["n_images"] == 2
