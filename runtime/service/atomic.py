"""Outputs a reader never sees half-written (flushed, then renamed into place) and names that never overwrite."""

import os

from lungedge.runtime import report

# Volume and image extensions stripped from an input name to make its result stem (".nii.gz" before ".gz").
STEM_EXTENSIONS = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def split_name(name):
    """(stem, extension) with the known image and volume extensions (".nii.gz" as one)."""
    lower = name.lower()
    for ext in STEM_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[:-len(ext)], name[-len(ext):]
    return name, ""


def free_name(folder, name, companions=()):
    """``name``, or ``stem-1.ext``, ``stem-2.ext``...: the first that ``folder`` holds neither alone nor with any
    of the ``companions`` suffixes appended."""
    stem, ext = split_name(name)
    candidate, n = name, 0
    while any(os.path.lexists(os.path.join(folder, candidate + s)) for s in ("",) + tuple(companions)):
        n += 1
        candidate = f"{stem}-{n}{ext}"
    return candidate


def fsync_path(path, directory=False):
    """Flush a file (or, with ``directory``, a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp, final):
    """Flush ``tmp`` to disk and rename it over ``final`` (atomic within one file system)."""
    fsync_path(tmp)
    os.replace(tmp, final)


def write_json_atomic(data, path):
    """Write ``data`` as JSON to ``path`` through a hidden temporary file in the same folder."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        report.write_json(data, tmp)
        commit(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_overlay_atomic(image, result, path):
    """Write the overlay PNG of ``image`` ((array, meta)) and ``result`` to ``path`` through a hidden file."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".tmp-{name}")  # keeps ".png" last: OpenCV picks the format by extension
    try:
        report.write_overlay(image[0], image[1], result, tmp)
        commit(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
