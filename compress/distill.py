"""Knowledge distillation: a trained full baseline (teacher) teaches a compact student from the registry.

Classifiers learn soft targets, ``KL(softmax(teacher/T) || softmax(student/T)) * T^2`` (Hinton et al. 2015),
weighted ``alpha``, plus ``1 - alpha`` of the class-balanced cross-entropy on the true labels. Segmenters
learn the teacher's per-pixel probabilities (BCE against ``sigmoid(teacher/T)``, or MSE on the logits),
plus the baseline's BCE + soft DICE against the ground truth (``models.losses.segmentation_loss``).

The teacher sees exactly the (augmented) batch the student sees, so its logits are computed per batch; without
augmentation they are computed once per image and reused. A teacher trained at another input size gets the
batch resized to its own size (segmentation logits are resized back). Early stopping watches the validation
score of ``models.evaluate.evaluate``; the best weights are restored at the end.
"""

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from lungedge.compress.errors import ConfigError, config_from_dict
from lungedge.models.data import AUGMENT_LEVELS, BatchAugment, source_balanced_weights
from lungedge.models.evaluate import evaluate, predict
from lungedge.models.losses import class_weights, segmentation_loss
from lungedge.models.optim import Stepper, make_optimizer
from lungedge.runtime.enums import TaskKind

SEG_KD_MODES = ("bce", "mse")


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha goes to the hard labels
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 16
    patience: int = 5
    augment: bool = True
    augment_level: str = "standard"  # a key of models.data.AUGMENT_LEVELS
    balance: str = ""  # "source": the baseline's source-balanced sampling (models.data.source_balanced_weights)
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    seg_kd: str = "bce"  # "bce": BCE against the teacher's probabilities; "mse": MSE on the logits
    steps_per_epoch: int = 0  # 0 = whole training split; a positive number caps an epoch (demos, tests)
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size and patience must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.seg_kd not in SEG_KD_MODES:
            raise ConfigError(f"seg_kd {self.seg_kd!r} not in {SEG_KD_MODES}")
        if self.steps_per_epoch < 0:
            raise ConfigError("steps_per_epoch must be >= 0 (0 = the whole split)")
        if self.augment_level not in AUGMENT_LEVELS:
            raise ConfigError(f"augment_level {self.augment_level!r} not in {sorted(AUGMENT_LEVELS)}")
        if self.balance not in ("", "source"):
            raise ConfigError(f"balance {self.balance!r} not in ['', 'source']")

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)

    def to_dict(self):
        return dataclasses.asdict(self)


def soft_target_loss(student_logits, teacher_logits, temperature):
    """``KL(p_teacher || p_student) * T^2`` with both distributions softened by T, mean over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def pixel_kd_loss(student_logits, teacher_logits, mode="bce", temperature=1.0):
    """Per-pixel distillation on the first (foreground) channel, every pixel counted (ignore regions too)."""
    s, t = student_logits[:, 0], teacher_logits[:, 0]
    if mode == "mse":
        return F.mse_loss(s, t)
    temp = float(temperature)
    return F.binary_cross_entropy_with_logits(s / temp, torch.sigmoid(t / temp)) * (temp * temp)


def kd_loss(kind, student_logits, teacher_logits, targets, config, weights=None):
    """``alpha * soft + (1 - alpha) * hard`` for a classification or segmentation batch."""
    if kind == TaskKind.CLASSIFICATION:
        soft = soft_target_loss(student_logits, teacher_logits, config.temperature)
        hard = F.cross_entropy(student_logits, targets, weight=weights)
    else:
        soft = pixel_kd_loss(student_logits, teacher_logits, config.seg_kd, config.temperature)
        hard = segmentation_loss(student_logits, targets)
    return config.alpha * soft + (1.0 - config.alpha) * hard


@torch.no_grad()
def teacher_logits(teacher, x, teacher_size=None):
    """Teacher logits for the student's batch ``x``; resized in and out when the teacher wants another size."""
    size = x.shape[-2:]
    if teacher_size and tuple(teacher_size) != tuple(size):
        x = F.interpolate(x, size=tuple(teacher_size), mode="bilinear", align_corners=False, antialias=True)
    out = teacher(x)
    if out.ndim == 4 and tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return out


def _frozen(teacher):
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _cached_teacher_loader(teacher, dataset, config, teacher_size, generator):
    """Without augmentation the teacher's logits are fixed: compute them once, then batches carry them."""
    images = torch.from_numpy(dataset.images)
    outs = [teacher_logits(teacher, images[i:i + 32], teacher_size) for i in range(0, len(images), 32)]
    ds = TensorDataset(images, torch.as_tensor(dataset.targets), torch.cat(outs))
    return DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=generator,
                      drop_last=len(ds) > config.batch_size)


def distill(teacher, student, spec, train_ds, val_ds, config, teacher_size=None, desc="distill"):
    """Train ``student`` from ``teacher`` on real data; returns ``(student, report)`` with the best weights.

    train_ds, val_ds: ``models.data.TaskDataset`` of the student's input size (``models.data.load_split``).
    teacher_size: the teacher's (H, W) when it differs from the student's.
    """
    torch.manual_seed(config.seed)
    teacher = _frozen(teacher)
    gen = torch.Generator().manual_seed(config.seed)
    sample_weights = None
    if config.balance == "source" and spec.kind == TaskKind.CLASSIFICATION:
        sample_weights = source_balanced_weights(train_ds.sources, train_ds.targets)
    if config.augment and sample_weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(sample_weights.tolist(), len(train_ds), replacement=True,
                                                         generator=gen)
        loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                            drop_last=len(train_ds) > config.batch_size)
    elif config.augment:
        loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, generator=gen,
                            drop_last=len(train_ds) > config.batch_size)
    else:
        loader = _cached_teacher_loader(teacher, train_ds, config, teacher_size, gen)
    steps = len(loader) if not config.steps_per_epoch else min(len(loader), config.steps_per_epoch)
    opt, sched = make_optimizer(student, config, steps)
    weights = (class_weights(train_ds.targets, len(spec.labels), sample_weights)
               if spec.kind == TaskKind.CLASSIFICATION else None)
    teaching = _Teaching(teacher, teacher_size, spec.kind, config, weights,
                         BatchAugment(config.augment_level, gen) if config.augment else None)
    stepper = Stepper(opt, sched)
    best_score, best_state, best_epoch, bad, history = -np.inf, None, 0, 0, []
    t0 = time.time()
    for epoch in range(config.epochs):
        loss = _kd_epoch(teaching, student, loader, stepper, steps, f"{desc} {epoch + 1}/{config.epochs}")
        val = evaluate(spec, predict(student, val_ds), val_ds.targets)
        history.append({"epoch": epoch + 1, "loss": round(loss, 5), "val_score": round(val["score"], 5)})
        tqdm.write(f"[{desc}] epoch {epoch + 1}: loss={loss:.4f} val_score={val['score']:.4f}")
        if val["score"] > best_score:
            best_score, best_epoch, bad = val["score"], epoch + 1, 0
            best_state = copy.deepcopy(student.state_dict())
        else:
            bad += 1
            if bad >= config.patience and epoch + 1 < config.epochs:
                tqdm.write(f"[{desc}] early stop: no validation gain for {config.patience} epochs")
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    report = {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_score": float(best_score),
              "history": history, "seconds": round(time.time() - t0, 1)}
    return student.eval(), report


@dataclass(frozen=True)
class _Teaching:
    """What one distillation run holds fixed: the teacher, the loss settings and the batch augmentation."""

    teacher: object
    teacher_size: object
    kind: str
    config: DistillConfig
    weights: object  # class weights of the hard term (classification) or None
    augment_batch: object  # models.data.BatchAugment or None


def _kd_epoch(teaching, student, loader, stepper, steps, desc):
    """One pass (at most ``steps`` batches); returns the mean loss."""
    student.train()
    total, n = 0.0, 0
    for i, batch in enumerate(tqdm(loader, desc=desc, total=steps, leave=False, unit="batch")):
        if i >= steps:
            break
        if len(batch) == 3:  # cached teacher logits (no augmentation)
            x, y, t_out = batch
        else:
            x, y = batch
            if teaching.augment_batch is not None:
                x, y = teaching.augment_batch(x, y)
            t_out = teacher_logits(teaching.teacher, x, teaching.teacher_size)
        loss = kd_loss(teaching.kind, student(x), t_out, y, teaching.config, teaching.weights)
        stepper.step(loss)
        total += float(loss.detach()) * len(x)
        n += len(x)
    return total / max(n, 1)
