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
import itertools
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional, Tuple

import numpy as np

from lungedge.benchmarks import accuracy as A
from lungedge.benchmarks import latency as L
from lungedge.benchmarks.data import group_numbers, load_split
from lungedge.benchmarks.environment import describe
from lungedge.benchmarks.macs import MacCountError, count_onnx_macs
from lungedge.benchmarks.memory import measure_peak_rss
from lungedge.benchmarks.runners import (
    backend_spec,
    bundle_rows,
    open_runner,
    parse_variant,
    resolve_backends,
)
from lungedge.benchmarks.tegrastats import TegrastatsSampler, energy_per_image, summarize
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
    if art.get("backend") != "onnxruntime" or art.get("format", "onnx") != "onnx":
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


@dataclass
class _Scoring:
    """The state every scoring step reads: rows (written into), their runners and outputs, the images."""

    rows: list
    runners: list
    outputs: dict
    images: list
    val: list
    labels: list
    positive: Optional[str]
    groups: list
    cfg: "BenchConfig"


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


def _probs(outputs):
    return np.stack([o["probabilities"] for o in outputs])


def _complexity(runner):
    """Dense MACs and parameters from the ONNX graph (a torch model is exported first) plus torch-pruning's count."""
    info = runner.info
    out = {"macs": None, "params": None, "macs_source": "onnx graph (dense ops, batch 1)", "macs_torch_pruning": None}
    try:
        if info["kind"] == "torch":
            import torch

            from lungedge.compress.export import export_onnx
            from lungedge.compress.prune import count_macs

            size = tuple(info["input_size"])
            out["macs_torch_pruning"], out["params_torch"] = count_macs(runner.model, torch.zeros(1, 1, *size))
            with tempfile.TemporaryDirectory() as tmp:
                counted = count_onnx_macs(export_onnx(runner.model, os.path.join(tmp, "m.onnx"), size))
            out["params"] = out["params_torch"]
        elif info["format"] == "onnx":
            counted = count_onnx_macs(info["model_path"])
            out["params"] = counted["params"]
        else:  # a TensorRT engine: count its ONNX source when the bundle has an FP32 one
            src = os.path.join(info["bundle"], "model.onnx")
            if not os.path.isfile(src):
                return out
            counted = count_onnx_macs(src)
            out["params"] = counted["params"]
            out["macs_source"] = "onnx source of the engine"
        out["macs"] = counted["macs"]
        out["macs_by_op"] = counted["by_op"]
        out["macs_unresolved"] = counted["unresolved"]
    except (MacCountError, ImportError, OSError) as exc:
        out["error"] = str(exc)
    return out


def _timing(runners, pool, cfg, progress):
    """Interleaved batch-1 (stages) and batch-N phases, each under a CPU-load guard."""
    cycle = {r.name: itertools.cycle(pool) for r in runners}
    clock = time.perf_counter

    def staged(runner):
        images = cycle[runner.name]

        def step():
            im = next(images)
            t0 = clock()
            tensor, net_meta = runner.prepare(im.array, im.meta)
            t1 = clock()
            raw = runner.run(tensor[None])
            t2 = clock()
            runner.postprocess(raw[0], net_meta, im.meta)
            t3 = clock()
            return {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2}
        return step

    def batched(runner):
        prepared = [runner.prepare(im.array, im.meta)[0] for im in itertools.islice(itertools.cycle(pool), cfg.batch)]
        x = np.stack(prepared)
        return lambda: runner.run(x)

    bar1 = progress("time batch 1") if progress else None
    with L.CpuLoadGuard() as guard1:
        b1 = L.interleaved({r.name: staged(r) for r in runners}, cfg.rounds, cfg.warmup, clock=clock,
                           max_seconds=cfg.max_seconds, min_rounds=cfg.min_rounds, progress=bar1,
                           settle_s=cfg.settle_ms / 1000.0)
    barn = progress(f"time batch {cfg.batch}") if progress else None
    with L.CpuLoadGuard() as guardn:
        bn = L.interleaved({r.name: batched(r) for r in runners}, cfg.batch_rounds, max(1, cfg.warmup // 2),
                           clock=clock, max_seconds=cfg.max_seconds, min_rounds=min(cfg.min_rounds, cfg.batch_rounds),
                           progress=barn, settle_s=cfg.settle_ms / 1000.0)
    return b1, bn, {"batch1": guard1.result(), "batchN": guardn.result()}


def _latency_row(b1, bn, batch):
    stages = {k: L.summarize_times(v) for k, v in b1["stages"].items()}
    model_p50 = stages["model"]["p50_ms"]
    share = (stages["preprocess"]["p50_ms"] + stages["postprocess"]["p50_ms"]) / model_p50 if model_p50 else None
    return {"batch1": stages["model"], "batch1_end_to_end": L.summarize_times(b1["seconds"]), "stages": stages,
            "pre_post_share_of_model": share, "batchN": L.summarize_times(bn["seconds"], batch=batch),
            "raw_seconds": {"batch1_total": b1["seconds"], "batch1_stages": b1["stages"], "batchN": bn["seconds"]}}


def _speedups(ref_b1, ref_bn, b1, bn, n_boot, seed):
    return {"batch1": L.ratio_of_medians(ref_b1["stages"]["model"], b1["stages"]["model"], n_boot, seed),
            "batch1_end_to_end": L.ratio_of_medians(ref_b1["seconds"], b1["seconds"], n_boot, seed),
            "batchN": L.ratio_of_medians(ref_bn["seconds"], bn["seconds"], n_boot, seed)}


def _energy(runners, pool, sampler, seconds):
    """Jetson: idle power, then a steady batch-1 run per row; mean power, energy per image, throttling."""
    if not sampler.available:
        return None
    t0 = time.monotonic()
    time.sleep(min(2.0, seconds))
    idle = summarize(sampler.window(t0, time.monotonic()))
    out = {"idle": idle, "rows": {}}
    for r in runners:
        n, start = 0, time.monotonic()
        for im in itertools.cycle(pool):
            tensor, net_meta = r.prepare(im.array, im.meta)
            r.postprocess(r.run(tensor[None])[0], net_meta, im.meta)
            n += 1
            if time.monotonic() - start >= seconds:
                break
        end = time.monotonic()
        window = sampler.window(start, end)
        out["rows"][r.name] = {"images": n, "seconds": end - start, "summary": summarize(window),
                               "energy_per_image_j": energy_per_image(window, end - start, n)}
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
    refit = task == "classification" and cfg.thresholds == "val"
    val = (load_split(data, "val", task, labels, cfg.max_images, bar("read val") if bar else None, crop)
           if refit else [])
    groups = group_numbers(images)
    outputs = {r.name: {"test": predict_all(r, images, cfg.batch, bar(f"{r.name} {split}") if bar else None),
                        "val": predict_all(r, val, cfg.batch, bar(f"{r.name} val") if bar else None)}
               for r in runners}
    rows = [{"name": r.name, "role": s["role"], "info": r.info, "manifest": _manifest_summary(r),
             "complexity": _complexity(r)} for r, s in zip(runners, specs)]
    scoring = _Scoring(rows, runners, outputs, images, val, labels, positive, groups, cfg)
    if task == "classification":
        _score_classification(scoring)
        _score_calibration(scoring)
        subgroups = _score_subgroups(scoring)
    else:
        subgroups = None
        _score_segmentation(scoring)
    guards, jetson = _measure_speed(rows, runners, images[:16], cfg, bar)
    for r in runners:
        r.close()  # free the models before the memory subprocesses run
    _measure_memory(rows, specs, [im.file for im in images[:8]], cfg, threads)
    results = {
        "schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "task": task, "modality": ref.modality, "labels": labels, "positive_label": positive,
        "reference": ref.name,
        "data": {"dir": os.path.abspath(data), "name": os.path.basename(os.path.normpath(data)), "split": split,
                 "n_images": len(images), "n_patients": len(set(groups)), "n_val_images": len(val),
                 "label_counts": _label_counts(images) if task == "classification" else None,
                 "threshold_fit_split": "val" if refit else None,
                 "threshold_source": ("val" if refit else "bundle") if task == "classification" else None,
                 "threshold_fit_on_evaluated_split": refit and split == "val",
                 "lung_crop": crop.spec if crop else None},
        "subgroups": subgroups,
        "per_image": {"files": [os.path.basename(im.file) for im in images], "groups": groups,
                      "labels": [im.label for im in images] if task == "classification" else None,
                      "val_labels": [im.label for im in val] if task == "classification" else None},
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

        write_outputs(results, out, examples=_examples(results, images, outputs), plots=cfg.plots)
    return results


def _measure_speed(rows, runners, pool, cfg, bar):
    """Timing phases (and, on a Jetson, tegrastats and energy) into each row; returns (guards, jetson summary)."""
    sampler = TegrastatsSampler().start()
    try:
        b1, bn, guards = _timing(runners, pool, cfg, bar)
        energy = _energy(runners, pool, sampler, cfg.energy_seconds)
        jetson = {"tegrastats": summarize([s for _, s in sampler.samples]), "energy": energy} if energy else None
    finally:
        sampler.stop()
    ref = runners[0].name
    ref_bytes, ref_macs = rows[0]["info"]["bytes"], rows[0]["complexity"].get("macs")
    for row, r in zip(rows, runners):
        row["latency"] = _latency_row(b1[r.name], bn[r.name], cfg.batch)
        row["speedup"] = _speedups(b1[ref], bn[ref], b1[r.name], bn[r.name], cfg.n_boot, cfg.seed)
        row["size_ratio"] = ref_bytes / row["info"]["bytes"] if row["info"]["bytes"] else None
        macs = row["complexity"].get("macs")
        row["macs_ratio"] = ref_macs / macs if ref_macs and macs else None
        row["energy"] = energy["rows"].get(r.name) if energy else None
    return guards, jetson


def _measure_memory(rows, specs, files, cfg, threads):
    """Peak RSS of each row in its own subprocess (None when ``memory_runs`` is 0)."""
    for row, spec in zip(rows, specs):
        row["memory"] = None
        if cfg.memory_runs:
            mem_spec = {k: spec[k] for k in ("torch_run", "bundle", "artifact", "backend", "inference_precision")
                        if k in spec}
            row["memory"] = measure_peak_rss(mem_spec, files, n=cfg.memory_runs, threads=threads)


def _manifest_summary(runner):
    if runner.kind != "bundle":
        return None
    m = runner.manifest
    prov = m.get("provenance") or {}
    recipe = prov.get("recipe")
    return {"name": m["name"], "thresholds": m.get("thresholds"), "recipe_name": (recipe or {}).get("name")
            if isinstance(recipe, dict) else None, "gate": A.recipe_gate(m) or None,
            "baseline": prov.get("baseline"), "git_commit": prov.get("git_commit"), "created": prov.get("created")}


def _label_counts(images):
    counts = {}
    for im in images:
        counts[im.label] = counts.get(im.label, 0) + 1
    return counts


def _score_classification(sc):
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    val, labels, positive, groups = sc.val, sc.labels, sc.positive, sc.groups
    test_idx = np.array([labels.index(im.label) for im in images])
    val_idx = np.array([labels.index(im.label) for im in val])
    pos = labels.index(positive)
    scored = {}
    for i, (row, r) in enumerate(zip(rows, runners)):
        manifest = r.manifest if r.kind == "bundle" else None
        probs_t = _probs(outputs[r.name]["test"])
        if cfg.thresholds == "bundle":
            if r.stored_threshold is None:
                raise BundleError(f"{r.name} ships no threshold for {positive!r} (a torch run needs the metrics.json "
                                  "of lungedge train); evaluate with --thresholds val on a folder with a val split")
            row["accuracy"] = A.score_classification_at(labels, positive, test_idx, probs_t, r.stored_threshold)
        else:
            rule = A.threshold_rule_for(manifest) if row["role"] == "variant" else "youden"
            ref_sens = None
            if i and rule == A.MATCH_BASELINE:
                ref_sens = rows[0]["accuracy"]["val"].get("sensitivity")
            probs_v = _probs(outputs[r.name]["val"])
            row["accuracy"] = A.score_classification(labels, positive, val_idx, probs_v, test_idx, probs_t, rule,
                                                     ref_sens)
            row["per_image_val_probabilities"] = probs_v.tolist()
        row["per_image_probabilities"] = probs_t.tolist()
        row["accuracy"]["test_ci"] = _test_cis(test_idx == pos, probs_t[:, pos], row["accuracy"]["threshold"],
                                               groups, cfg)
        row["tolerances"], row["tolerance_source"] = A.tolerances_for(manifest if row["role"] == "variant" else None)
        scored[r.name] = {"probs": probs_t, "threshold": row["accuracy"]["threshold"]}
    ref = scored[runners[0].name]
    for row, r in zip(rows[1:], runners[1:]):
        var = scored[r.name]
        row["fidelity"] = A.fidelity_classification(ref["probs"], var["probs"], pos, ref["threshold"], var["threshold"])
        row["deltas"] = A.classification_deltas(labels, positive, test_idx, groups, ref, var, row["tolerances"],
                                                cfg.n_boot, cfg.seed)
        row["verdict"] = A.overall_verdict(row["deltas"])
    rows[0]["fidelity"], rows[0]["deltas"], rows[0]["verdict"] = None, None, None


def _test_cis(y, scores, threshold, groups, cfg):
    """AUC, sensitivity and specificity of the positive label on the evaluated split with patient-bootstrap CIs."""
    from lungedge import metrics as M
    from lungedge.metrics import bootstrap as S
    from lungedge.metrics import strict_sensitivity, strict_specificity

    y = np.asarray(y).astype(int)
    calls = (np.asarray(scores) >= threshold).astype(int)
    out = {}
    for name, fn, s in (("auc", M.roc_auc, scores), ("sensitivity", strict_sensitivity, calls),
                        ("specificity", strict_specificity, calls)):
        try:
            out[name] = S.bootstrap_ci(fn, y, s, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed)
        except M.MetricError as exc:
            out[name] = {"error": str(exc)}
    return out


def _score_calibration(sc):
    """ECE (equal-mass bins), Brier score and reliability curve of P(positive) per row, and the change from the
    reference with paired patient-bootstrap intervals."""
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    labels, positive, groups = sc.labels, sc.positive, sc.groups
    from lungedge.metrics import bootstrap as S
    from lungedge.metrics import calibration as C

    pos = labels.index(positive)
    y = np.array([int(im.label == positive) for im in images])
    probs = {r.name: _probs(outputs[r.name]["test"])[:, pos] for r in runners}
    ref = runners[0].name

    def ece(yy, p):
        return C.expected_calibration_error(yy, p, cfg.calibration_bins)

    for row, r in zip(rows, runners):
        row["calibration"] = C.calibration_report(y, probs[r.name], cfg.calibration_bins)
        if r.name == ref:
            row["calibration"]["delta"] = None
            continue
        delta = {}
        for name, fn in (("ece", ece), ("brier", C.brier_score)):
            try:
                delta[name] = S.paired_bootstrap(fn, y, probs[ref], probs[r.name], groups=groups,
                                                 n_boot=cfg.n_boot, seed=cfg.seed)
            except ValueError as exc:
                delta[name] = {"error": str(exc)}
        row["calibration"]["delta"] = delta


def _score_subgroups(sc):
    """Per-subgroup tables (``subgroups.subgroup_tables``) for the configured columns, or None."""
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    labels, positive, groups = sc.labels, sc.positive, sc.groups
    if not cfg.subgroups:
        return None
    from lungedge.benchmarks.subgroups import MAX_DROP, MIN_N, Cases, SubgroupOptions, subgroup_tables

    attributes = [dict(im.extra, label=im.label) for im in images]
    y_idx = np.array([labels.index(im.label) for im in images])
    table_rows = [{"name": r.name, "probs": _probs(outputs[r.name]["test"]), "threshold": row["accuracy"]["threshold"]}
                  for row, r in zip(rows, runners)]
    tables = subgroup_tables(cfg.subgroups, Cases(attributes, y_idx, groups, labels, positive), table_rows,
                             SubgroupOptions(n_boot=cfg.subgroup_n_boot, seed=cfg.seed))
    return {"columns": list(cfg.subgroups), "min_n": MIN_N, "max_drop": MAX_DROP, "tables": tables}


def _score_segmentation(sc):
    rows, runners, outputs, images, cfg = sc.rows, sc.runners, sc.outputs, sc.images, sc.cfg
    groups = sc.groups
    masks = {r.name: [o["mask"] for o in outputs[r.name]["test"]] for r in runners}
    for row, r in zip(rows, runners):
        row["accuracy"] = A.score_segmentation(masks[r.name], images)
        row["tolerances"], row["tolerance_source"] = A.tolerances_for(r.manifest if row["role"] == "variant" else None)
    ref_name = runners[0].name
    ref_dice = rows[0]["accuracy"]["per_image"]["dice"]
    for row, r in zip(rows[1:], runners[1:]):
        row["fidelity"] = A.fidelity_segmentation(masks[ref_name], masks[r.name])
        row["deltas"] = A.segmentation_deltas(groups, ref_dice, row["accuracy"]["per_image"]["dice"],
                                              row["tolerances"], cfg.n_boot, cfg.seed)
        row["verdict"] = A.overall_verdict(row["deltas"])
    rows[0]["fidelity"], rows[0]["deltas"], rows[0]["verdict"] = None, None, None


def _examples(results, images, outputs, k=4):
    """Images where the least faithful variant and the reference disagree most (for the overlay figure)."""
    rows = results["rows"]
    if len(rows) < 2:
        return None
    ref = rows[0]["name"]
    if results["task"] == "classification":
        pos = results["labels"].index(results["positive_label"])
        worst_row = max(rows[1:], key=lambda r: r["fidelity"]["mean_abs_delta_positive"])
        a = np.array([o["probabilities"][pos] for o in outputs[ref]["test"]])
        b = np.array([o["probabilities"][pos] for o in outputs[worst_row["name"]]["test"]])
        order = np.argsort(-np.abs(a - b))[:k]
        return {"task": "classification", "variant": worst_row["name"], "reference": ref,
                "items": [{"image": images[i].array, "file": os.path.basename(images[i].file),
                           "label": images[i].label, "reference_p": float(a[i]), "variant_p": float(b[i])}
                          for i in order]}
    worst_row = min(rows[1:], key=lambda r: r["fidelity"]["dice_to_baseline"]["mean"])
    per = np.array(worst_row["fidelity"]["per_image_dice_to_baseline"])
    order = np.argsort(per)[:k]
    return {"task": "segmentation", "variant": worst_row["name"], "reference": ref,
            "items": [{"image": images[i].array, "file": os.path.basename(images[i].file), "gt": images[i].mask,
                       "reference_mask": outputs[ref]["test"][i]["mask"],
                       "variant_mask": outputs[worst_row["name"]]["test"][i]["mask"],
                       "dice_to_baseline": float(per[i])} for i in order]}
