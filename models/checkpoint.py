"""A trained run folder read back: its weights (``load_model``) and the lung crop its inputs went through."""

import json
import os

import torch

from lungedge.models.config import TrainConfig
from lungedge.models.registry import build
from lungedge.runtime.tasks import task


def load_checkpoint(path):
    """Load a checkpoint written by training (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(run_dir, which="best.pt"):
    """Rebuild a trained model from its run folder (config.json + state dict)."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
        cfg = TrainConfig.from_dict(json.load(fh)["config"])
    model = build(cfg.arch, task(cfg.task).num_outputs)
    state = load_checkpoint(os.path.join(run_dir, which))
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval(), cfg


def open_lung_crop(cfg, threads=None):
    """The LungCrop of a config with ``lung_bundle`` (torch-free runtime predictor), else None."""
    if not cfg.lung_bundle:
        return None
    from lungedge.runtime.pipelines import LungCrop
    from lungedge.runtime.predictor import Predictor

    return LungCrop(Predictor.from_bundle(cfg.lung_bundle, threads=threads), cfg.lung_margin)
