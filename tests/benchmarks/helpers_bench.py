"""Builders for the bench tests: a training-run folder holding an untrained registry model, a variant bundle."""

import dataclasses
import json
import os
import shutil

# Timing settings that keep a whole bench run to a few seconds.
FAST = dict(rounds=5, batch_rounds=3, warmup=1, min_rounds=2, memory_runs=2, n_boot=200, batch=4, threads=1,
            energy_seconds=0.5)


def make_run(out_dir, task_name, arch, size, data_dir, seed=0):
    """A training-run folder (config.json + best.pt) holding an untrained registry model: enough for plumbing."""
    import torch

    from lungedge.models.registry import build
    from lungedge.models.train import TrainConfig
    from lungedge.runtime.tasks import task

    spec = task(task_name)
    torch.manual_seed(seed)
    model = build(arch, spec.num_outputs).eval()
    os.makedirs(out_dir, exist_ok=True)
    cfg = TrainConfig(task=task_name, data=data_dir, arch=arch, size=size, epochs=1)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump({"config": dataclasses.asdict(cfg), "task": dataclasses.asdict(spec),
                   "preprocessing": spec.steps(size)}, fh)
    torch.save({"model": model.state_dict()}, os.path.join(out_dir, "best.pt"))
    return out_dir


def make_variant(baseline_dir, out_dir, data_dir, gate=None, n_calibration=8):
    """Copy of the baseline bundle renamed as a variant, with an INT8 artifact calibrated on real train images."""
    from lungedge.benchmarks.bundles import add_int8_artifact
    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.datasets import read_manifest_csv, select
    from lungedge.runtime.io import read_any
    from lungedge.runtime.preprocess import preprocess

    shutil.copytree(baseline_dir, out_dir)
    bundle = Bundle.load(out_dir)
    manifest = dict(bundle.manifest, name=bundle.manifest["name"].replace("-fp32", "-variant"))
    manifest["provenance"] = dict(manifest["provenance"], recipe={"name": "test", "gate": gate or {}})
    write_manifest(out_dir, manifest)
    records = select(read_manifest_csv(data_dir), split="train")[:n_calibration]
    tensors = [preprocess(*read_any(r.image), manifest["preprocessing"])[0] for r in records]
    add_int8_artifact(out_dir, tensors)
    return out_dir
