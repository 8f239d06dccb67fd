"""Readers, one module per format, each ``read(path) -> (array, meta)``; ``read_any`` picks one for a path.

``array`` is a 2-D float32 image or a (slices, H, W) volume. ``meta`` holds at least ``format``, ``unit``
("HU" or "display"), ``intensity_max`` (display units; None for HU), ``modality`` ("xray", "ct" or None when
the file does not say), ``pixel_spacing`` ((row, col) mm or None) and ``shape``. The readers import pydicom and
nibabel only when a file of theirs arrives, and never put patient identifiers into ``meta``.
"""

import os

from lungedge.runtime.errors import InputError
from lungedge.runtime.io import dicom, image, nifti

# Format name -> reader. A folder is read as a DICOM CT series.
READERS = {
    "image": image.read,
    "dicom": dicom.read,
    "dicom-series": dicom.read_dicom_series,
    "nifti": nifti.read,
}

# File extension -> format name (".nii.gz" is matched before ".gz" would be).
EXTENSIONS = {
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image", ".bmp": "image",
    ".dcm": "dicom", ".dicom": "dicom",
    ".nii": "nifti", ".nii.gz": "nifti",
}

# Leading bytes -> format name, for files whose extension is missing or misleading.
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"), (b"II*\x00", "image"),
         (b"MM\x00*", "image"), (b"BM", "image"))

VOLUME_FORMATS = ("dicom-series", "nifti")


def _extension(path):
    lower = str(path).lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def sniff_format(path):
    """Format name for ``path``: folder -> dicom-series, DICM preamble -> dicom, else extension, else magic bytes."""
    name = os.path.basename(os.path.normpath(str(path)))
    if os.path.isdir(path):
        return "dicom-series"
    if not os.path.exists(path):
        raise InputError(f"{name}: no such file")
    if dicom.has_dicom_preamble(path):
        return "dicom"
    ext = _extension(path)
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise InputError(f"{name}: file is empty")
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            return fmt
    raise InputError(f"{name}: unsupported file type {ext or '(no extension)'!r}; expected PNG, JPEG, TIFF, "
                     "DICOM or NIfTI")


def is_volume(path):
    """True when ``path`` is read as a volume (a DICOM series folder or a NIfTI file)."""
    return sniff_format(path) in VOLUME_FORMATS


def read_any(path):
    """Read any supported image or volume; returns (array, meta) with ``meta["format"]`` naming the reader."""
    return READERS[sniff_format(path)](path)


def iter_slices(path):
    """Yield (2-D slice, meta) from a volume path one slice at a time (a 2-D image yields itself once)."""
    fmt = sniff_format(path)
    if fmt == "dicom-series":
        yield from dicom.iter_dicom_series(path)
        return
    if fmt == "nifti":
        yield from nifti.iter_slices(path)
        return
    array, meta = READERS[fmt](path)
    frames = array[None] if array.ndim == 2 else array
    for index, frame in enumerate(frames):
        yield frame, dict(meta, slice_index=index, slices=len(frames), shape=[int(s) for s in frame.shape])
