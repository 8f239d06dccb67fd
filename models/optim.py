"""Optimiser, schedule and seeds shared by baseline training and distillation."""

import math
import random
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, cfg, steps_per_epoch):
    """AdamW with a linear warm-up then a cosine decay; ``cfg``: lr, weight_decay, epochs, warmup_epochs."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def schedule(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


@dataclass(frozen=True)
class Stepper:
    """An optimiser and its schedule, stepped together once per batch."""

    optimizer: object
    scheduler: object

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
