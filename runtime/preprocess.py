"""Preprocessing steps shared by training, calibration, benchmarks and deployment (numpy + OpenCV only).

An image travels as ``(array, meta)``: ``array`` is a 2-D float32 array in the reader's native units
(Hounsfield units for CT DICOM/NIfTI, display values 0..``meta["intensity_max"]`` otherwise), ``meta`` a
plain dict (``unit``, ``intensity_max``, ``modality``, ``pixel_spacing``...). A bundle's manifest lists the
steps by name with their parameters; ``STEPS`` maps each name to its function. The same list, run by
``preprocess``, feeds training, calibration, the benchmark and the bedside runtime, so they cannot drift.
"""

import functools
import math

import cv2
import numpy as np

from lungedge.runtime.errors import BundleError, InputError

# Lung window (HU) used when a CT arrives in Hounsfield units.
LUNG_WINDOW = (-600.0, 1500.0)


def _check_2d(array):
    if array.ndim != 2:
        raise InputError(f"expected a 2-D grayscale image, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("image contains NaN or infinite pixel values")


def window_ct(array, meta, center=LUNG_WINDOW[0], width=LUNG_WINDOW[1]):
    """Map CT to [0, 1]: HU through the window (center, width); display images by their intensity range."""
    _check_2d(array)
    if meta.get("unit") == "HU":
        return _affine_clip01(array, center - width / 2.0, 1.0 / float(width)), meta
    # PNG/JPEG CT slices (the training data) were windowed when they were rendered.
    return _affine_clip01(array, 0.0, 1.0 / float(meta.get("intensity_max", 255.0))), meta


_U8_VALUES = np.arange(256, dtype=np.float32)


def _u8_histogram(u8):
    return cv2.calcHist([u8], [0], None, [256], [0, 256]).ravel()


@functools.lru_cache(maxsize=64)
def _rank_plan(size, qs):
    """For ``np.percentile``'s linear method: the two sorted ranks around each percentile and the weight between."""
    ranks, fractions = [], []
    for q in qs:
        pos = float(q) / 100.0 * (size - 1)
        below = math.floor(pos)
        ranks += [below, min(below + 1, size - 1)]
        fractions.append(pos - below)
    return np.asarray(ranks, np.float64), tuple(fractions)


def _percentiles_from_histogram(hist, size, qs):
    """``np.percentile`` (linear method) of ``size`` integer values 0..255 whose histogram is ``hist``."""
    ranks, fractions = _rank_plan(int(size), tuple(float(q) for q in qs))
    # The value at sorted rank r is the first bin whose running count exceeds r.
    v = np.cumsum(hist).searchsorted(ranks, side="right").tolist()
    return tuple(float(v[2 * i]) + float(v[2 * i + 1] - v[2 * i]) * f for i, f in enumerate(fractions))


def percentiles(a, qs):
    """``np.percentile(a, qs)`` (linear method), exact; a histogram for 8-bit-valued images (4x faster)."""
    lo_val, hi_val = float(a.min()), float(a.max())
    if lo_val >= 0.0 and hi_val <= 255.0 and np.array_equal(a, np.floor(a)):
        return _percentiles_from_histogram(_u8_histogram(a.astype(np.uint8)), a.size, qs)
    return tuple(float(v) for v in np.percentile(a, qs))


def scale_to_unit(array, meta, low_percentile=0.0, high_percentile=100.0):
    """Map an X-ray to [0, 1] by its own intensity range (percentiles clip burned-in text and rulers)."""
    _check_2d(array)
    if low_percentile <= 0.0 and high_percentile >= 100.0:
        lo, hi = float(array.min()), float(array.max())
    else:
        lo, hi = percentiles(array, (low_percentile, high_percentile))
    if hi - lo < 1e-6:
        raise InputError("image has no contrast (all pixels equal); nothing to diagnose")
    return _affine_clip01(array, lo, 1.0 / (hi - lo)), meta


def _affine_clip01(array, offset, scale):
    """clip((array - offset) * scale, 0, 1) as float32 in one new array (5x faster than np.clip here)."""
    out = (array - np.float32(offset)) * np.float32(scale)
    out = out.astype(np.float32, copy=False)
    np.maximum(out, 0.0, out=out)
    np.minimum(out, 1.0, out=out)
    return out


def equalize(array, meta, levels=256):
    """Global histogram equalisation of a [0, 1] image (quantised to ``levels`` grey levels, one LUT pass).

    Spreads every image's grey levels over the same uniform histogram, so scanners, exports and paper figures
    that differ in contrast curve and windowing look alike: one source shortcut fewer. Run it on the content
    (before ``letterbox``), so padding does not count.
    """
    _check_2d(array)
    levels = int(levels)
    if not 2 <= levels <= 65536:
        raise BundleError(f"equalize: levels must lie in 2..65536, got {levels}")
    q = np.rint(np.clip(array, 0.0, 1.0) * (levels - 1)).astype(np.int64)
    hist = np.bincount(q.ravel(), minlength=levels).astype(np.float64)
    cdf = np.cumsum(hist)
    first = cdf[np.flatnonzero(hist)[0]]
    if cdf[-1] - first <= 0:
        raise InputError("image has no contrast (all pixels equal); nothing to diagnose")
    lut = np.clip((cdf - first) / (cdf[-1] - first), 0.0, 1.0).astype(np.float32)
    return lut[q], meta


def letterbox(array, meta, size=(256, 256)):
    """Resize keeping the aspect ratio (area when shrinking, bilinear when enlarging), pad centred with 0."""
    _check_2d(array)
    out_h, out_w = int(size[0]), int(size[1])
    h, w = array.shape
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(array.astype(np.float32), (new_w, new_h), interpolation=interp)
    pad_y, pad_x = (out_h - new_h) // 2, (out_w - new_w) // 2
    out = np.zeros((out_h, out_w), np.float32)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    meta = dict(meta, letterbox={"scale": scale, "pad_x": pad_x, "pad_y": pad_y, "content_w": new_w,
                                 "content_h": new_h, "orig_w": w, "orig_h": h})
    return out, meta


def standardize(array, meta, mean=0.5, std=0.25):
    """Subtract mean and divide by std (the network's input statistics)."""
    return (array - np.float32(mean)) / np.float32(std), meta


STEPS = {
    "window_ct": window_ct,
    "scale_to_unit": scale_to_unit,
    "equalize": equalize,
    "letterbox": letterbox,
    "standardize": standardize,
}


def check_steps(steps):
    """Raise BundleError for an unknown step name or parameter before anything runs."""
    import inspect

    for step in steps:
        name = step.get("op")
        if name not in STEPS:
            raise BundleError(f"unknown preprocessing step {name!r}; known: {sorted(STEPS)}. "
                              "Update lungedge or rebuild the bundle.")
        accepted = set(inspect.signature(STEPS[name]).parameters) - {"array", "meta"}
        unknown = set(step) - {"op"} - accepted
        if unknown:
            raise BundleError(f"step {name!r} has unknown parameters {sorted(unknown)}; accepted: {sorted(accepted)}")


def _xray_plan(steps):
    """(low_percentile, high_percentile, (H, W), mean, std) if ``steps`` are exactly scale_to_unit -> letterbox ->
    standardize (the X-ray recipe), else None."""
    if len(steps) != 3 or [s.get("op") for s in steps] != ["scale_to_unit", "letterbox", "standardize"]:
        return None
    scale, box, norm = steps
    if set(scale) - {"op", "low_percentile", "high_percentile"} or set(box) - {"op", "size"} \
            or set(norm) - {"op", "mean", "std"}:
        return None  # unknown parameters: the step-by-step path reports them
    size = box.get("size", (256, 256))
    return (float(scale.get("low_percentile", 0.0)), float(scale.get("high_percentile", 100.0)),
            (int(size[0]), int(size[1])), norm.get("mean", 0.5), norm.get("std", 0.25))


def _fused_xray(array, meta, plan):
    """The X-ray steps in one pass for an 8-bit-valued image, bit-identical to running them one by one.

    Clip-to-unit is a function of the pixel value alone, so for values 0..255 it is a 256-entry table (cv2.LUT)
    computed with the same float32 operations as ``_affine_clip01``; the percentiles come from the same histogram
    as ``percentiles``; letterbox and standardize then run as in their steps, in place. Returns None when the
    image is not 8-bit-valued (or has another problem): the step-by-step path then gives the result or the error.
    """
    a = array
    if a.ndim != 2 or a.dtype != np.float32 or not a.size:
        return None
    if not a.flags.c_contiguous:  # OpenCV needs positive, dense strides (views such as a[::-1] have neither)
        a = np.ascontiguousarray(a)
    u8 = cv2.convertScaleAbs(a)  # rounds and saturates, without numpy's cast warnings for NaN
    if not np.array_equal(u8, a):  # so false for NaN, negatives, >255 and fractions
        return None
    low_p, high_p, (out_h, out_w), mean, std = plan
    hist = _u8_histogram(u8)
    if low_p <= 0.0 and high_p >= 100.0:
        nonzero = np.flatnonzero(hist)
        lo, hi = float(nonzero[0]), float(nonzero[-1])
    else:
        lo, hi = _percentiles_from_histogram(hist, a.size, (low_p, high_p))
    if hi - lo < 1e-6:
        return None
    table = _affine_clip01(_U8_VALUES, lo, 1.0 / (hi - lo))
    unit = cv2.LUT(u8, table)
    h, w = a.shape
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(unit, (new_w, new_h), interpolation=interp)
    pad_y, pad_x = (out_h - new_h) // 2, (out_w - new_w) // 2
    if (new_h, new_w) == (out_h, out_w):
        out = resized.reshape(1, out_h, out_w)
    else:
        out = np.zeros((1, out_h, out_w), np.float32)
        out[0, pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    np.subtract(out, np.float32(mean), out=out)
    np.divide(out, np.float32(std), out=out)
    meta = dict(meta, letterbox={"scale": scale, "pad_x": pad_x, "pad_y": pad_y, "content_w": new_w,
                                 "content_h": new_h, "orig_w": w, "orig_h": h})
    return out, meta


def preprocess(array, meta, steps):
    """Run the manifest's steps on one image; returns a (1, H, W) float32 array and the updated meta.

    The X-ray recipe on an 8-bit-valued image takes a fused path with bit-identical output (see ``_fused_xray``).
    """
    plan = _xray_plan(steps)
    if plan is not None and isinstance(array, np.ndarray):
        fused = _fused_xray(array, meta, plan)
        if fused is not None:
            return fused
    return preprocess_stepwise(array, meta, steps)


def preprocess_stepwise(array, meta, steps):
    """``preprocess`` one step after the other (the definition the fused path is tested against)."""
    meta = dict(meta)
    out = np.asarray(array)
    for step in steps:
        params = {k: v for k, v in step.items() if k != "op"}
        try:
            fn = STEPS[step["op"]]
        except KeyError:
            raise BundleError(f"unknown preprocessing step {step.get('op')!r}") from None
        out, meta = fn(out, meta, **params)
    return np.ascontiguousarray(out[None].astype(np.float32)), meta


def undo_letterbox(mask, box):
    """Map a (H, W) mask from network space back onto the original image grid (nearest neighbour)."""
    crop = mask[box["pad_y"]:box["pad_y"] + box["content_h"], box["pad_x"]:box["pad_x"] + box["content_w"]]
    return cv2.resize(crop.astype(np.uint8), (box["orig_w"], box["orig_h"]), interpolation=cv2.INTER_NEAREST)


def xray_steps(size, equalize=False):
    """Default X-ray steps for a square network input of side ``size`` (``equalize``: histogram-equalised)."""
    steps = [{"op": "scale_to_unit", "low_percentile": 0.5, "high_percentile": 99.5}]
    if equalize:
        steps.append({"op": "equalize", "levels": 256})
    return steps + [{"op": "letterbox", "size": [size, size]}, {"op": "standardize", "mean": 0.5, "std": 0.25}]


def ct_steps(size):
    """Default CT steps for a square network input of side ``size`` (lung window for HU input)."""
    return [{"op": "window_ct", "center": LUNG_WINDOW[0], "width": LUNG_WINDOW[1]},
            {"op": "letterbox", "size": [size, size]},
            {"op": "standardize", "mean": 0.5, "std": 0.25}]
