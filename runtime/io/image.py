"""PNG / JPEG / TIFF reader: 8- or 16-bit or float, grayscale or RGB (converted to luma), size-checked before decoding.

Size guards (shared by every reader): an image side below ``MIN_SIDE`` is too small to diagnose, one above
``MAX_SIDE`` too large to decode safely on an edge device. They are checked from the header before the pixels
are decoded wherever the format allows it (PNG IHDR, JPEG SOF, DICOM Rows/Columns, NIfTI dims), and once
more on the decoded array. ``MAX_FILE_BYTES`` caps the file size for the same reason.
"""

import os
import struct

import cv2
import numpy as np

from lungedge.runtime.errors import InputError
from lungedge.runtime.io.quiet import native_stderr

# Refuse images whose side is outside these bounds (checked from the header where the format allows).
MIN_SIDE = 32
MAX_SIDE = 12000
MAX_FILE_BYTES = 256 * 1024 * 1024


def _png_size(head):
    """(h, w) from a PNG's IHDR chunk, or None when ``head`` is not a PNG header (too short included)."""
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    return None


def _jpeg_size(path):
    """(h, w) from the first JPEG start-of-frame marker, or None when the header cannot tell."""
    with open(path, "rb") as fh:
        data = fh.read(1 << 16)
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return h, w
        i += 2 + length
    return None


def check_file(path, name):
    """Raise InputError for a missing, empty or oversized file; returns its size in bytes."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot open ({exc.strerror})") from None
    if size == 0:
        raise InputError(f"{name}: file is empty")
    if size > MAX_FILE_BYTES:
        raise InputError(f"{name}: file is {size} bytes, above the {MAX_FILE_BYTES}-byte limit")
    return size


def check_side(h, w, name):
    """Raise InputError for an image too small to diagnose or too large to decode safely."""
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{name}: image is {w}x{h}, smaller than the {MIN_SIDE}-pixel minimum side")
    if max(h, w) > MAX_SIDE:
        raise InputError(f"{name}: image is {w}x{h}, larger than the {MAX_SIDE}-pixel maximum side; "
                         "downsample it first")


def to_gray(array, name="image"):
    """Grayscale float32 from a decoded 2-D or HxWxC array (ITU-R 601 luma; alpha dropped)."""
    if array.ndim == 3:
        if array.shape[2] == 1:
            array = array[:, :, 0]
        elif array.shape[2] in (3, 4):
            bgr = array[:, :, :3].astype(np.float32)
            array = 0.114 * bgr[:, :, 0] + 0.587 * bgr[:, :, 1] + 0.299 * bgr[:, :, 2]
        else:
            raise InputError(f"{name}: unsupported channel count {array.shape[2]}")
    elif array.ndim != 2:
        raise InputError(f"{name}: unsupported image shape {array.shape}")
    return array.astype(np.float32)


def colour_fraction(raw, intensity_max, tolerance=0.1):
    """Fraction of pixels whose colour channels differ by more than ``tolerance`` of the range (0 for a
    grayscale film stored as RGB; large for a photograph)."""
    step = max(1, int(np.ceil(max(raw.shape[:2]) / 256.0)))
    bgr = raw[::step, ::step, :3].astype(np.float32)
    spread = bgr.max(axis=2) - bgr.min(axis=2)
    return float(np.mean(spread > tolerance * float(intensity_max)))


def read_image(path):
    """Read a PNG/JPEG/TIFF file; returns (2-D float32 array, meta)."""
    with np.errstate(all="ignore"):  # overflow in a damaged file is caught by the finiteness checks instead
        return _read_image(path)


def _read_image(path):
    name = os.path.basename(str(path))
    check_file(path, name)
    with open(path, "rb") as fh:
        head = fh.read(32)
    dims = _png_size(head) or _jpeg_size(path)
    if dims:
        check_side(dims[0], dims[1], name)
    try:
        with native_stderr() as decoder:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own guards (e.g. CV_IO_MAX_IMAGE_WIDTH) raise instead of returning None
        reason = (str(exc).strip().splitlines() or ["decoder error"])[-1]
        raise InputError(f"{name}: not a readable PNG/JPEG/TIFF image (OpenCV: {reason[:200]})") from None
    if raw is None:
        said = decoder.summary()
        raise InputError(f"{name}: not a readable PNG/JPEG/TIFF image" + (f" (decoder: {said})" if said else ""))
    check_side(raw.shape[0], raw.shape[1], name)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(f"{name}: image contains NaN or infinite pixel values")
    if raw.dtype == np.uint8:
        intensity_max = 255.0
    elif raw.dtype == np.uint16:
        intensity_max = 65535.0
    elif raw.dtype in (np.float32, np.float64):
        intensity_max = max(float(raw.max()), 1.0)
    else:
        raise InputError(f"{name}: unsupported pixel type {raw.dtype}")
    was_rgb = raw.ndim == 3 and raw.shape[2] >= 3
    colour = colour_fraction(raw, intensity_max) if was_rgb else 0.0
    gray = to_gray(raw, name)
    if not np.isfinite(gray).all():
        raise InputError(f"{name}: image contains NaN or infinite pixel values")
    meta = {"format": "image", "unit": "display", "intensity_max": intensity_max, "bits": raw.dtype.itemsize * 8,
            "converted_from_rgb": bool(was_rgb), "colour_fraction": colour, "modality": None, "pixel_spacing": None,
            "shape": [int(gray.shape[0]), int(gray.shape[1])]}
    if decoder.summary():  # decoded, but the decoder complained (e.g. a truncated JPEG, grey below the cut)
        meta["decoder_warning"] = decoder.summary()
    return gray, meta


# Every reader module exposes ``read(path) -> (array, meta)`` (see lungedge.runtime.io.READERS).
read = read_image
