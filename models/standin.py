"""Stand-in training runs: a run folder (config.json + best.pt) holding an *untrained* registry model.

For plumbing and latency work where no trained run is at hand (tests, ``tools/standin_bundles.py``): latency and
memory do not depend on the weights' values, accuracy numbers from such a run mean nothing, and its config says so.
"""

import dataclasses
import json
import os

import torch

from lungedge.models.registry import build
from lungedge.models.train import TrainConfig
from lungedge.runtime.tasks import task

NOTE = "untrained stand-in: for plumbing and latency, not accuracy"


def untrained_run(out_dir, task_name, arch, size, data_dir, seed=0):
    """Write the run folder ``out_dir`` for registry model ``arch`` at ``size`` px (seeded init); returns it."""
    spec = task(task_name)
    torch.manual_seed(seed)
    model = build(arch, spec.num_outputs).eval()
    os.makedirs(out_dir, exist_ok=True)
    cfg = TrainConfig(task=task_name, data=data_dir, arch=arch, size=size, epochs=1)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump({"config": dataclasses.asdict(cfg), "task": dataclasses.asdict(spec),
                   "preprocessing": spec.steps(size), "note": NOTE}, fh)
    torch.save({"model": model.state_dict()}, os.path.join(out_dir, "best.pt"))
    return out_dir
