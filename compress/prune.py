"""Structured channel pruning with torch-pruning: its dependency graph decides what changes together.

Importance criteria: L2 magnitude, batch-norm scale, first-order Taylor on real batches. The target is a
MACs ratio reached in ``iterative_steps`` steps (each step removes the same share of channels until the
MACs fall to the target); channel counts are rounded to multiples of ``round_to``. The classifier head and
the segmentation output conv (and attention ``psi`` convs, whose single channel gates a skip) are never pruned.
"""

from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from lungedge.compress.errors import ConfigError, config_from_dict

IMPORTANCES = ("l2", "bn_scale", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    macs_ratio: float = 0.5  # keep this fraction of the MACs (0.5 = halve the compute)
    importance: str = "l2"
    global_pruning: bool = False
    round_to: int = 8
    iterative_steps: int = 4
    max_channel_ratio: float = 0.9  # never remove more than this share of one layer's channels

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance {self.importance!r} not in {IMPORTANCES}")
        if not 0.0 < self.macs_ratio <= 1.0:
            raise ConfigError(f"macs_ratio must be in (0, 1], got {self.macs_ratio}")

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)


def output_layers(model):
    """Layers whose output channels are the model's interface (heads) or single-channel gates."""
    keep = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features <= 16:
            keep.append(m)
        elif isinstance(m, nn.Conv2d) and (name.endswith("head") or m.out_channels == 1):
            keep.append(m)
    return keep


def make_importance(name):
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def count_macs(model, example):
    """(MACs, parameters) of one forward pass on ``example``."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune(model, example, config, loss_fn=None, batches=(), fine_tune=None):
    """Prune ``model`` in place to ``config.macs_ratio`` of its MACs; returns a log of steps.

    ``loss_fn(model, batch) -> loss`` and ``batches`` feed the Taylor importance (real data, never random);
    ``fine_tune(model, step)`` runs between steps (e.g. a few KD epochs) when given.
    """
    if config.importance == "taylor" and (loss_fn is None or not batches):
        raise ValueError("Taylor importance needs loss_fn and real batches")
    base_macs, base_params = count_macs(model, example)
    # Ratio per step chosen by search: channel ratio r removes roughly 1-(1-r)^2 of the MACs.
    channel_ratio = min(config.max_channel_ratio, 1.0 - config.macs_ratio ** 0.5)
    pruner = tp.pruner.BasePruner(
        model, example, importance=make_importance(config.importance), global_pruning=config.global_pruning,
        pruning_ratio=channel_ratio, max_pruning_ratio=config.max_channel_ratio,
        iterative_steps=config.iterative_steps, ignored_layers=output_layers(model), round_to=config.round_to)
    log = []
    for step in range(config.iterative_steps):
        if config.importance == "taylor":
            model.zero_grad()
            for batch in batches:
                loss_fn(model, batch).backward()
        pruner.step()
        macs, params = count_macs(model, example)
        log.append({"step": step + 1, "macs_ratio": macs / base_macs, "params_ratio": params / base_params})
        if fine_tune is not None:
            fine_tune(model, step)
        if macs / base_macs <= config.macs_ratio:
            break
    model.zero_grad(set_to_none=True)
    return log
