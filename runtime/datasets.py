"""Dataset indexes (pure Python): the dev pack's manifest CSV, folder-per-class trees, image/mask folder pairs.

A dataset is a list of ``Record``; ``split`` is train/val/test assigned per patient, never per image, so a
patient never sits on both sides of a split. Readers never decode pixels; that is ``lungedge.runtime.io``.
"""

import csv
import hashlib
import os
from dataclasses import dataclass, field

from lungedge.runtime.errors import InputError

SPLITS = ("train", "val", "test")
CORE_COLUMNS = ("file", "label", "mask_file", "patient_id", "split")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class Record:
    image: str
    patient_id: str
    split: str
    label: str = None
    mask: str = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def split_for(key, fractions=(0.70, 0.15, 0.15)):
    """Deterministic train/val/test split from a stable key (patient id): SHA-1 of the key, not of the image."""
    u = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def check_patient_splits(records):
    """Raise InputError if any patient appears in more than one split."""
    seen = {}
    for r in records:
        other = seen.setdefault(r.patient_id, r.split)
        if other != r.split:
            raise InputError(f"a patient appears in both {other!r} and {r.split!r} splits; splits must be per patient")
    return records


def read_manifest_csv(folder, manifest="manifest.csv"):
    """Read a dev-pack style folder: ``manifest.csv`` with file, label and/or mask_file, patient_id, split."""
    path = os.path.join(folder, manifest)
    if not os.path.isfile(path):
        raise InputError(f"no {manifest} in {folder}")
    records = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            patient = row.get("patient_id") or row["file"]
            split = row.get("split") or split_for(patient)
            if split not in SPLITS:
                continue
            mask = row.get("mask_file") or None
            # Every other non-empty column (source, age_group, view, licence...) rides along for subgroup
            # reports; the patient id stays in ``patient_id`` only.
            extra = {k: v for k, v in row.items() if k and v and k not in CORE_COLUMNS}
            records.append(Record(image=os.path.join(folder, row["file"]), patient_id=patient, split=split,
                                  label=row.get("label") or None,
                                  mask=os.path.join(folder, mask) if mask else None, extra=extra))
    return check_patient_splits(records)


def _patient_from_name(name, sep):
    stem = os.path.splitext(name)[0]
    return stem.split(sep)[0] if sep else stem


def read_class_folders(root, patient_sep=None):
    """Folder-per-class tree (``root/<label>/*.png``, optionally ``root/<split>/<label>/``).

    Patient ids come from the file name up to ``patient_sep`` (e.g. ``_`` for ``person12_virus_3.jpeg``), or
    the whole stem; splits come from the folder when present, else from a hash of the patient id.
    """
    records = []
    top = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    has_split_dirs = bool(top) and set(top) <= set(SPLITS)
    layouts = [(s, os.path.join(root, s)) for s in top] if has_split_dirs else [(None, root)]
    for split, base in layouts:
        for label in sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))):
            for name in sorted(os.listdir(os.path.join(base, label))):
                if not name.lower().endswith(IMAGE_EXTS):
                    continue
                patient = f"{label}:{_patient_from_name(name, patient_sep)}"
                records.append(Record(image=os.path.join(base, label, name), patient_id=patient,
                                      split=split or split_for(patient), label=label))
    if not records:
        raise InputError(f"no images found under {root} (expected <label>/ or <split>/<label>/ folders)")
    if not has_split_dirs:
        check_patient_splits(records)
    return records


def read_image_mask_pairs(images_dir, masks_dir, mask_suffix="_mask", patient_sep=None):
    """Image/mask folder pairs matched by stem (``a.png`` with ``a_mask.png`` or ``a.png``)."""
    masks = {}
    for name in os.listdir(masks_dir):
        stem = os.path.splitext(name)[0]
        masks[stem[:-len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem] = name
    records = []
    for name in sorted(os.listdir(images_dir)):
        stem = os.path.splitext(name)[0]
        if not name.lower().endswith(IMAGE_EXTS) or stem not in masks:
            continue
        patient = _patient_from_name(name, patient_sep)
        records.append(Record(image=os.path.join(images_dir, name), patient_id=patient, split=split_for(patient),
                              mask=os.path.join(masks_dir, masks[stem])))
    if not records:
        raise InputError(f"no image/mask pairs matched between {images_dir} and {masks_dir}")
    return check_patient_splits(records)


def read_nifti_pairs(images_dir, masks_dir):
    """NIfTI volumes with masks of the same name (``case.nii.gz`` in both folders); one record per volume."""
    names = sorted(n for n in os.listdir(images_dir) if n.endswith((".nii", ".nii.gz")))
    records = [Record(image=os.path.join(images_dir, n), patient_id=n.split(".")[0], split=split_for(n.split(".")[0]),
                      mask=os.path.join(masks_dir, n)) for n in names if os.path.exists(os.path.join(masks_dir, n))]
    if not records:
        raise InputError(f"no NIfTI image/mask pairs between {images_dir} and {masks_dir}")
    return records


def select(records, split=None, labels=None):
    """Records of one split ("all" or None: every split) and, optionally, of the given labels."""
    split = None if split == "all" else split
    return [r for r in records if (split is None or r.split == split) and (labels is None or r.label in labels)]


def read_labelled_folder(folder, patient_sep=None):
    """A dev-pack folder (``manifest.csv``) or, without one, a folder-per-class tree (external data)."""
    if os.path.isfile(os.path.join(folder, "manifest.csv")):
        return read_manifest_csv(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{folder} is not a folder")
    return read_class_folders(folder, patient_sep=patient_sep)
