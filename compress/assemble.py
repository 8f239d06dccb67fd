"""A bundle assembled from the variants the stages accepted: artifacts, golden file, manifest, metrics, provenance.

``write_bundle`` records each artifact with its validation-fitted threshold, writes ``golden.npz`` (real validation
inputs, ONNX FP32 outputs, per-precision tolerances), picks the default and the CPU default artifact, calibrates
the quality checks, measures the baseline and the compressed model, and writes ``manifest.json`` with the recipe,
the calibration sets, the git commit and the library versions.
"""

import dataclasses
import datetime
import json
import os
import platform

import numpy as np
import torch

from lungedge.compress import gate as G
from lungedge.compress.cpu_default import choose_for_bundle
from lungedge.compress.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from lungedge.compress.prune import count_macs
from lungedge.compress.quality import quality_calibration
from lungedge.compress.run import brief, onnx_probabilities
from lungedge.models.evaluate import evaluate
from lungedge.runtime.bundle import SCHEMA_VERSION, artifact_entry, find_artifact, sha256_file, write_manifest
from lungedge.runtime.enums import BackendName, Precision, TaskKind
from lungedge.runtime.jsonable import NonFinite, to_jsonable
from lungedge.runtime.provenance import git_commit  # noqa: F401  (re-exported: compress.pipeline.git_commit)

# Golden self-test tolerances (max |output - FP32 output| on the logits, per precision) are at least these
# fractions of max(1, max |FP32 logit|); measured ORT differences widen them 3x (a TensorRT build differs more).
GOLDEN_FLOOR = {"fp32": 1e-2, "fp16": 5e-2, "int8": 0.1}
GOLDEN_MARGIN = 3.0


@dataclasses.dataclass(frozen=True)
class StageResults:
    """What the stages hand to the bundle: the final torch model, the stage reports and the gated variants.

    variants: {artifact key: (report, verdict)} from ``stages.variants_stage``; verify: its ONNX-vs-torch report.
    """

    model: object
    distill: dict = None
    prune: dict = None
    variants: dict = dataclasses.field(default_factory=dict)
    verify: dict = None


def default_artifact(artifacts):
    """The artifact the runtime opens by default: ``runtime.bundle.find_artifact`` for ONNX Runtime."""
    return find_artifact(artifacts, BackendName.ONNXRUNTIME)


def versions():
    import onnx
    import onnxruntime

    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    try:
        import torch_pruning

        out["torch_pruning"] = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        out["lungedge"] = version("lungedge")
    except Exception:  # noqa: BLE001 - an uninstalled tree has no version
        out["lungedge"] = "unknown"
    return out


def baseline_provenance(run_dir, cfg):
    out = {"run_dir": os.path.abspath(run_dir), "arch": cfg.arch, "task": cfg.task, "input_size": cfg.size,
           "weights_sha256": sha256_file(os.path.join(run_dir, "best.pt"))}
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as fh:
            m = json.load(fh)
        out["recorded_metrics"] = {split: brief(m.get(split, {})) for split in ("val", "test")}
    return out


def write_golden(bundle_dir, fp32_path, images, measured, threads=None):
    """golden.npz (real validation inputs, ONNX FP32 outputs) and its manifest entry with per-precision tolerances.

    measured: {precision: max |variant - FP32| on these inputs through ONNX Runtime}.
    """
    inputs = np.ascontiguousarray(images, np.float32)
    outputs = G.onnx_logits(fp32_path, inputs, threads=threads)
    path = os.path.join(bundle_dir, "golden.npz")
    np.savez_compressed(path, inputs=inputs, outputs=outputs)
    scale = max(1.0, float(np.abs(outputs).max()))
    tolerances = {p: float(max(GOLDEN_FLOOR[p] * scale, GOLDEN_MARGIN * measured.get(p, 0.0)))
                  for p in GOLDEN_FLOOR}
    entry = artifact_entry(bundle_dir, "golden.npz", "npz", "fp32", "none")
    return {"path": entry["path"], "sha256": entry["sha256"], "bytes": entry["bytes"], "n": int(len(inputs)),
            "reference": "onnx-fp32", "tolerances": tolerances, "metric": "max abs diff of the raw outputs",
            "measured_onnxruntime": {p: float(v) for p, v in measured.items()}}


def base_manifest(spec, size, name, description="", steps=None):
    """The data half of a manifest (everything but artifacts, golden, provenance, metrics)."""
    out_shape = [-1, len(spec.labels)] if spec.kind == TaskKind.CLASSIFICATION else [-1, 1, size, size]
    manifest = {"schema_version": SCHEMA_VERSION, "name": name, "task": spec.kind, "modality": spec.modality,
                "input": {"name": INPUT_NAME, "shape": [-1, 1, size, size], "dtype": "float32",
                          "value_range": [-2.0, 2.0]},
                "output": {"name": OUTPUT_NAME, "kind": "logits", "shape": out_shape},
                "preprocessing": steps or spec.steps(size), "labels": list(spec.labels),
                "positive_label": spec.positive_label}
    if description:
        manifest["description"] = description
    return manifest


def evaluate_artifact(run, path, threshold):
    """Test metrics of an ONNX artifact at its validation-fitted threshold."""
    return evaluate(run.spec, onnx_probabilities(run, path, run.test_ds), run.test_ds.targets, threshold=threshold)


def _artifact_entries(run, staging, variants, golden_images, ref):
    """Manifest entries, per-precision golden differences and per-artifact metrics of the accepted variants."""
    artifacts, measured, per_artifact = {}, {}, {}
    for key, (report, verdict) in variants.items():
        path = os.path.join(staging, report["path"])
        precision = report["precision"]
        diff = float(np.abs(G.onnx_logits(path, golden_images, threads=run.threads) - ref).max())
        measured[precision] = max(measured.get(precision, 0.0), diff)
        extra = {"threshold": verdict.threshold}
        if key == "onnx-int8-trt":
            backend, extra["flavour"] = "tensorrt-source", "tensorrt"
        else:
            backend = "onnxruntime"
            if precision == Precision.INT8:
                extra["flavour"] = "ort_cpu"
        if "qdq" in report:
            extra["qdq"] = {k: v for k, v in report["qdq"].items() if not isinstance(v, (list, dict))}
        artifacts[key] = artifact_entry(staging, report["path"], "onnx", precision, backend, **extra)
        per_artifact[key] = {"val": verdict.metrics, "test": evaluate_artifact(run, path, verdict.threshold),
                             "bytes": artifacts[key]["bytes"], "threshold": verdict.threshold,
                             "golden_max_abs_diff": diff, "gate": verdict.to_dict()}
    return artifacts, measured, per_artifact


def shipped_arch(run):
    """The architecture the bundle ships: the recipe's student, or the baseline's."""
    return run.recipe.student if run.recipe.student != "none" else run.baseline_cfg.arch


def bundle_name(run, prune_report, artifacts):
    """``task-arch[-pNN]-int8|fp32``: the architecture shipped, its pruning and whether it carries INT8."""
    name = f"{run.recipe.task}-{shipped_arch(run)}"
    if prune_report and prune_report["config"]["macs_ratio"] < 1.0:
        name += f"-p{int(round(prune_report['config']['macs_ratio'] * 100))}"
    return name + ("-int8" if any(a["precision"] == Precision.INT8 for a in artifacts.values()) else "-fp32")


def write_bundle(run, results, staging, time_runs=0):
    """Write every file and the manifest of the bundle into the Staging folder; returns the manifest.

    results: a ``StageResults``; time_runs: batch-1 ONNX Runtime timings per artifact and the baseline (0: none).
    """
    recipe, spec, bundle_dir = run.recipe, run.spec, staging.dir
    fp32 = os.path.join(bundle_dir, "model.onnx")
    calibration = {k: r["calibration"] for k, (r, _) in results.variants.items() if r.get("calibration")}
    golden_images = run.val_ds.images[:recipe.export.golden_images]
    ref = G.onnx_logits(fp32, golden_images, threads=run.threads)
    artifacts, measured, per_artifact = _artifact_entries(run, bundle_dir, results.variants, golden_images, ref)
    golden = write_golden(bundle_dir, fp32, golden_images, measured, run.threads)
    default = default_artifact(artifacts)
    cpu_default = choose_for_bundle(run, bundle_dir, artifacts, golden, golden_images, ref)
    thresholds = ({spec.positive_label: artifacts[default]["threshold"]} if spec.kind == TaskKind.CLASSIFICATION
                  else {"mask": 0.5})

    manifest = base_manifest(spec, run.size, bundle_name(run, results.prune, artifacts), recipe.description,
                             steps=run.steps)
    manifest.update(artifacts=artifacts, golden=golden, thresholds=thresholds, cpu_default=cpu_default)
    if run.crop is not None:
        manifest["input_crop"] = run.crop.spec
    manifest["quality"] = quality_calibration(run, bundle_dir, artifacts)
    base_onnx = os.path.join(staging.work, "baseline.onnx")
    export_onnx(run.baseline, base_onnx, (run.base_size, run.base_size), opset=recipe.export.opset)
    example = torch.zeros(1, 1, run.size, run.size)
    base_macs, base_params = count_macs(run.baseline, torch.zeros(1, 1, run.base_size, run.base_size))
    macs, params = count_macs(results.model, example)
    metrics = {
        "baseline": {"val": run.baseline_val, "test": run.baseline_test, "macs": base_macs, "params": base_params,
                     "onnx_bytes": os.path.getsize(base_onnx), "arch": run.baseline_cfg.arch,
                     "input_size": run.base_size},
        "compressed": {"arch": shipped_arch(run), "macs": macs, "params": params, "input_size": run.size,
                       "macs_ratio": macs / base_macs, "params_ratio": params / base_params},
        "artifacts": per_artifact, "default_artifact": default, "gate": run.decisions,
        "gate_config": recipe.gate.to_dict(), "verify_onnx": results.verify, "n_val": len(run.val_ds),
        "n_test": len(run.test_ds), "distill": results.distill, "prune": results.prune,
    }
    if time_runs:
        from lungedge.compress.summary import time_onnx

        paths = {"baseline": base_onnx, **{k: os.path.join(bundle_dir, a["path"]) for k, a in artifacts.items()}}
        metrics["cpu_latency_ms"] = {k: time_onnx(p, runs=time_runs, threads=run.threads) for k, p in paths.items()}
        metrics["cpu_latency_ms"]["note"] = ("indicative: ONNX Runtime CPU, batch 1, median of "
                                             f"{time_runs} runs on the build machine")
    manifest["metrics"] = metrics
    manifest["provenance"] = {"baseline": baseline_provenance(run.baseline_dir, run.baseline_cfg),
                              "recipe": recipe.to_dict(), "calibration": calibration, "git_commit": git_commit(),
                              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "versions": versions(), "data": {"n_train": len(run.train_ds),
                                                               "n_val": len(run.val_ds),
                                                               "n_test": len(run.test_ds)}}
    write_manifest(bundle_dir, to_jsonable(manifest, NonFinite.NULL))
    return manifest
