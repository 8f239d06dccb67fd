"""``compress``: baseline run folder + recipe + data -> a gated, verified bundle (or GateFailed, never a worse one).

Stages, each gated on the VALIDATION split against the baseline measured in the same run:

1. baseline   ``models.train.load_model``; validation and test metrics (threshold fitted on validation)
2. distill    the recipe's student from the baseline teacher (``compress.distill``)
3. prune      ``compress.prune`` with KD fine-tuning from the unpruned model; backs off along the MACs ladder
4. export     FP32 ONNX, verified against torch on real validation images
5. quantize   each INT8 flavour on real training images; backs off by calibration method and by keeping the
              first conv, the head, then the most sensitive nodes in float; optional FP16
6. bundle     artifacts, per-artifact validation thresholds, golden file, provenance, metrics, gate log

Everything is written into ``OUT.partial`` and renamed to ``OUT`` only at the end, so a failed run leaves no
bundle behind.
"""

import copy
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lungedge.compress import gate as G
from lungedge.compress.cpu_default import choose_for_bundle
from lungedge.compress.distill import distill
from lungedge.compress.errors import CompressError, GateFailed
from lungedge.compress.export import INPUT_NAME, OUTPUT_NAME, export_onnx, verify_onnx
from lungedge.compress.prune import count_macs, prune
from lungedge.compress.quality import quality_calibration
from lungedge.compress.recipe import QUANT_KEYS, Recipe, load_recipe
from lungedge.models.data import load_split
from lungedge.models.registry import build
from lungedge.models.tasks import task
from lungedge.models.train import evaluate, load_model, open_lung_crop, predict, segmentation_loss
from lungedge.runtime.bundle import SCHEMA_VERSION, artifact_entry, sha256_file, write_manifest
from lungedge.runtime.datasets import read_manifest_csv, select

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Golden self-test tolerances (max |output - FP32 output| on the logits, per precision) are at least these
# fractions of max(1, max |FP32 logit|); measured ORT differences widen them 3x (a TensorRT build differs more).
GOLDEN_FLOOR = {"fp32": 1e-2, "fp16": 5e-2, "int8": 0.1}
GOLDEN_MARGIN = 3.0
PRECISION_ORDER = {"int8": 0, "fp16": 1, "fp32": 2}


@dataclasses.dataclass
class Run:
    """What the stages share: the recipe, the task, the data of both input sizes, the baseline and the log."""

    recipe: Recipe
    spec: object
    size: int
    base_size: int
    data_dir: str
    train_ds: object
    val_ds: object
    test_ds: object
    base_val_ds: object
    base_test_ds: object
    baseline: object
    baseline_cfg: object
    baseline_val: dict
    baseline_test: dict
    threads: int = None
    crop: object = None  # runtime.pipelines.LungCrop when the baseline was trained on lung crops
    decisions: list = dataclasses.field(default_factory=list)

    @property
    def steps(self):
        """The student's preprocessing: the task's steps at its input size, with the baseline's options."""
        return self.spec.steps(self.size, self.baseline_cfg.equalize)

    def record(self, stage, variant, setting, verdict, action):
        entry = {"stage": stage, "variant": variant, "setting": setting, "verdict": verdict.to_dict(),
                 "action": action}
        self.decisions.append(entry)
        tqdm.write(f"[gate] {stage}: {verdict.summary()} -> {action}")
        return entry

    def fail(self, stage, message):
        report = {"recipe": self.recipe.name, "stage": stage, "baseline_val": _brief(self.baseline_val),
                  "gate": self.recipe.gate.to_dict(), "decisions": self.decisions}
        lines = [f"{stage}: {message}"] + [f"  {d['stage']} [{d['variant']}] {json.dumps(d['setting'])}: "
                                           + _failed_text(d["verdict"]) for d in self.decisions
                                           if not d["verdict"]["passed"]]
        raise GateFailed("\n".join(lines), report)


def _brief(metrics):
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _failed_text(verdict):
    return ", ".join(f"{c['metric']} drop {c['drop']:+.4f} > {c['tolerance']}" for c in verdict["checks"]
                     if not c["passed"]) or "passed"


def _bar(desc):
    return lambda it: tqdm(it, desc=desc, leave=False, unit="img")


# --- stage 1: baseline ------------------------------------------------------------------------------------


def prepare(recipe, baseline_run_dir, data_dir, threads=None):
    """Load the baseline and the data; measure the baseline on validation and test."""
    if threads:
        torch.set_num_threads(int(threads))
    baseline, cfg = load_model(baseline_run_dir)
    if cfg.task != recipe.task:
        raise CompressError(f"recipe {recipe.name!r} is for {recipe.task} but the baseline in {baseline_run_dir} "
                            f"was trained for {cfg.task}")
    spec = task(recipe.task)
    size, base_size = recipe.input_size or cfg.size, cfg.size
    crop = open_lung_crop(cfg, threads)  # the student sees the teacher's lung crops, as the runtime will
    steps, base_steps = spec.steps(size, cfg.equalize), spec.steps(base_size, cfg.equalize)
    train_ds = load_split(data_dir, spec, "train", size, _bar("load train"), steps=steps, crop=crop)
    val_ds = load_split(data_dir, spec, "val", size, _bar("load val"), steps=steps, crop=crop)
    test_ds = load_split(data_dir, spec, "test", size, _bar("load test"), steps=steps, crop=crop)
    if size == base_size:
        base_val_ds, base_test_ds = val_ds, test_ds
    else:
        base_val_ds = load_split(data_dir, spec, "val", base_size, _bar("load val (baseline size)"),
                                 steps=base_steps, crop=crop)
        base_test_ds = load_split(data_dir, spec, "test", base_size, _bar("load test (baseline size)"),
                                  steps=base_steps, crop=crop)
    rule = recipe.gate.threshold_rule
    baseline_val = G.measure(spec, predict(baseline, base_val_ds), base_val_ds.targets, rule)
    baseline_test = evaluate(spec, predict(baseline, base_test_ds), base_test_ds.targets,
                             threshold=baseline_val["threshold"])
    tqdm.write(f"[baseline] {cfg.arch} @ {base_size}px: val score {baseline_val['score']:.4f}, "
               f"test score {baseline_test['score']:.4f} ({len(val_ds)} val / {len(test_ds)} test images)")
    return Run(recipe=recipe, spec=spec, size=size, base_size=base_size, data_dir=data_dir, train_ds=train_ds,
               val_ds=val_ds, test_ds=test_ds, base_val_ds=base_val_ds, base_test_ds=base_test_ds,
               baseline=baseline, baseline_cfg=cfg, baseline_val=baseline_val, baseline_test=baseline_test,
               threads=threads, crop=crop)


def _teacher_size(run):
    return None if run.size == run.base_size else (run.base_size, run.base_size)


def gate_torch(run, model, stage, variant, setting):
    """Gate a torch model (the student or a pruned net) on validation; records and returns the verdict."""
    verdict = G.gate(run.spec, run.baseline_val, predict(model, run.val_ds), run.val_ds.targets, run.recipe.gate,
                     name=variant)
    run.record(stage, variant, setting, verdict, "accepted" if verdict.passed else "rejected")
    return verdict


# --- stage 2: distill -------------------------------------------------------------------------------------


def distill_stage(run):
    """The recipe's student distilled from the baseline (or a copy of the baseline when student is 'none')."""
    recipe = run.recipe
    if recipe.student == "none":
        return copy.deepcopy(run.baseline).eval(), None
    torch.manual_seed(recipe.seed)
    student = build(recipe.student, run.spec.num_outputs)
    student, report = distill(run.baseline, student, run.spec, run.train_ds, run.val_ds, recipe.distill,
                              teacher_size=_teacher_size(run), desc=f"distill {recipe.student}")
    verdict = gate_torch(run, student, "distill", recipe.student, {"student": recipe.student})
    report["gate"] = verdict.to_dict()
    if not verdict.passed:
        run.fail("distill", f"the distilled {recipe.student} fails the gate before any pruning or quantization; "
                            "distill longer, pick a larger student, or loosen the gate")
    return student, report


# --- stage 3: prune ---------------------------------------------------------------------------------------


def _hard_loss(kind):
    if kind == "classification":
        return lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])
    return lambda model, batch: segmentation_loss(model(batch[0]), batch[1])


def prune_stage(run, model):
    """Prune with KD fine-tuning from the unpruned model; back off to larger MACs ratios until the gate passes."""
    recipe = run.recipe
    if recipe.prune is None:
        return model, None
    # The unpruned model teaches the pruned one; the baseline teaches when the student is the baseline itself.
    teacher, t_size = (run.baseline, _teacher_size(run)) if recipe.student == "none" else (model, None)
    example = torch.zeros(1, 1, run.size, run.size)
    macs0, params0 = count_macs(model, example)
    x = torch.from_numpy(run.train_ds.images[:64])
    y = torch.as_tensor(run.train_ds.targets[:64])
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]
    for ratio in recipe.backoff.prune_ratios(recipe.prune.macs_ratio):
        config = dataclasses.replace(recipe.prune, macs_ratio=ratio)
        candidate = copy.deepcopy(model).train()
        teacher_copy = copy.deepcopy(teacher)

        def fine_tune(m, step, ratio=ratio, teacher_copy=teacher_copy):
            distill(teacher_copy, m, run.spec, run.train_ds, run.val_ds, recipe.prune_finetune, teacher_size=t_size,
                    desc=f"prune {ratio:.2f} step {step + 1} fine-tune")

        tqdm.write(f"[prune] target MACs ratio {ratio:.2f} ({config.importance}, {config.iterative_steps} steps)")
        log = prune(candidate, example, config, loss_fn=_hard_loss(run.spec.kind), batches=batches,
                    fine_tune=fine_tune)
        candidate.eval()
        macs, params = count_macs(candidate, example)
        setting = {"macs_ratio": ratio, "achieved_macs_ratio": round(macs / macs0, 4),
                   "params_ratio": round(params / params0, 4)}
        verdict = gate_torch(run, candidate, "prune", f"pruned-{ratio:.2f}", setting)
        if verdict.passed:
            return candidate, {"config": dataclasses.asdict(config),
                               "requested_macs_ratio": recipe.prune.macs_ratio, "macs": macs, "params": params,
                               "macs_before": macs0, "params_before": params0, "steps": log,
                               "gate": verdict.to_dict()}
        run.decisions[-1]["action"] = "backed off: less pruning"
    run.fail("prune", f"no MACs ratio of {recipe.backoff.prune_ratios(recipe.prune.macs_ratio)} passes the gate; "
                      "add larger ratios to backoff.macs_ratios, fine-tune longer, or drop the prune section")


# --- stage 4: export --------------------------------------------------------------------------------------


def export_stage(run, model, path):
    """FP32 ONNX of ``model`` verified against torch on real validation images; returns the verify report."""
    export_onnx(model, path, (run.size, run.size), opset=run.recipe.export.opset,
                features=run.spec.kind == "classification")
    images = run.val_ds.images[:run.recipe.export.verify_images]
    report = verify_onnx(model, path, images, "fp32")
    if not report["passed"]:
        raise CompressError(f"ONNX Runtime disagrees with torch on {report['n_images']} validation images "
                            f"(max relative diff {report['max_rel_diff']:.2e} > {report['tolerance']}); "
                            "the export is wrong, not the model: report it with the architecture name")
    return report


def onnx_probabilities(run, path, dataset):
    return G.probabilities(G.onnx_logits(path, dataset.images, threads=run.threads))


def gate_onnx(run, path, variant="variant"):
    """Verdict (not yet recorded) of an ONNX model on validation through ONNX Runtime."""
    return G.gate(run.spec, run.baseline_val, onnx_probabilities(run, path, run.val_ds), run.val_ds.targets,
                  run.recipe.gate, name=variant)


# --- stage 5: quantize ------------------------------------------------------------------------------------


def calibration_reader(run, limit):
    """Real train-split images (the ones the task uses), preprocessed by the bundle's own steps."""
    from lungedge.compress.calibration import CalibrationReader

    records = select(read_manifest_csv(run.data_dir), split="train")
    if run.spec.kind == "classification":
        records = [r for r in records if r.label in run.spec.labels]
    else:
        records = [r for r in records if r.mask]
    return CalibrationReader(records, run.steps, input_name=INPUT_NAME, batch_size=8,
                             limit=limit, progress=True, crop=run.crop)


def quantize_stage(run, fp32_path, qconfig, out_path, work_dir):
    """One INT8 flavour walked down the back-off ladder; returns (report, verdict) or (None, None) if dropped."""
    from lungedge.compress.quantize import quantize_onnx

    key = QUANT_KEYS[_flavour(qconfig)]
    reader = calibration_reader(run, qconfig.num_images)
    io = G.io_nodes(fp32_path)
    ranked = {}

    def ranking():
        if "nodes" not in ranked:
            ranked.update(G.rank_sensitive_nodes(fp32_path, ranked["first_qdq"], reader,
                                                 run.recipe.backoff.sensitivity_images, work_dir))
        return ranked["nodes"]

    attempts = run.recipe.backoff.quant_attempts(_method(qconfig), io, ranking)
    tried = 0
    for i, (method, exclude) in enumerate(attempts):
        tried = i + 1
        config = dataclasses.replace(qconfig, calibration_method=method,
                                     nodes_to_exclude=tuple(qconfig.nodes_to_exclude) + tuple(exclude))
        attempt_path = os.path.join(work_dir, f"{key}-{i}.onnx")
        tqdm.write(f"[quantize] {key} attempt {i + 1}: {method}, {len(config.nodes_to_exclude)} node(s) in float")
        report = quantize_onnx(fp32_path, attempt_path, reader, config)
        ranked.setdefault("first_qdq", attempt_path)
        verdict = gate_onnx(run, attempt_path, key)
        setting = {"attempt": i + 1, "calibration_method": method, "nodes_to_exclude": list(config.nodes_to_exclude)}
        if ranked.get("ranking"):
            setting["sensitivity_sqnr_db"] = {r["node"]: r["sqnr_db"] for r in ranked["ranking"]
                                              if r["node"] in exclude and r["node"] not in io}
        if verdict.passed:
            run.record("quantize", key, setting, verdict, "accepted")
            shutil.copyfile(attempt_path, out_path)
            return dict(report, path=os.path.basename(out_path), attempts=tried), verdict
        run.record("quantize", key, setting, verdict, "backed off")
    if run.decisions and run.decisions[-1]["variant"] == key:
        run.decisions[-1]["action"] = "rejected: back-off ladder exhausted"
    if ranked.get("error"):
        tqdm.write(f"[quantize] sensitivity ranking unavailable: {ranked['error']}")
    if run.recipe.backoff.on_variant_failure == "drop":
        tqdm.write(f"[quantize] {key}: no setting passes the gate; left out of the bundle (on_variant_failure=drop)")
        return None, None
    run.fail(f"quantize {key}", f"{key} fails the gate at every one of {tried} settings (calibration methods x "
                                "nodes kept in float); widen backoff, or set on_variant_failure 'drop'")


def _flavour(qconfig):
    return getattr(qconfig.flavour, "value", qconfig.flavour)


def _method(qconfig):
    return getattr(qconfig.calibration_method, "value", qconfig.calibration_method)


def fp16_stage(run, fp32_path, out_path):
    from lungedge.compress.quantize import convert_fp16

    report = convert_fp16(fp32_path, out_path)
    verdict = gate_onnx(run, out_path, "onnx-fp16")
    run.record("fp16", "onnx-fp16", {}, verdict, "accepted" if verdict.passed else "rejected")
    if verdict.passed:
        return dict(report, path=os.path.basename(out_path)), verdict
    if run.recipe.backoff.on_variant_failure == "drop":
        os.remove(out_path)
        return None, None
    run.fail("fp16", "the FP16 model fails the gate (overflowing activations?); remove fp16 from the recipe")


# --- stage 6: bundle --------------------------------------------------------------------------------------


def default_artifact(artifacts):
    """The artifact the runtime opens by default (``Bundle.find_artifact('onnxruntime')``)."""
    keys = [k for k, a in artifacts.items() if a["backend"] == "onnxruntime"]
    return sorted(keys, key=lambda k: PRECISION_ORDER.get(artifacts[k]["precision"], 9))[0]


def git_commit():
    """HEAD of the lungedge checkout (with '+dirty' when it has local changes), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
        out["recorded_metrics"] = {split: _brief(m.get(split, {})) for split in ("val", "test")}
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
    out_shape = [-1, len(spec.labels)] if spec.kind == "classification" else [-1, 1, size, size]
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


def _staging(out_dir, overwrite):
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise CompressError(f"{out_dir} exists; choose another --out or pass overwrite=True (--force)")
    staging = f"{out_dir}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return out_dir, staging


def _publish(staging, out_dir):
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


def compress(recipe, baseline_run_dir, data_dir, out_dir, threads=None, overwrite=False, time_runs=0):
    """Run the recipe on a baseline; returns the bundle path, or raises GateFailed with every attempt's numbers.

    recipe: a Recipe, a recipe file path or a shipped recipe name. time_runs: batch-1 ONNX Runtime timings per
    artifact (and the baseline) recorded as indicative build-machine latencies (0: none).
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    started = time.time()
    out_dir, staging = _staging(out_dir, overwrite)
    work = tempfile.mkdtemp(prefix="lungedge-compress-")
    try:
        run = prepare(recipe, baseline_run_dir, data_dir, threads)
        model, distill_report = distill_stage(run)
        model, prune_report = prune_stage(run, model)
        bundle = _build_bundle(run, model, staging, work, distill_report, prune_report, baseline_run_dir,
                               time_runs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _publish(staging, out_dir)
    tqdm.write(f"[bundle] {out_dir} ({bundle['name']}) in {time.time() - started:.0f} s")
    return out_dir


def variants_stage(run, model, staging, work):
    """Export, then every INT8 flavour and FP16, each gated; returns ({key: (report, verdict)}, verify report)."""
    recipe = run.recipe
    fp32 = os.path.join(staging, "model.onnx")
    verify = export_stage(run, model, fp32)
    fp32_verdict = gate_onnx(run, fp32, "onnx-fp32")
    run.record("export", "onnx-fp32", {"opset": recipe.export.opset}, fp32_verdict,
               "accepted" if fp32_verdict.passed else "rejected")
    if not fp32_verdict.passed:
        run.fail("export", "the FP32 ONNX model fails the gate although the torch model passed; check the export")
    variants = {"onnx-fp32": ({"path": "model.onnx", "precision": "fp32", "format": "onnx"}, fp32_verdict)}
    for qconfig in recipe.quantize:
        key = QUANT_KEYS[_flavour(qconfig)]
        filename = "model-int8.onnx" if key == "onnx-int8" else "model-int8-trt.onnx"
        report, verdict = quantize_stage(run, fp32, qconfig, os.path.join(staging, filename), work)
        if report is not None:
            variants[key] = (report, verdict)
    if recipe.fp16:
        report, verdict = fp16_stage(run, fp32, os.path.join(staging, "model-fp16.onnx"))
        if report is not None:
            variants["onnx-fp16"] = (report, verdict)
    return variants, verify


def _build_bundle(run, model, staging, work, distill_report, prune_report, baseline_run_dir, time_runs):
    recipe, spec = run.recipe, run.spec
    variants, verify = variants_stage(run, model, staging, work)
    fp32 = os.path.join(staging, "model.onnx")
    calibration = {k: r["calibration"] for k, (r, _) in variants.items() if r.get("calibration")}
    golden_images = run.val_ds.images[:recipe.export.golden_images]
    ref = G.onnx_logits(fp32, golden_images, threads=run.threads)
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
            if precision == "int8":
                extra["flavour"] = "ort_cpu"
        if "qdq" in report:
            extra["qdq"] = {k: v for k, v in report["qdq"].items() if not isinstance(v, (list, dict))}
        artifacts[key] = artifact_entry(staging, report["path"], "onnx", precision, backend, **extra)
        per_artifact[key] = {"val": verdict.metrics, "test": evaluate_artifact(run, path, verdict.threshold),
                             "bytes": artifacts[key]["bytes"], "threshold": verdict.threshold,
                             "golden_max_abs_diff": diff, "gate": verdict.to_dict()}
    golden = write_golden(staging, fp32, golden_images, measured, run.threads)
    default = default_artifact(artifacts)
    cpu_default = choose_for_bundle(run, staging, artifacts, golden, golden_images, ref)
    thresholds = ({spec.positive_label: artifacts[default]["threshold"]} if spec.kind == "classification"
                  else {"mask": 0.5})

    arch = recipe.student if recipe.student != "none" else run.baseline_cfg.arch
    name = f"{recipe.task}-{arch}"
    if prune_report and prune_report["config"]["macs_ratio"] < 1.0:
        name += f"-p{int(round(prune_report['config']['macs_ratio'] * 100))}"
    name += "-int8" if any(a["precision"] == "int8" for a in artifacts.values()) else "-fp32"
    manifest = base_manifest(spec, run.size, name, recipe.description, steps=run.steps)
    manifest.update(artifacts=artifacts, golden=golden, thresholds=thresholds, cpu_default=cpu_default)
    if run.crop is not None:
        manifest["input_crop"] = run.crop.spec
    manifest["quality"] = quality_calibration(run, staging, artifacts)
    base_onnx = os.path.join(work, "baseline.onnx")
    export_onnx(run.baseline, base_onnx, (run.base_size, run.base_size), opset=recipe.export.opset)
    example = torch.zeros(1, 1, run.size, run.size)
    base_macs, base_params = count_macs(run.baseline, torch.zeros(1, 1, run.base_size, run.base_size))
    macs, params = count_macs(model, example)
    metrics = {
        "baseline": {"val": run.baseline_val, "test": run.baseline_test, "macs": base_macs, "params": base_params,
                     "onnx_bytes": os.path.getsize(base_onnx), "arch": run.baseline_cfg.arch,
                     "input_size": run.base_size},
        "compressed": {"arch": arch, "macs": macs, "params": params, "input_size": run.size,
                       "macs_ratio": macs / base_macs, "params_ratio": params / base_params},
        "artifacts": per_artifact, "default_artifact": default, "gate": run.decisions,
        "gate_config": recipe.gate.to_dict(), "verify_onnx": verify, "n_val": len(run.val_ds),
        "n_test": len(run.test_ds), "distill": distill_report, "prune": prune_report,
    }
    if time_runs:
        from lungedge.compress.summary import time_onnx

        paths = {"baseline": base_onnx, **{k: os.path.join(staging, a["path"]) for k, a in artifacts.items()}}
        metrics["cpu_latency_ms"] = {k: time_onnx(p, runs=time_runs, threads=run.threads) for k, p in paths.items()}
        metrics["cpu_latency_ms"]["note"] = ("indicative: ONNX Runtime CPU, batch 1, median of "
                                             f"{time_runs} runs on the build machine")
    manifest["metrics"] = metrics
    manifest["provenance"] = {"baseline": baseline_provenance(baseline_run_dir, run.baseline_cfg),
                              "recipe": recipe.to_dict(), "calibration": calibration, "git_commit": git_commit(),
                              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "versions": versions(), "data": {"n_train": len(run.train_ds),
                                                               "n_val": len(run.val_ds),
                                                               "n_test": len(run.test_ds)}}
    write_manifest(staging, _jsonable(manifest))
    return manifest


def _jsonable(obj):
    """Plain JSON types (numpy scalars and tuples from metrics and configs)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return getattr(obj, "value", obj) if not isinstance(obj, (str, int, float, bool, type(None))) else obj


# --- baseline bundle --------------------------------------------------------------------------------------


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
    out_dir, staging = _staging(out_dir, overwrite)
    work = tempfile.mkdtemp(prefix="lungedge-export-")
    try:
        run = prepare(recipe, run_dir, data_dir, threads)
        _build_bundle(run, copy.deepcopy(run.baseline), staging, work, None, None, run_dir, time_runs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _publish(staging, out_dir)
