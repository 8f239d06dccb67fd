"""NIfTI reader (nibabel, imported lazily): CT volumes in HU, reoriented to the closest canonical (RAS+) frame.

A volume comes back as (slices, rows, cols): axial slices ordered inferior to superior, each shown the
radiological way (anterior up, patient right on the image left), the same layout as a DICOM CT series.
``pixel_spacing`` is (row, col) in mm, ``slice_spacing`` the distance between slices in mm.
"""

import logging
import os
import warnings

import numpy as np

from lungedge.runtime.errors import InputError, LungedgeError
from lungedge.runtime.io.dicom import MAX_FRAMES
from lungedge.runtime.io.image import check_file, check_side


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise InputError("reading NIfTI needs nibabel: pip install nibabel") from None
    _silence()
    return nibabel


def _silence():
    """nibabel reports header fix-ups ("sizeof_hdr should be 348...") on its own stderr handler; keep them off."""
    logger = logging.getLogger("nibabel.global")
    if not logger.disabled:
        logger.disabled = True


def _load(path, name):
    """Canonical image holding the stored (unscaled, usually int16) data plus the (slope, intercept) to HU."""
    nib = _nibabel()
    check_file(path, name)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for damaged headers
        raise InputError(f"{name}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():  # nibabel warns on damaged affines
            warnings.simplefilter("ignore")
            return _checked(nib, img, name)
    except LungedgeError:
        raise
    except Exception as exc:  # a damaged affine or header field fails inside nibabel, with many types
        raise InputError(f"{name}: corrupt NIfTI header ({type(exc).__name__}: {str(exc)[:200]})") from None


def _checked(nib, img, name):
    """Size guards from the header, then the canonical image and its (slope, intercept)."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise InputError(f"{name}: expected a 3-D volume, got shape {tuple(img.shape)}")
    # Size guards from the header, before any voxel is read: which stored axes become rows/cols/slices.
    axis_of = {int(out): i for i, (out, _) in enumerate(nib.io_orientation(img.affine)[:3])}
    check_side(shape[axis_of.get(1, 1)], shape[axis_of.get(0, 0)], name)
    if shape[axis_of.get(2, 2)] > MAX_FRAMES:
        raise InputError(f"{name}: {shape[axis_of.get(2, 2)]} slices, above the {MAX_FRAMES}-slice limit")
    proxy = img.dataobj
    slope = getattr(proxy, "slope", 1.0)
    inter = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    try:
        raw = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
    except Exception as exc:
        raise InputError(f"{name}: corrupt or truncated NIfTI data ({type(exc).__name__}: {exc})") from None
    raw = raw.reshape(shape)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(raw, img.affine))
    return canonical, slope, inter


def _layout(canonical):
    """(slices, rows, cols) view of a RAS+ array: slices inferior->superior, anterior up, patient right left."""
    data = np.asanyarray(canonical.dataobj)
    return np.transpose(data, (2, 1, 0))[:, ::-1, ::-1]


def _meta(canonical, name, n_slices):
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    rows, cols = canonical.shape[1], canonical.shape[0]
    return {"format": "nifti", "unit": "HU", "intensity_max": None, "modality": "ct",
            "pixel_spacing": (zooms[1], zooms[0]), "slice_spacing": zooms[2],
            "shape": [n_slices, int(rows), int(cols)], "frames": n_slices, "orientation": "RAS canonical"}


def iter_slices(path):
    """Yield (HU slice, meta) one axial slice at a time, inferior to superior."""
    name = os.path.basename(str(path))
    canonical, slope, inter = _load(path, name)
    view = _layout(canonical)
    meta = _meta(canonical, name, view.shape[0])
    for index in range(view.shape[0]):
        with np.errstate(all="ignore"):  # a huge slope overflows to inf, refused just below
            hu = view[index].astype(np.float32) * np.float32(slope) + np.float32(inter)
        if not np.isfinite(hu).all():
            raise InputError(f"{name}: slice {index} contains NaN or infinite values")
        yield np.ascontiguousarray(hu), dict(meta, slice_index=index, slices=view.shape[0])


def read(path):
    """Read a NIfTI CT volume; returns ((slices, H, W) float32 HU volume, meta)."""
    name = os.path.basename(str(path))
    canonical, slope, inter = _load(path, name)
    with np.errstate(all="ignore"):
        volume = _layout(canonical).astype(np.float32) * np.float32(slope) + np.float32(inter)
    if not np.isfinite(volume).all():
        raise InputError(f"{name}: volume contains NaN or infinite values")
    return np.ascontiguousarray(volume), _meta(canonical, name, volume.shape[0])
