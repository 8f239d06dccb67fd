"""``compress``: baseline run folder + recipe + data -> a gated, verified bundle (or GateFailed, never a worse one).

Orchestration only. Stages, each gated on the VALIDATION split against the baseline measured in the same run:

1. baseline   ``run.prepare``: the baseline and the data; validation and test metrics (threshold fitted on val)
2. distill    ``stages.distill_stage``
3. prune      ``stages.prune_stage``, backing off along the MACs ladder
4. export     ``stages.variants_stage``: FP32 ONNX verified against torch on real validation images, then
5. quantize   each INT8 flavour (backing off by calibration method and nodes kept in float) and optional FP16
6. bundle     ``assemble.write_bundle``: artifacts, per-artifact validation thresholds, golden file, provenance,
              metrics, gate log

Everything is written into ``OUT.partial`` (``run.Staging``) and renamed to ``OUT`` only at the end, so a failed
run leaves no bundle behind. ``export_baseline`` builds the uncompressed reference bundle the same way.
"""

import copy
import dataclasses
import os

from tqdm import tqdm

from lungedge.compress.assemble import (
    GOLDEN_FLOOR,
    GOLDEN_MARGIN,
    StageResults,
    base_manifest,
    baseline_provenance,
    default_artifact,
    evaluate_artifact,
    git_commit,
    versions,
    write_bundle,
    write_golden,
)
from lungedge.compress.errors import CompressError
from lungedge.compress.recipe import Recipe, load_recipe
from lungedge.compress.run import Run, Staging, onnx_probabilities, prepare
from lungedge.compress.stages import (
    calibration_reader,
    distill_stage,
    export_stage,
    fp16_stage,
    gate_onnx,
    gate_torch,
    prune_stage,
    quantize_stage,
    variants_stage,
)
from lungedge.models.checkpoint import load_model

# Names this module held before the split into run / stages / assemble, kept for their importers.
__all__ = ["GOLDEN_FLOOR", "GOLDEN_MARGIN", "Run", "base_manifest", "baseline_provenance",
           "calibration_reader", "compress", "default_artifact", "distill_stage", "evaluate_artifact",
           "export_baseline", "export_stage", "fp16_stage", "gate_onnx", "gate_torch", "git_commit",
           "onnx_probabilities", "prepare", "prune_stage", "quantize_stage", "variants_stage", "versions",
           "write_golden"]


def _build(run, staging, results, time_runs):
    """Export and quantize ``results.model`` (the stages), then write the bundle into ``staging``; returns the
    manifest."""
    variants, verify = variants_stage(run, results.model, staging.dir, staging.work)
    return write_bundle(run, dataclasses.replace(results, variants=variants, verify=verify), staging, time_runs)


def compress(recipe, baseline_run_dir, data_dir, out_dir, threads=None, overwrite=False, time_runs=0):
    """Run the recipe on a baseline; returns the bundle path, or raises GateFailed with every attempt's numbers.

    recipe: a Recipe, a recipe file path or a shipped recipe name. time_runs: batch-1 ONNX Runtime timings per
    artifact (and the baseline) recorded as indicative build-machine latencies (0: none).
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    staging = Staging(out_dir, overwrite, prefix="lungedge-compress-")
    with staging:
        run = prepare(recipe, baseline_run_dir, data_dir, threads)
        model, distill_report = distill_stage(run)
        model, prune_report = prune_stage(run, model)
        bundle = _build(run, staging, StageResults(model, distill_report, prune_report), time_runs)
    out_dir = staging.publish()
    tqdm.write(f"[bundle] {out_dir} ({bundle['name']}) in {staging.seconds():.0f} s")
    return out_dir


def export_baseline(run_dir, out_dir, data_dir=None, threads=None, overwrite=False, opset=17, time_runs=0):
    """FP32 ONNX bundle of the uncompressed baseline (the reference the benchmarks compare against).

    data_dir: the dev-pack folder (default: the run's own ``config.json`` data path); validation images verify the
    export, fit the threshold and make the golden file.
    """
    _, cfg = load_model(run_dir)
    data_dir = data_dir or cfg.data
    if not os.path.isfile(os.path.join(data_dir, "manifest.csv")):
        raise CompressError(f"no dev-pack manifest in {data_dir!r} (from the run's config); pass data_dir / --data")
    recipe = Recipe(name=f"{cfg.task}-baseline", task=cfg.task, description="uncompressed baseline, FP32 ONNX",
                    export=dataclasses.replace(Recipe(name="x", task=cfg.task).export, opset=opset))
    staging = Staging(out_dir, overwrite, prefix="lungedge-export-")
    with staging:
        run = prepare(recipe, run_dir, data_dir, threads)
        _build(run, staging, StageResults(copy.deepcopy(run.baseline)), time_runs)
    return staging.publish()
