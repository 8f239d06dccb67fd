"""Torch datasets over the runtime's readers and preprocessing, plus batch augmentation for training."""

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.io.image import read_image
from lungedge.runtime.preprocess import preprocess

IGNORE = 255  # mask value of the V7 'ignore' class (devices, markup over the lung)


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
    """Preprocessed images of one split held in memory (the dev pack is small); labels or masks as targets."""

    def __init__(self, records, spec, size, progress=None):
        self.records, self.spec = list(records), spec
        self.size = size
        steps = spec.steps(size)
        self.images = np.zeros((len(self.records), 1, size, size), np.float32)
        self.targets = []
        for i, rec in enumerate(progress(self.records) if progress else self.records):
            array, meta = read_image(rec.image)
            self.images[i], meta = preprocess(array, meta, steps)
            if spec.kind == "classification":
                self.targets.append(spec.labels.index(rec.label))
            else:
                mask = load_mask(rec.mask, meta["letterbox"])[:size, :size]
                self.targets.append(mask)
        self.targets = np.asarray(self.targets, np.int64 if spec.kind == "classification" else np.uint8)
        self.patients = [r.patient_id for r in self.records]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), torch.as_tensor(self.targets[i])


def load_split(data_dir, spec, split, size, progress=None):
    """Dataset of one split of a dev-pack style folder (manifest.csv)."""
    records = select(read_manifest_csv(data_dir), split=split)
    if spec.kind == "classification":
        records = [r for r in records if r.label in spec.labels]
    else:
        records = [r for r in records if r.mask]
    return TaskDataset(records, spec, size, progress)


def augment(images, masks=None, generator=None, max_rotate=10.0, scale=(0.9, 1.1), shift=0.06,
            contrast=0.15):
    """Random affine (rotation, scale, shift) and contrast/brightness jitter on a batch; masks follow."""
    n = images.shape[0]
    g = generator

    def uniform(lo, hi):
        return torch.empty(n).uniform_(lo, hi, generator=g)

    angle = uniform(-max_rotate, max_rotate) * math.pi / 180
    s = uniform(*scale)
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    # Fill outside with the darkest value (the letterbox pad), not 0 after standardisation.
    floor = images.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(images - floor, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + floor
    out = out * uniform(1 - contrast, 1 + contrast).view(n, 1, 1, 1) + uniform(-contrast, contrast).view(n, 1, 1, 1)
    if masks is None:
        return out, None
    m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, m[:, 0].to(masks.dtype)
