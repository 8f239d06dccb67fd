"""Thin accumulators over the pure metric functions: collect per batch, report once (the MONAI habit)."""

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from lungedge.metrics.classification import _as_1d, classification_report, per_class_report
from lungedge.metrics.errors import MetricError
from lungedge.metrics.segmentation import segmentation_report


def _summary(values: List[float]) -> Dict[str, object]:
    """mean, std (population, ddof=0) and median; std is inf, never NaN, when a value is infinite."""
    arr = np.asarray(values, dtype=np.float64)
    finite = bool(np.isfinite(arr).all())
    return {"mean": float(arr.mean()), "std": float(arr.std()) if finite else math.inf,
            "median": float(np.median(arr)), "per_image": [float(v) for v in values]}


class SegmentationAccumulator:
    """Collects ``segmentation_report`` per image or volume; ``aggregate()`` summarises each metric."""

    METRICS = ("dice", "iou", "voe", "rvd", "asd", "msd")

    def __init__(self, spacing=None):
        self.spacing = spacing
        self.reset()

    def reset(self) -> None:
        self._values: Dict[str, List[float]] = {name: [] for name in self.METRICS}

    def __len__(self) -> int:
        return len(self._values["dice"])

    def update(self, pred, gt, spacing=None) -> Dict[str, float]:
        """Score one case (``spacing`` overrides the accumulator's) and return its metrics."""
        row = segmentation_report(pred, gt, self.spacing if spacing is None else spacing)
        for name in self.METRICS:
            self._values[name].append(row[name])
        return row

    def aggregate(self) -> Dict[str, object]:
        """{metric: {mean, std, median, per_image}} for each metric, plus the case count ``n``."""
        if not len(self):
            raise MetricError("nothing to aggregate: call update() with at least one case first")
        result: Dict[str, object] = {name: _summary(self._values[name]) for name in self.METRICS}
        result["n"] = len(self)
        return result


class ClassificationAccumulator:
    """Collects labels and scores batch by batch; ``aggregate()`` reports on all of them together.

    Binary (``labels=None``): ``update(y_true, scores)`` with 0/1 labels and 1-D scores, reported by
    ``classification_report`` at ``threshold``. Multiclass: ``update(y_true_idx, probs)`` with (N, K)
    probs, reported by ``per_class_report``.
    """

    def __init__(self, threshold: float = 0.5, labels: Optional[Sequence[str]] = None):
        self.threshold = float(threshold)
        self.labels = None if labels is None else [str(name) for name in labels]
        self.reset()

    def reset(self) -> None:
        self._y: List[np.ndarray] = []
        self._scores: List[np.ndarray] = []

    def __len__(self) -> int:
        return int(sum(len(y) for y in self._y))

    def update(self, y_true, scores) -> None:
        y = _as_1d(y_true, "y_true")
        s = np.asarray(scores)
        expected = (y.shape[0],) if self.labels is None else (y.shape[0], len(self.labels))
        if s.shape != expected:
            raise MetricError(f"scores must have shape {expected} for y_true of shape {y.shape}, got {s.shape}")
        self._y.append(y)
        self._scores.append(s)

    def aggregate(self) -> Dict[str, object]:
        """The report on every case so far, plus ``per_image``: the labels and scores it was built from."""
        if not self._y:
            raise MetricError("nothing to aggregate: call update() with at least one batch first")
        y = np.concatenate(self._y)
        s = np.concatenate(self._scores)
        if self.labels is None:
            result: Dict[str, object] = dict(classification_report(y, s, self.threshold))
        else:
            result = per_class_report(y, s, self.labels)
        result["per_image"] = {"y_true": y.tolist(), "scores": s.tolist()}
        return result
