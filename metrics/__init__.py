"""lungedge.metrics: diagnostic metrics in pure numpy, below everything that uses them.

Layer 1 beside the runtime (it imports only ``lungedge.runtime.errors``): training, the compression gate and the
bench all score with these functions, and the same code runs on a workstation and on the edge device (Python 3.8
syntax, no torch, no scikit-learn; the tests check it against scikit-learn and scipy). Pure functions first, thin
accumulators second (MONAI's ``monai.metrics`` habit). One module per family:

- ``classification``: confusion counts, sensitivity, specificity, precision, accuracy, F-beta, ROC/AUC, the
  binary and one-vs-rest reports, threshold rules, the Wilson interval of a rate and its met/unproven/missed
  verdict;
- ``segmentation``: dice, iou, voe, rvd and the per-image report; ``surface``: ASD, MSD; ``masks``: validation;
- ``accumulators``: per-batch collectors; ``bootstrap``: patient-level paired and single-model intervals and the
  non-inferiority verdict; ``calibration``: ECE (equal-mass bins), Brier score, reliability curve.

``from lungedge import metrics as M`` gives the metric functions directly (``M.dice``, ``M.roc_auc``).
"""

from lungedge.metrics.accumulators import ClassificationAccumulator, SegmentationAccumulator
from lungedge.metrics.classification import (
                                             Confusion,
                                             accuracy,
                                             classification_report,
                                             confusion,
                                             f1,
                                             f2,
                                             f_beta,
                                             fit_threshold,
                                             per_class_report,
                                             precision,
                                             proportion_interval,
                                             rate_verdict,
                                             recall,
                                             roc_auc,
                                             roc_curve,
                                             sensitivity,
                                             specificity,
                                             strict_sensitivity,
                                             strict_specificity,
)
from lungedge.metrics.errors import MetricError, UndefinedMetricError
from lungedge.metrics.segmentation import dice, iou, rvd, segmentation_report, voe
from lungedge.metrics.surface import asd, mask_surface, max_distance, msd, surface_distances

__all__ = [
    "ClassificationAccumulator", "Confusion", "MetricError", "SegmentationAccumulator", "UndefinedMetricError",
    "accuracy", "asd", "classification_report", "confusion", "dice", "f1", "f2", "f_beta", "fit_threshold",
    "iou", "mask_surface", "max_distance", "msd", "per_class_report", "precision", "proportion_interval",
    "rate_verdict", "recall", "roc_auc", "roc_curve", "rvd", "segmentation_report", "sensitivity", "specificity",
    "strict_sensitivity", "strict_specificity", "surface_distances", "voe",
]
