"""Training losses: class-balanced cross-entropy (classification), BCE + soft DICE with the ignore label (segmentation)."""

import numpy as np
import torch
import torch.nn.functional as F

from lungedge.models.data import IGNORE
from lungedge.runtime.enums import TaskKind


def class_weights(targets, n, sample_weights=None):
    """Inverse-frequency weights normalised to mean 1 (class-balanced loss), of the sampled label mix."""
    if sample_weights is not None:  # expected counts per class of one epoch drawn with these weights
        sample_weights = np.asarray(sample_weights, np.float64) * (len(targets) / np.sum(sample_weights))
    counts = np.bincount(targets, weights=sample_weights, minlength=n).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def segmentation_loss(logits, masks):
    """BCE + soft DICE on the lung/lesion channel; pixels labelled IGNORE count in neither."""
    valid = (masks != IGNORE).float()
    target = (masks == 1).float()
    logit = logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(logit, target, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    prob = torch.sigmoid(logit) * valid
    inter = (prob * target).sum(dim=(1, 2))
    denom = prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
    soft_dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return bce + soft_dice


def task_loss(kind, weights=None):
    """``loss(logits, targets)`` of a task kind: cross-entropy (``weights``: per class) or ``segmentation_loss``."""
    if kind == TaskKind.CLASSIFICATION:
        return lambda logits, targets: F.cross_entropy(logits, targets, weight=weights)
    return segmentation_loss
