"""The images a benchmark scores: one split of a dev-pack style folder, read once with the runtime's readers.

Every variant preprocesses the same decoded arrays with its own manifest steps, and every mask is compared with
the ground truth on the image's own grid, so variants of different input sizes are scored alike. Patient ids are
kept for the patient-level bootstrap but never written out: results carry an anonymous group number instead.
"""

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from lungedge.runtime.datasets import read_labelled_folder, select
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.errors import InputError
from lungedge.runtime.io import read_any


@dataclass
class EvalImage:
    file: str  # path as listed in the manifest
    array: np.ndarray
    meta: dict
    patient: str
    label: str = None
    mask: np.ndarray = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)  # manifest columns (source, age_group, view...)


def read_mask(path):
    """Label mask as uint8 (first channel of a colour file)."""
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(f"cannot read mask {path}")
    return (mask[:, :, 0] if mask.ndim == 3 else mask).astype(np.uint8)


def limit_per_label(records, per_label):
    """The first ``per_label`` records of each label (manifest order): a small, still two-sided subset."""
    seen, out = {}, []
    for r in records:
        if seen.get(r.label, 0) < per_label:
            seen[r.label] = seen.get(r.label, 0) + 1
            out.append(r)
    return out


def load_split(data_dir, split, task, labels=None, max_images=None, progress=None, crop=None):
    """EvalImages of one split: labelled images (classification, labels restricted to ``labels``) or images
    with masks (segmentation). ``max_images`` keeps that many per label (classification) or in all.

    data_dir: a dev-pack folder (manifest.csv) or a folder-per-class tree; split "all" takes every image (an
    external folder). crop: a ``runtime.pipelines.LungCrop`` applied to every decoded image (classifiers
    trained on lung crops)."""
    records = select(read_labelled_folder(data_dir), split=split)
    if task == TaskKind.CLASSIFICATION:
        records = [r for r in records if r.label is not None and (labels is None or r.label in labels)]
        if max_images:
            records = limit_per_label(records, max_images)
    else:
        records = [r for r in records if r.mask]
        if max_images:
            records = records[:max_images]
    if not records:
        raise InputError(f"no {task} images in split {split!r} of {data_dir}")
    out = []
    for r in (progress(records) if progress else records):
        array, meta = read_any(r.image)
        mask = read_mask(r.mask) if task == TaskKind.SEGMENTATION else None
        if mask is not None and mask.shape != array.shape[-2:]:
            raise InputError(f"{r.image}: mask {mask.shape} and image {array.shape} differ in size")
        if crop is not None:
            array, meta, _ = crop(array, meta, {"file": os.path.basename(r.image)})
        out.append(EvalImage(file=r.image, array=array, meta=meta, patient=r.patient_id, label=r.label, mask=mask,
                             extra=dict(r.extra)))
    return out


def group_numbers(images):
    """Anonymous patient group per image (0, 1, 2 ... in order of first appearance)."""
    ids = {}
    return [ids.setdefault(im.patient, len(ids)) for im in images]
