"""Surface distances between binary masks (ASD, MSD), exact Euclidean with anisotropic spacing.

Surface voxels are mask voxels with a background 4-neighbour (2-D) or 6-neighbour (3-D); ``asd`` is the mean of
the union of both directed surface-distance sets (Heimann et al. 2009) and ``msd`` its maximum (Hausdorff). A
miss is penalised with ``max_distance``, finite, never NaN (MONAI issue #9095). The conventions table is in
``lungedge.metrics.segmentation``.

Eqs. (9) and (10) of the survey print ``min`` for both ASD and MSD; ASD is the mean and MSD the maximum. Eq. (8)
(``Ag`` garbled for ``A_gt``) is our directed distance.
"""

import math
from typing import Sequence, Tuple

import numpy as np

from lungedge.metrics.masks import as_mask, as_spacing, mask_pair


def max_distance(shape: Sequence[int], spacing=None) -> float:
    """The miss penalty for surface distances: the field-of-view diagonal sqrt(sum((n_i * s_i)^2)) in mm."""
    s = as_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * v) ** 2 for n, v in zip(shape, s))))


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the cross (4-/6-neighbour) element, outside the image being background."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = [slice(1, n + 1) for n in mask.shape]
    eroded = mask.copy()
    for axis, n in enumerate(mask.shape):
        for start in (0, 2):
            window = list(inner)
            window[axis] = slice(start, start + n)
            eroded &= padded[tuple(window)]
    return eroded


def mask_surface(mask) -> np.ndarray:
    """Surface voxels of a binary mask: those with a background 4-neighbour (2-D) or 6-neighbour (3-D)."""
    m = as_mask(mask, "mask")
    return m & ~_erode_cross(m)


def _squared_distance_along_last_axis(target: np.ndarray, step: float) -> np.ndarray:
    """Squared distance (mm^2) from every voxel to the nearest True voxel in the same last-axis line;
    inf in lines without one."""
    n = target.shape[-1]
    position = np.arange(n)
    far = 2 * n + 1
    previous = np.maximum.accumulate(np.where(target, position, -far), axis=-1)
    following = np.flip(np.minimum.accumulate(np.flip(np.where(target, position, far), -1), axis=-1), -1)
    squared = np.square(np.minimum(position - previous, following - position) * step)
    squared[~target.any(axis=-1)] = np.inf
    return squared


def _min_plus_parabola(squared: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Exact 1-D pass of a separable distance transform along ``axis``:
    out[.., x, ..] = min over a of ((x - a) * step)^2 + squared[.., a, ..]. Brute force over a (the
    callers pass the shortest axis), skipping slices that hold no finite value."""
    squared = np.moveaxis(squared, axis, 0)
    useful = np.flatnonzero(np.isfinite(squared).any(axis=tuple(range(1, squared.ndim))))
    source = squared[useful]
    offset_sq = np.square((np.arange(squared.shape[0])[:, None] - useful[None, :]) * step)
    out = np.empty_like(squared)
    for x in range(squared.shape[0]):
        out[x] = (source + offset_sq[x].reshape((-1,) + (1,) * (squared.ndim - 1))).min(axis=0)
    return np.moveaxis(out, 0, axis)


def _nearest_distances(points: np.ndarray, target: np.ndarray, spacing: Tuple[float, ...]) -> np.ndarray:
    """Exact Euclidean distance (mm) from each voxel index in ``points`` (P, ndim) to the nearest True
    voxel of ``target`` (which holds at least one).

    A separable exact distance transform, cropped to the bounding box of both sets: a linear nearest-
    neighbour sweep along the longest axis, a brute-force pass along the shortest (3-D only), then for
    each point a minimum over the remaining axis. Cost ~ volume x shortest side + points x middle side.
    """
    corners = np.vstack([points, np.argwhere(target)])
    low, high = corners.min(axis=0), corners.max(axis=0) + 1
    target = target[tuple(slice(lo, hi) for lo, hi in zip(low, high))]
    points = points - low
    # axes: gather axis first, brute-force axis (3-D) next, sweep axis last
    by_size = list(np.argsort(target.shape, kind="stable"))
    order = [by_size[-2], by_size[0], by_size[-1]] if target.ndim == 3 else [by_size[0], by_size[1]]
    target = np.transpose(target, order)
    points = points[:, order]
    step = [spacing[a] for a in order]

    squared = _squared_distance_along_last_axis(target, step[-1])
    if target.ndim == 3:
        squared = _min_plus_parabola(squared, 1, step[1])
    by_cell = squared.reshape(target.shape[0], -1).T.copy()  # (cells of the other axes, gather axis)
    flat = np.ravel_multi_index(tuple(points[:, 1:].T), target.shape[1:])
    offset_sq = np.square((np.arange(target.shape[0])[None, :] - np.arange(target.shape[0])[:, None]) * step[0])
    out = np.empty(len(points))
    chunk = max(1, (1 << 20) // target.shape[0])  # keeps the (chunk, gather axis) temporaries near 8 MB
    for start in range(0, len(points), chunk):
        part = slice(start, start + chunk)
        out[part] = np.sqrt((by_cell[flat[part]] + offset_sq[points[part, 0]]).min(axis=1))
    return out


def surface_distances(pred, gt, spacing=None) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): (from each pred surface voxel to the gt surface, from each gt
    surface voxel to the pred surface), each in C order of the voxels.

    Exact Euclidean with anisotropic ``spacing``. When one mask is empty, the other's surface voxels all
    get ``max_distance`` and the empty side is an empty array; both empty gives two empty arrays.
    """
    p, g = mask_pair(pred, gt)
    s = as_spacing(spacing, p.ndim)
    surf_p, surf_g = p & ~_erode_cross(p), g & ~_erode_cross(g)
    pts_p, pts_g = np.argwhere(surf_p), np.argwhere(surf_g)
    if pts_p.size == 0 or pts_g.size == 0:
        # A finite penalty, not NaN: a NaN would drop the miss out of a mean (MONAI issue #9095).
        penalty = max_distance(p.shape, s)
        return np.full(len(pts_p), penalty), np.full(len(pts_g), penalty)
    return _nearest_distances(pts_p, surf_g, s), _nearest_distances(pts_g, surf_p, s)


def _asd_msd(distances: Tuple[np.ndarray, np.ndarray]) -> Tuple[float, float]:
    both = np.concatenate(distances)
    return (float(both.mean()), float(both.max())) if both.size else (0.0, 0.0)


def asd(pred, gt, spacing=None) -> float:
    """Average symmetric surface distance (mm): the mean over both directed distance sets together."""
    return _asd_msd(surface_distances(pred, gt, spacing))[0]


def msd(pred, gt, spacing=None) -> float:
    """Maximum symmetric surface distance (mm), i.e. the Hausdorff distance between the surfaces."""
    return _asd_msd(surface_distances(pred, gt, spacing))[1]
