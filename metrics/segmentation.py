"""Overlap metrics of binary 2-D or 3-D masks (dice, iou, voe, rvd) and the one-call segmentation report.

Segmentation conventions (binary 2-D or 3-D masks; ``gt`` is the ground truth A, ``pred`` the
prediction B; ``spacing`` is mm per axis, default 1). No case returns NaN, because a NaN silently
drops a missed lesion out of a mean (MONAI issue #9095):

==========================  =====  =====  =====  ======  ==================  ==================
case                        dice   iou    voe    rvd     asd                 msd
==========================  =====  =====  =====  ======  ==================  ==================
both empty                  1.0    1.0    0.0    0.0     0.0                 0.0
gt empty, pred not          0.0    0.0    1.0    +inf    ``max_distance``    ``max_distance``
pred empty, gt not          0.0    0.0    1.0    -1.0    ``max_distance``    ``max_distance``
==========================  =====  =====  =====  ======  ==================  ==================

- ``rvd = (|B| - |A|) / |A|`` is signed: positive means over-segmentation. With an empty ground truth
  any prediction is infinitely too large, so it is ``+inf`` (visible in a mean, never NaN).
- ``max_distance(shape, spacing)`` is the field-of-view diagonal ``sqrt(sum((n_i * s_i)**2))``: larger
  than any distance between two voxels, so a miss always scores worse than any hit, yet finite.
- Surface voxels are mask voxels with a background 4-neighbour (2-D) or 6-neighbour (3-D), i.e. the
  mask minus its erosion by a cross; outside the image counts as background (scipy ``binary_erosion``
  with ``border_value=0``, as medpy does).
- ``asd`` is the mean of the union of both directed surface-distance sets (Heimann et al. 2009), not
  medpy's ``assd`` (the average of the two directed means); ``msd`` is its maximum (Hausdorff).
- Volume ratios (dice, iou, voe, rvd) do not depend on spacing, so only the surface metrics take it.

Where the survey (shared/reference/covid19-deep-learning-survey.txt, section III) differs:

- Eq. (6) prints VOE as ``2(Vseg - Vgt)/(Vseg + Vgt)``; we use the standard ``1 - |A∩B|/|A∪B|``.
- Eq. (7) gives RVD as ``(Vseg/Vgt - 1) x 100%``: the same sign and quantity, but we return a fraction.
"""

import math
from typing import Dict

import numpy as np

from lungedge.metrics.masks import mask_pair
from lungedge.metrics.surface import _asd_msd, surface_distances


def dice(pred, gt) -> float:
    """2 |A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    p, g = mask_pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 2.0 * np.count_nonzero(p & g) / total if total else 1.0


def iou(pred, gt) -> float:
    """|A∩B| / |A∪B| (Jaccard); 1.0 when both masks are empty."""
    p, g = mask_pair(pred, gt)
    union = np.count_nonzero(p | g)
    return float(np.count_nonzero(p & g)) / union if union else 1.0


def voe(pred, gt) -> float:
    """Volumetric overlap error 1 - |A∩B| / |A∪B|; 0.0 when both masks are empty."""
    return 1.0 - iou(pred, gt)


def rvd(pred, gt) -> float:
    """Relative volume difference (|B| - |A|) / |A|, A = gt: positive means over-segmentation; 0.0 when
    both are empty, +inf when only gt is empty."""
    p, g = mask_pair(pred, gt)
    v_pred, v_gt = np.count_nonzero(p), np.count_nonzero(g)
    if v_gt == 0:
        return 0.0 if v_pred == 0 else math.inf
    return float(v_pred - v_gt) / v_gt


def segmentation_report(pred, gt, spacing=None) -> Dict[str, float]:
    """dice, iou, voe, rvd, asd and msd of one image or volume, surfaces computed once."""
    p, g = mask_pair(pred, gt)
    mean_distance, max_dist = _asd_msd(surface_distances(p, g, spacing))
    overlap = iou(p, g)
    return {"dice": dice(p, g), "iou": overlap, "voe": 1.0 - overlap, "rvd": rvd(p, g),
            "asd": mean_distance, "msd": max_dist}
