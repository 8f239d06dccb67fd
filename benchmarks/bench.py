"""``run_bench``: every compressed variant against its uncompressed baseline, on the same images, in the same run.

Rows: the torch FP32 baseline (``torch_run``, when given: the reference), the baseline's FP32 ONNX bundle, then
each variant bundle's artifacts (every one this machine can run, or the one named ``PATH:ARTIFACT``). For every
row the same decoded images are scored (accuracy at the validation-fitted threshold, fidelity to the reference,
paired-bootstrap deltas with verdicts), timed interleaved with the others (batch 1 with its preprocess / model /
postprocess stages, then batch N), measured for peak RSS in its own subprocess, and sized (bytes, MACs,
parameters). Variants take their threshold rule and tolerances from their recipe; the reference and the
baseline's own export use the Youden rule and ``accuracy.DEFAULTS``. On a Jetson, tegrastats runs throughout and each row gets an energy-per-image phase of its own.
The result is one plain dict (``report.write_outputs`` turns it into JSON, Markdown and plots).
"""

import datetime
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional, Tuple

import numpy as np

from lungedge.benchmarks import accuracy as A
from lungedge.benchmarks import scoring as SC
from lungedge.benchmarks import speed as SP
from lungedge.benchmarks.data import group_numbers, load_split
from lungedge.benchmarks.environment import describe
from lungedge.benchmarks.runners import (
    backend_spec,
    bundle_rows,
    open_runner,
    parse_variant,
    resolve_backends,
)
from lungedge.runtime.enums import BackendName, TaskKind
from lungedge.runtime.errors import BundleError, ConfigError

SCHEMA = "lungedge.bench/1"
THRESHOLD_SOURCES = ("val", "bundle")
FORBIDDEN_SUBGROUPS = {"patient_id", "file", "mask_file", "source_path", "url_or_doi"}


@dataclass(frozen=True)
class BenchConfig:
    """How long and how hard to measure; the CLI maps its flags onto these."""

    threads: int = 0  # 0: every logical CPU
    batch: int = 8
    rounds: int = 50  # interleaved batch-1 rounds
    batch_rounds: int = 15  # interleaved batch-N rounds
    warmup: int = 5
    max_seconds: float = 180.0  # per timing phase, once min_rounds are done
    min_rounds: int = 10
    settle_ms: float = 0.0  # untimed pause after every timed call (keeps spinning worker threads off the next call)
    memory_runs: int = 20  # predictions in each memory subprocess (0: skip memory)
    n_boot: int = 2000
    seed: int = 0
    max_images: int = 0  # 0: all; else per label (classification) or in all (segmentation)
    energy_seconds: float = 5.0  # Jetson only: steady batch-1 run per row for energy per image
    plots: bool = True
    subgroups: tuple = ()  # manifest columns ("source", "age_group", "view", "source+label") to report per value
    subgroup_n_boot: int = 1000
    thresholds: str = "val"  # "val": re-fit on the validation split; "bundle": the thresholds the bundles ship
    calibration_bins: int = 10  # equal-mass bins of the ECE and the reliability diagram
    # CPU backends each ONNX artifact is timed on (runners.CPU_BACKENDS, or "auto": all this machine can run).
    backends: tuple = ("onnxruntime",)

    def __post_init__(self):
        if self.thresholds not in THRESHOLD_SOURCES:
            raise BundleError(f"thresholds {self.thresholds!r}; choose one of {THRESHOLD_SOURCES}")
        object.__setattr__(self, "subgroups", tuple(self.subgroups))
        for column in self.subgroups:
            if set(column.split("+")) & FORBIDDEN_SUBGROUPS:
                raise BundleError(f"subgroup {column!r}: identifiers and file names are never reported; "
                                  "use a column such as source, age_group or view")

    def resolved_threads(self):
        return self.threads or os.cpu_count() or 1


def _bar(enabled):
    if not enabled:
        return None

    def bar(desc, total=None):
        from tqdm import tqdm

        return lambda it: tqdm(it, desc=desc, total=total, leave=False, unit="it")
    return bar


def resolve_rows(baseline, variants, torch_run, backends=("onnxruntime",)):
    """Row specs (dicts for ``runners.open_runner``) with their role; the first row is the reference.

    Each ONNX artifact gets one row per CPU backend in ``backends`` (ONNX Runtime first; the reference row is
    always the first artifact on its own backend)."""
    if not baseline and not torch_run:
        raise BundleError("no baseline: give the baseline's FP32 ONNX bundle (--baseline), its training run "
                          "(--torch-run), or both; variants are only ever compared with their baseline")
    rows = []
    if torch_run:
        rows.append({"torch_run": torch_run, "role": "reference"})
    cpu = resolve_backends(backends)
    if baseline:
        path, key = parse_variant(baseline)
        for p, k in bundle_rows(path, key):
            for spec in _on_backends(p, k, cpu):
                rows.append(dict(spec, role="reference" if not rows else "baseline"))
    for v in variants:
        path, key = parse_variant(v)
        for p, k in bundle_rows(path, key):
            rows.extend(dict(spec, role="variant") for spec in _on_backends(p, k, cpu))
    return rows


def _on_backends(path, key, cpu):
    """Row specs of one artifact: once per CPU backend for an ONNX artifact, once for anything else."""
    from lungedge.runtime.bundle import Bundle

    art = Bundle.load(path, verify=False).manifest["artifacts"][key]
    base = {"bundle": path, "artifact": key}
    if art.get("backend") != BackendName.ONNXRUNTIME or art.get("format", "onnx") != "onnx":
        return [base]
    return [dict(base, **backend_spec(b)) for b in cpu]


@dataclass(frozen=True)
class BenchInputs:
    """What one bench run compares, on which images, and where it writes (the command line's operands)."""

    baseline: Optional[str]
    variants: Tuple[str, ...]
    data: str
    split: str = "test"
    torch_run: Optional[str] = None
    out: Optional[str] = None
    lung_bundle: Optional[str] = None


def command_line(inputs, cfg):
    """The ``lungedge bench`` command that reproduces a run of ``inputs`` (a BenchInputs) with ``cfg``."""
    baseline, variants, data, split = inputs.baseline, inputs.variants, inputs.data, inputs.split
    torch_run, out, lung_bundle = inputs.torch_run, inputs.out, inputs.lung_bundle
    parts = ["lungedge", "bench"]
    if baseline:
        parts += ["--baseline", baseline]
    if variants:
        parts += ["--variants"] + list(variants)
    parts += ["--data", data, "--split", split]
    if torch_run:
        parts += ["--torch-run", torch_run]
    if lung_bundle:
        parts += ["--lung-bundle", lung_bundle]
    if cfg.subgroups:
        parts += ["--subgroups", ",".join(cfg.subgroups)]
    if cfg.thresholds != "val":
        parts += ["--thresholds", cfg.thresholds]
    parts += ["--threads", str(cfg.resolved_threads()), "--batch", str(cfg.batch)]
    defaults = BenchConfig()
    for name in ("rounds", "batch_rounds", "warmup", "max_images", "memory_runs", "n_boot", "seed", "settle_ms"):
        if getattr(cfg, name) != getattr(defaults, name):
            parts += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    if tuple(cfg.backends) != tuple(defaults.backends):
        parts += ["--backends"] + list(cfg.backends)
    if out:
        parts += ["--out", out]
    return " ".join(parts)


def predict_all(runner, images, batch, progress=None):
    """Post-processed outputs for every image, ``batch`` images per model call."""
    out = []
    chunks = range(0, len(images), batch)
    for start in (progress(chunks) if progress else chunks):
        chunk = images[start:start + batch]
        prepared = [runner.prepare(im.array, im.meta) for im in chunk]
        raw = runner.run(np.stack([t for t, _ in prepared]))
        out.extend(runner.postprocess(row, nm, im.meta) for row, (_, nm), im in zip(raw, prepared, chunk))
    return out


def run_bench(baseline=None, variants=(), data=None, split="test", torch_run=None, out=None, progress=True,
              config=None, lung_bundle=None, **options):
    """Benchmark ``variants`` against the baseline on ``data``/``split``; returns the results dict.

    baseline: FP32 ONNX bundle of the baseline (``PATH`` or ``PATH:ARTIFACT``); exported from ``torch_run`` into
    ``out`` when omitted. torch_run: the training run folder of the torch FP32 baseline (the reference when given).
    config: a BenchConfig, or its fields as keyword ``options``. out: folder for results.json, report.md, plots.
    lung_bundle: the X-ray lung segmentation bundle, required when the rows were trained on lung crops.
    data: a dev-pack folder or (external evaluation, with ``thresholds="bundle"`` and split "all") a
    folder-per-class tree.
    """
    cfg = config or BenchConfig(**options)
    cfg = replace(cfg, backends=resolve_backends(cfg.backends))  # "auto" recorded as what it meant here
    if data is None:
        raise ConfigError("data: a dev-pack style folder with manifest.csv is required")
    threads = cfg.resolved_threads()
    bar = _bar(progress)
    if cfg.thresholds == "val" and split == "all":
        raise BundleError("split 'all' evaluates a folder with no validation split: use the bundles' own "
                          "thresholds (--thresholds bundle)")
    specs = resolve_rows(baseline, list(variants), torch_run, cfg.backends)
    runners = [open_runner(s, threads=threads) for s in specs]
    try:
        crop = _lung_crop(runners, lung_bundle, threads)
        inputs = BenchInputs(baseline, tuple(variants), data, split, torch_run, out, lung_bundle)
        return _bench(runners, specs, inputs, cfg, bar, crop)
    finally:
        for r in runners:
            r.close()


def _lung_crop(runners, lung_bundle, threads):
    """The LungCrop every row was trained with (all alike), or None; refuses mixed or missing crops."""
    crops = {r.name: getattr(r, "input_crop", None) for r in runners}
    shas = {(c or {}).get("segmenter_manifest_sha256") for c in crops.values()}
    if len(shas) > 1:
        raise BundleError("the rows were trained on different inputs (lung crops by different segmenters, or crops "
                          f"vs whole films): {crops}; compare like with like")
    needed = next(iter(crops.values()))
    if needed is None:
        if lung_bundle:
            raise BundleError("--lung-bundle was given but no row was trained on lung crops")
        return None
    if not lung_bundle:
        raise BundleError(f"the rows were trained on lung crops by {needed.get('segmenter')!r}: give that bundle "
                          "(--lung-bundle)")
    from lungedge.runtime.pipelines import LungCrop
    from lungedge.runtime.predictor import Predictor

    crop = LungCrop(Predictor.from_bundle(lung_bundle, threads=threads), needed.get("margin", 0.05))
    crop.check(needed)
    return crop


def _check_same_task(runners):
    ref = runners[0]
    for r in runners[1:]:
        if (r.task, r.modality, r.labels) != (ref.task, ref.modality, ref.labels):
            raise BundleError(f"{r.name} is a {r.modality} {r.task} model with labels {r.labels}, but the baseline "
                              f"{ref.name} is {ref.modality} {ref.task} with {ref.labels}; compare like with like")


def _unique_names(runners):
    """Suffix repeated row names (the same bundle given twice) so every row has its own key."""
    seen = {}
    for r in runners:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"


def _bench(runners, specs, inputs, cfg, bar, crop=None):
    data, split, out = inputs.data, inputs.split, inputs.out
    threads = cfg.resolved_threads()
    _check_same_task(runners)
    _unique_names(runners)
    ref = runners[0]
    task, labels, positive = ref.task, ref.labels, ref.positive_label
    started = time.time()
    images = load_split(data, split, task, labels, cfg.max_images, bar(f"read {split}") if bar else None, crop)
    refit = task == TaskKind.CLASSIFICATION and cfg.thresholds == "val"
    val = (load_split(data, "val", task, labels, cfg.max_images, bar("read val") if bar else None, crop)
           if refit else [])
    groups = group_numbers(images)
    outputs = {r.name: {"test": predict_all(r, images, cfg.batch, bar(f"{r.name} {split}") if bar else None),
                        "val": predict_all(r, val, cfg.batch, bar(f"{r.name} val") if bar else None)}
               for r in runners}
    rows = [{"name": r.name, "role": s["role"], "info": r.info, "manifest": _manifest_summary(r),
             "complexity": SP.complexity(r)} for r, s in zip(runners, specs)]
    scoring = SC.Scoring(rows, runners, outputs, images, val, labels, positive, groups, cfg)
    if task == TaskKind.CLASSIFICATION:
        SC.score_classification(scoring)
        SC.score_calibration(scoring)
        subgroups = SC.score_subgroups(scoring)
    else:
        subgroups = None
        SC.score_segmentation(scoring)
    guards, jetson = SP.measure_speed(rows, runners, images[:16], cfg, bar)
    for r in runners:
        r.close()  # free the models before the memory subprocesses run
    SP.measure_memory(rows, specs, [im.file for im in images[:8]], cfg, threads)
    results = {
        "schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "task": task, "modality": ref.modality, "labels": labels, "positive_label": positive,
        "reference": ref.name,
        "data": {"dir": os.path.abspath(data), "name": os.path.basename(os.path.normpath(data)), "split": split,
                 "n_images": len(images), "n_patients": len(set(groups)), "n_val_images": len(val),
                 "label_counts": SC.label_counts(images) if task == TaskKind.CLASSIFICATION else None,
                 "threshold_fit_split": "val" if refit else None,
                 "threshold_source": ("val" if refit else "bundle") if task == TaskKind.CLASSIFICATION else None,
                 "threshold_fit_on_evaluated_split": refit and split == "val",
                 "lung_crop": crop.spec if crop else None},
        "subgroups": subgroups,
        "per_image": {"files": [os.path.basename(im.file) for im in images], "groups": groups,
                      "labels": [im.label for im in images] if task == TaskKind.CLASSIFICATION else None,
                      "val_labels": [im.label for im in val] if task == TaskKind.CLASSIFICATION else None},
        "config": dict(asdict(cfg), threads=threads),
        "command": command_line(inputs, cfg),
        "environment": describe(threads),
        "timing_guard": guards,
        "noisy": any(bool(g.get("noisy")) for g in guards.values()),
        "jetson": jetson,
        "throttled": bool(jetson and (jetson["tegrastats"] or {}).get("throttled")),
        "rows": rows,
        "seconds": time.time() - started,
    }
    if out:
        from lungedge.benchmarks.report import write_outputs

        write_outputs(results, out, examples=SC.examples(results, images, outputs), plots=cfg.plots)
    return results


def _manifest_summary(runner):
    if runner.kind != "bundle":
        return None
    m = runner.manifest
    prov = m.get("provenance") or {}
    recipe = prov.get("recipe")
    return {"name": m["name"], "thresholds": m.get("thresholds"), "recipe_name": (recipe or {}).get("name")
            if isinstance(recipe, dict) else None, "gate": A.recipe_gate(m) or None,
            "baseline": prov.get("baseline"), "git_commit": prov.get("git_commit"), "created": prov.get("created")}


