"""Torch datasets over the runtime's readers and preprocessing, plus batch augmentation for training."""

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lungedge.models.errors import TrainConfigError
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.io.image import read_image
from lungedge.runtime.preprocess import preprocess
from lungedge.runtime.tasks import IGNORE  # noqa: F401  (re-exported: one definition, in the runtime)


def load_mask(path, box):
    """Read a label mask and letterbox it exactly like its image (nearest neighbour)."""
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(path)
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    out = np.zeros((box["content_h"] + 2 * box["pad_y"] + 2, box["content_w"] + 2 * box["pad_x"] + 2), np.uint8)
    resized = cv2.resize(mask, (box["content_w"], box["content_h"]), interpolation=cv2.INTER_NEAREST)
    out[box["pad_y"]:box["pad_y"] + box["content_h"], box["pad_x"]:box["pad_x"] + box["content_w"]] = resized
    return out


class TaskDataset(Dataset):
    """Preprocessed images of one split held in memory (the dev pack is small); labels or masks as targets.

    crop: an optional ``runtime.pipelines.LungCrop`` applied to each decoded image before the preprocessing
    steps, exactly as ``XrayPipeline`` applies it at inference (classification only).
    """

    def __init__(self, records, spec, size, progress=None, steps=None, crop=None):
        self.records, self.spec = list(records), spec
        self.size = size
        steps = steps or spec.steps(size)
        if crop is not None and spec.kind != TaskKind.CLASSIFICATION:
            raise TrainConfigError("a lung crop applies to classification images only; pass crop=None for masks")
        self.images = np.zeros((len(self.records), 1, size, size), np.float32)
        self.targets = []
        for i, rec in enumerate(progress(self.records) if progress else self.records):
            array, meta = read_image(rec.image)
            if crop is not None:
                array, meta, _ = crop(array, meta, {"file": os.path.basename(rec.image)})
            self.images[i], meta = preprocess(array, meta, steps)
            if spec.kind == TaskKind.CLASSIFICATION:
                self.targets.append(spec.labels.index(rec.label))
            else:
                mask = load_mask(rec.mask, meta["letterbox"])[:size, :size]
                self.targets.append(mask)
        self.targets = np.asarray(self.targets, np.int64 if spec.kind == TaskKind.CLASSIFICATION else np.uint8)
        self.patients = [r.patient_id for r in self.records]
        self.sources = [r.extra.get("source", "") for r in self.records]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), torch.as_tensor(self.targets[i])


def load_split(data_dir, spec, split, size, progress=None, steps=None, crop=None):
    """Dataset of one split of a dev-pack style folder (manifest.csv); ``crop``: see ``TaskDataset``."""
    records = select(read_manifest_csv(data_dir), split=split)
    if spec.kind == TaskKind.CLASSIFICATION:
        records = [r for r in records if r.label in spec.labels]
    else:
        records = [r for r in records if r.mask]
    return TaskDataset(records, spec, size, progress, steps=steps, crop=crop)


def source_balanced_weights(sources, targets, power=0.5):
    """Per-sample weights giving each (source, label) cell a share proportional to count**power.

    power 0 equalises the cells (tiny cells would then be repeated endlessly), 1 is plain shuffling; 0.5
    shrinks the large cells that carry a source shortcut (one source, one label) without overfitting the few
    images of a small cell.
    """
    cells = list(zip(sources, np.asarray(targets).tolist()))
    counts = {c: cells.count(c) for c in set(cells)}
    w = np.array([counts[c] ** power / counts[c] for c in cells], np.float64)
    return w / w.sum()


@dataclass(frozen=True)
class AugmentLevel:
    """Strength of ``augment``: affine range, contrast jitter and the optional "strong" terms (off at 0/None).

    ``aspect`` anisotropic scale, ``gamma`` range applied on the [0, 1] image (undoing the ``standardize``
    step's ``mean``/``std``), ``blur`` probability of a 3x3 blur or sharpen, and Gaussian ``noise`` (std in
    [0, 1] units, drawn per image up to this value).
    """

    max_rotate: float = 10.0
    scale: tuple = (0.9, 1.1)
    shift: float = 0.06
    contrast: float = 0.15
    aspect: float = 0.0
    gamma: tuple = None
    blur: float = 0.0
    noise: float = 0.0
    mean: float = 0.5
    std: float = 0.25


# Augmentation strengths for ``augment`` by name (the train and distill configs name one).
AUGMENT_LEVELS = {
    "standard": AugmentLevel(max_rotate=10.0, scale=(0.9, 1.1), shift=0.06, contrast=0.15),
    # Against source shortcuts: wider geometry (incl. anisotropic scale), gamma, blur/sharpen and noise, so
    # scanner- and export-specific contrast, sharpness and framing stop being cues.
    "strong": AugmentLevel(max_rotate=15.0, scale=(0.8, 1.2), shift=0.10, contrast=0.3, aspect=0.1,
                           gamma=(0.6, 1.6), blur=0.5, noise=0.05),
}


def augment(images, masks=None, generator=None, level=AUGMENT_LEVELS["standard"]):
    """Random affine (rotation, scale, shift) and contrast/brightness jitter on a batch; masks follow.

    level: an ``AugmentLevel`` (``AUGMENT_LEVELS[name]``).
    """
    max_rotate, scale, shift, contrast = level.max_rotate, level.scale, level.shift, level.contrast
    aspect, gamma, blur, noise, mean, std = level.aspect, level.gamma, level.blur, level.noise, level.mean, level.std
    n = images.shape[0]
    g = generator

    def uniform(lo, hi):
        return torch.empty(n).uniform_(lo, hi, generator=g)

    angle = uniform(-max_rotate, max_rotate) * math.pi / 180
    s = uniform(*scale)
    sx, sy = (s * (1 + uniform(-aspect, aspect)), s * (1 + uniform(-aspect, aspect))) if aspect else (s, s)
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx, -sin / sx, tx], 1), torch.stack([sin / sy, cos / sy, ty], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    # Fill outside with the darkest value (the letterbox pad), not 0 after standardisation.
    floor = images.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(images - floor, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + floor
    if gamma is not None:
        unit = (out * std + mean).clamp(0.0, 1.0)
        unit = unit ** uniform(*gamma).view(n, 1, 1, 1)
        out = (unit - mean) / std
    if blur:
        kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0)
        smooth = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel)
        amount = uniform(-1.0, 1.0).view(n, 1, 1, 1) * (uniform(0, 1) < blur).float().view(n, 1, 1, 1)
        out = out + amount * (smooth - out)  # > 0 blurs, < 0 sharpens (unsharp mask)
    if noise:
        out = out + torch.randn(out.shape, generator=g) * (uniform(0, noise).view(n, 1, 1, 1) / std)
    out = out * uniform(1 - contrast, 1 + contrast).view(n, 1, 1, 1) + uniform(-contrast, contrast).view(n, 1, 1, 1)
    if masks is None:
        return out, None
    m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, m[:, 0].to(masks.dtype)


class BatchAugment:
    """``(images, targets) -> (images, targets)``: ``augment`` at a named level; masks follow, labels pass."""

    def __init__(self, level, generator):
        self.level, self.generator = AUGMENT_LEVELS[level], generator

    def __call__(self, images, targets):
        images, masks = augment(images, targets if targets.ndim == 3 else None, self.generator, self.level)
        return images, targets if masks is None else masks
