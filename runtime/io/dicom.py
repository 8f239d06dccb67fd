"""DICOM reader (pydicom, imported lazily): X-ray (DX/CR) as display values, CT in Hounsfield units.

X-ray: modality LUT, then the VOI LUT or window (first one), MONOCHROME1 inverted so that dense is bright;
values run 0..``intensity_max``. CT: RescaleSlope/Intercept to HU (``unit`` "HU"). Multi-frame files return
a (frames, rows, cols) array. ``iter_dicom_series``/``read_dicom_series`` assemble a folder of CT slices in
patient order. Patient identifiers are never copied into ``meta``, and pydicom's own warnings (which can quote
element values) are kept out of the logs.
"""

import contextlib
import logging
import os
import re
import warnings

import numpy as np

from lungedge.runtime.enums import Modality
from lungedge.runtime.errors import InputError, LungedgeError
from lungedge.runtime.io.image import check_file, check_side, to_gray
from lungedge.runtime.io.quiet import native_stderr

MODALITIES = {"DX": "xray", "CR": "xray", "CT": "ct"}
MAX_FRAMES = 2000
# Compressed transfer syntaxes pydicom cannot decode by itself, with what provides a decoder.
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "pillow, pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg, pillow, or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg + pylibjpeg-openjpeg, pillow, or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg + pylibjpeg-openjpeg, pillow, or python-gdcm",
}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise InputError("reading DICOM needs pydicom: pip install pydicom") from None
    _silence(pydicom)
    return pydicom


def _silence(pydicom):
    """Keep pydicom's parser warnings out of logs and stderr: they can quote element values, names included."""
    logger = logging.getLogger("pydicom")
    if logger.propagate:
        logger.propagate = False
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


@contextlib.contextmanager
def _damaged(name):
    """Any untyped failure while reading the header or pixels of a damaged file becomes an InputError.

    pydicom parses elements lazily, so a damaged element (unknown VR, bad length, unparsable number) raises
    only when first touched, from wherever that is (KeyError, ValueError, NotImplementedError, struct.error...).
    """
    try:
        yield
    except LungedgeError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: corrupt or truncated DICOM ({type(exc).__name__}: {_short(exc)})") from None


def _short(exc, limit=200):
    text = str(exc)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _luts():
    """(apply_modality_lut, apply_voi_lut) from pydicom 3 (pydicom.pixels) or pydicom 2."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _decoder_available(uid):
    """True if pydicom has a working decoder for the transfer syntax ``uid``."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2
        import pydicom.config

        return any(h.supports_transfer_syntax(uid) and h.is_available() for h in pydicom.config.pixel_data_handlers)
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def has_dicom_preamble(path):
    """True if the file carries the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _open(path, name, stop_before_pixels=False):
    """Parse a DICOM file; any parser failure becomes an InputError naming the file."""
    pydicom = _pydicom()
    check_file(path, name)
    try:
        # Large values (the pixel data) are read only when touched, after the header checks.
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, defer_size="64 KB")
    except pydicom.errors.InvalidDicomError:
        raise InputError(f"{name}: not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise InputError(f"{name}: corrupt or truncated DICOM ({type(exc).__name__}: {_short(exc)})") from None


def _modality(ds, name):
    code = str(ds.get("Modality", "") or "").upper()
    if not code:
        return None
    if code not in MODALITIES:
        raise InputError(f"{name}: wrong modality {code!r}; lungedge reads chest X-ray (DX, CR) and CT only")
    return MODALITIES[code]


def _spacing(ds):
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


def _check_header(ds, name):
    """Size guards from Rows/Columns/NumberOfFrames, before any pixel is decoded."""
    if "PixelData" not in ds:
        raise InputError(f"{name}: corrupt or truncated DICOM, or not an image object: no pixel data found")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_side(rows, cols, name)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > MAX_FRAMES:
        raise InputError(f"{name}: {frames} frames, above the {MAX_FRAMES}-frame limit")
    return rows, cols, frames


def _pixels(ds, name):
    uid = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if uid in DECODER_HINTS and not _decoder_available(uid):
        raise InputError(f"{name}: pixel data is compressed (transfer syntax {uid}) and no decoder for it is "
                         f"installed; install one of: {DECODER_HINTS[uid]}")
    try:
        with native_stderr() as decoder:  # Pillow's and pylibjpeg's C decoders may print to descriptor 2
            return ds.pixel_array
    except Exception as exc:  # decoder errors differ between plugins and pydicom versions
        said = decoder.summary()
        raise InputError(f"{name}: corrupt or truncated pixel data ({type(exc).__name__}: {_short(exc)})"
                         + (f" (decoder: {said})" if said else "")) from None


def _display_range(ds, used_voi_lut):
    """Nominal (low, high) of the values after the modality and VOI LUTs, as pydicom produces them."""
    if used_voi_lut:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 8) or 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2 ** bits - 1
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return float(low), float(high)


def _xray_values(arr, ds):
    """Display values 0..intensity_max after modality LUT, VOI LUT/window and MONOCHROME1 inversion."""
    apply_modality_lut, apply_voi_lut = _luts()
    arr = apply_modality_lut(arr, ds)
    has_lut = bool(ds.get("VOILUTSequence")) and ds.VOILUTSequence[0].get("LUTDescriptor") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut or has_window:
        arr = apply_voi_lut(arr, ds, index=0)
    low, high = _display_range(ds, used_voi_lut=has_lut)
    arr = np.clip(arr.astype(np.float32), low, high) - np.float32(low)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = np.float32(high - low) - arr
    return arr, high - low


def _frames_gray(arr, ds, frames, name):
    """Pixel array as (frames, rows, cols) grayscale; colour samples converted to luma."""
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        arr = arr if frames > 1 else arr[None]
        arr = np.stack([to_gray(f[:, :, ::-1], name) for f in arr])  # to_gray expects OpenCV's BGR
        return arr
    return arr if frames > 1 else arr[None]


def read(path):
    """Read one DICOM file; returns (2-D float32 array, or (frames, H, W) for multi-frame, meta)."""
    name = os.path.basename(str(path))
    ds = _open(path, name)
    with _damaged(name), np.errstate(all="ignore"):  # overflow from damaged LUTs shows up as non-finite values
        return _read_dataset(ds, name)


def _read_dataset(ds, name):
    modality = _modality(ds, name)
    rows, cols, frames = _check_header(ds, name)
    arr = _frames_gray(_pixels(ds, name), ds, frames, name)
    if modality == Modality.CT:
        apply_modality_lut, _ = _luts()
        out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        unit, intensity_max = "HU", None
    else:
        out, intensity_max = _xray_values(arr, ds)
        unit = "display"
    if not np.isfinite(out).all():
        raise InputError(f"{name}: image contains NaN or infinite pixel values")
    out = out[0] if frames == 1 else out
    meta = {"format": "dicom", "unit": unit, "intensity_max": intensity_max, "modality": modality,
            "pixel_spacing": _spacing(ds), "shape": [int(s) for s in out.shape], "frames": frames,
            "photometric": str(ds.get("PhotometricInterpretation", "")),
            # For quality control: projection and body part (codes, not identifiers); the age as a number only.
            "view_position": _code(ds.get("ViewPosition")), "body_part": _code(ds.get("BodyPartExamined")),
            "patient_age_years": parse_age_years(ds.get("PatientAge")),
            "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))}
    return out, meta


def _code(value):
    """A short upper-case code string (ViewPosition, BodyPartExamined), or None when absent or empty."""
    text = str(value or "").strip().upper()
    return text[:64] or None


def parse_age_years(text):
    """DICOM PatientAge ("045Y", "003M", "010W", "005D") as years; None when absent or malformed."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(text or "").upper())
    if not match:
        return None
    return int(match.group(1)) / {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[match.group(2)]


def _slice_key(ds, index):
    """Sort key: position along the slice normal, else InstanceNumber, else the file order."""
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is not None and len(position) == 3:
        if orientation is not None and len(orientation) == 6:
            normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        else:
            normal = np.array([0.0, 0.0, 1.0])
        return (0, float(np.dot(normal, np.array(position, float))), index)
    if ds.get("InstanceNumber") is not None:
        return (1, float(ds.InstanceNumber), index)
    return (2, 0.0, index)


def _series_headers(folder):
    """Headers of the DICOM files in ``folder`` sorted into patient order, checked to form one CT series."""
    name = os.path.basename(os.path.normpath(str(folder)))
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
    files = [f for f in files if os.path.isfile(f) and (f.lower().endswith((".dcm", ".dicom")) or has_dicom_preamble(f))]
    if not files:
        raise InputError(f"{name}: folder holds no DICOM files")
    if len(files) > MAX_FRAMES:
        raise InputError(f"{name}: {len(files)} slices, above the {MAX_FRAMES}-slice limit")
    headers = [(f, _open(f, os.path.basename(f), stop_before_pixels=True)) for f in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(f"{name}: folder mixes {len(series)} series; pass one series per folder")
    for f, ds in headers:
        if _modality(ds, os.path.basename(f)) not in ("ct", None):
            raise InputError(f"{name}: {os.path.basename(f)} is not CT; a slice folder must hold one CT series")
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"{name}: slices differ in size {sorted(sizes)}")
    order = sorted(range(len(headers)), key=lambda i: _slice_key(headers[i][1], i))
    return [headers[i] for i in order]


def series_headers(folder):
    """[(path, header dataset)] of the CT slices in ``folder`` in patient order (checked to form one series)."""
    return _series_headers(folder)


def series_files(folder):
    """Paths of the CT slices in ``folder`` in patient order: the order ``iter_dicom_series`` yields them."""
    return [path for path, _ in _series_headers(folder)]


def _slice_spacing(headers):
    keys = [_slice_key(ds, i) for i, (_, ds) in enumerate(headers)]
    if len(keys) > 1 and all(k[0] == 0 for k in keys):
        steps = np.diff([k[1] for k in keys])
        return float(np.median(np.abs(steps)))
    thickness = headers[0][1].get("SliceThickness")
    return float(thickness) if thickness else None


def iter_dicom_series(folder, headers=None):
    """Yield (HU slice, meta) for a folder of CT slices in patient order, reading one file at a time.

    ``headers``: the folder's ``series_headers`` when the caller has read them already.
    """
    with _damaged(os.path.basename(os.path.normpath(str(folder)))):
        headers = _series_headers(folder) if headers is None else headers
        spacing = _slice_spacing(headers)
    for index, (path, _) in enumerate(headers):
        array, meta = read(path)
        if array.ndim != 2:
            raise InputError(f"{os.path.basename(path)}: multi-frame file inside a slice folder")
        meta.update(format="dicom-series", slice_index=index, slices=len(headers), slice_spacing=spacing)
        yield array, meta


def read_dicom_series(folder):
    """Read a folder of CT slices as a (slices, H, W) HU volume ordered by ImagePositionPatient."""
    slices, metas = [], []
    for array, slice_meta in iter_dicom_series(folder):
        slices.append(array)
        metas.append(slice_meta)
    volume = np.stack(slices).astype(np.float32)
    meta = {k: v for k, v in metas[0].items() if k != "slice_index"}
    meta.update(shape=[int(s) for s in volume.shape], frames=len(slices))
    return volume, meta
