"""Builders for the bench tests: a training-run folder holding an untrained registry model, a variant bundle."""

import shutil

# Timing settings that keep a whole bench run to a few seconds.
FAST = dict(rounds=5, batch_rounds=3, warmup=1, min_rounds=2, memory_runs=2, n_boot=200, batch=4, threads=1,
            energy_seconds=0.5)


def make_run(out_dir, task_name, arch, size, data_dir, seed=0):
    """A training-run folder (config.json + best.pt) holding an untrained registry model: enough for plumbing."""
    from lungedge.models.standin import untrained_run

    return untrained_run(out_dir, task_name, arch, size, data_dir, seed)


def make_variant(baseline_dir, out_dir, data_dir, gate=None, n_calibration=16):
    """Copy of the baseline bundle renamed as a variant, with an INT8 artifact calibrated on real train images."""
    from lungedge.compress.variants import add_int8_artifact
    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.datasets import read_manifest_csv, select

    shutil.copytree(baseline_dir, out_dir)
    bundle = Bundle.load(out_dir)
    manifest = dict(bundle.manifest, name=bundle.manifest["name"].replace("-fp32", "-variant"))
    manifest["provenance"] = dict(manifest["provenance"], recipe={"name": "test", "gate": gate or {}})
    write_manifest(out_dir, manifest)
    add_int8_artifact(out_dir, select(read_manifest_csv(data_dir), split="train")[:n_calibration])
    return out_dir
