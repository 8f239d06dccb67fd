"""The bundle's default CPU artifact and backend, chosen by measured latency among the variants that pass the gate.

Candidates are every ONNX artifact on ONNX Runtime and, where OpenVINO is installed, on OpenVINO at f32 and
(on CPUs that have it) bf16. A candidate counts only if its validation outputs pass the recipe's gate at the
threshold the bundle records for that artifact (the one the runtime will use), so BF16 is gated like any other
variant. Survivors are timed at batch 1, interleaved in one process (shared machines drift; interleaving keeps
the comparison fair) at 1 thread and at every logical CPU, and the fastest median wins, thread count included. The choice, every candidate's numbers and the CPU it was
measured on go into ``manifest["cpu_default"]``; ``Predictor.from_bundle(path, backend="auto")`` opens it.
The choice belongs to the machine it was measured on: rerun it on the bedside CPU when that differs.
"""

import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

from lungedge.compress import gate as G
from lungedge.models.evaluate import evaluate
from lungedge.runtime.enums import BackendName

RULE = ("lowest batch-1 median latency, interleaved, among candidates whose validation outputs pass the gate "
        "at the artifact's recorded threshold")


def openvino_precisions():
    """OpenVINO inference precisions this machine can run: () without OpenVINO, f32, and bf16 where the CPU has it."""
    from lungedge.runtime.backends.openvino import available_precisions

    return available_precisions()


def candidates(artifacts, ov_precisions):
    """[(artifact key, backend, inference precision or None)] for every ONNX artifact made for ONNX Runtime."""
    out = []
    for key in sorted(artifacts):
        art = artifacts[key]
        if art.get("backend") != BackendName.ONNXRUNTIME or art.get("format", "onnx") != "onnx":
            continue
        out.append((key, "onnxruntime", None))
        out.extend((key, "openvino", p) for p in ov_precisions)
    return out


def open_candidate(path, backend, precision, threads, cache_dir=None):
    from lungedge.runtime.backends import create_backend

    if backend == BackendName.OPENVINO:
        return create_backend("openvino", path, precision=precision, threads=threads, cache_dir=cache_dir)
    return create_backend("onnxruntime", path, threads=threads)


def outputs_of(backend, images, batch_size=32):
    return np.concatenate([backend.run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def interleaved_medians(backends, example, rounds=50, warmup=5):
    """Median batch-1 milliseconds per backend, one call of each in turn per round."""
    for _ in range(warmup):
        for b in backends.values():
            b.run(example)
    times = {name: [] for name in backends}
    for _ in range(rounds):
        for name, b in backends.items():
            t0 = time.perf_counter()
            b.run(example)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_model():
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _name(key, backend, precision):
    return f"{key}@{backend}" + (f"-{precision}" if precision else "")


def thread_options(threads=None):
    """Thread counts to time: the one given, else 1 and every logical CPU (2 threads can lose to 1 on a busy box)."""
    if threads:
        return (int(threads),)
    return tuple(sorted({1, os.cpu_count() or 1}))


@dataclass(frozen=True)
class GateData:
    """What a candidate is gated on: the task, the baseline's validation metrics, the validation set, the gate."""

    spec: object  # runtime.tasks.TaskSpec
    baseline_val: dict
    images: object  # (N, 1, H, W) float32 validation inputs
    targets: object
    gate: object  # compress.gate.GateConfig


@dataclass(frozen=True)
class Timing:
    """How candidates are timed: ``threads`` None times every count of ``thread_options`` and keeps the fastest;
    ``ov_precisions`` None tries what this machine's OpenVINO can run."""

    threads: int = None
    rounds: int = 50
    ov_precisions: tuple = None
    cache_dir: str = None


def choose_cpu_default(data, paths, artifacts, timing=Timing()):
    """Gate, time and pick; returns the ``cpu_default`` manifest record.

    data: a ``GateData``. paths: artifact key -> ONNX file. artifacts: the manifest's artifact entries (their
    ``threshold`` is the one each candidate is gated at). timing: a ``Timing``.
    """
    spec, baseline_val, val_images, val_targets, gate_config = (data.spec, data.baseline_val, data.images,
                                                                data.targets, data.gate)
    rounds, cache_dir = timing.rounds, timing.cache_dir
    ov_precisions = openvino_precisions() if timing.ov_precisions is None else tuple(timing.ov_precisions)
    counts = thread_options(timing.threads)
    measured, timed = [], {}
    try:
        for key, backend, precision in candidates(artifacts, ov_precisions):
            name = _name(key, backend, precision)
            b = open_candidate(paths[key], backend, precision, counts[0], cache_dir)
            probs = G.probabilities(outputs_of(b, val_images))
            threshold = artifacts[key].get("threshold")
            metrics = evaluate(spec, probs, val_targets, threshold=threshold)
            verdict = G.judge(spec.kind, baseline_val, metrics, gate_config, name=name)
            measured.append({"artifact": key, "backend": backend, "inference_precision": precision,
                             "gate_passed": verdict.passed, "gate": verdict.to_dict(), "latency_ms": None,
                             "latency_ms_by_threads": None, "threads": None})
            if not verdict.passed:
                b.close()
                continue
            timed[(name, counts[0])] = b
            for n in counts[1:]:
                timed[(name, n)] = open_candidate(paths[key], backend, precision, n, cache_dir)
        if not timed:
            return {"artifact": None, "backend": None, "inference_precision": None, "rule": RULE,
                    "candidates": measured, "reason": "no candidate passes the gate on this machine"}
        h, w = np.asarray(val_images).shape[-2:]
        medians = interleaved_medians(timed, np.zeros((1, 1, h, w), np.float32), rounds=rounds)
    finally:
        for b in timed.values():
            b.close()
    for m in measured:
        if m["gate_passed"]:
            by = {n: round(medians[(m["gate"]["variant"], n)], 4) for n in counts}
            m["latency_ms_by_threads"] = {str(n): v for n, v in by.items()}
            m["threads"] = min(by, key=by.get)
            m["latency_ms"] = by[m["threads"]]
    best = min((m for m in measured if m["gate_passed"]), key=lambda m: m["latency_ms"])
    return {"artifact": best["artifact"], "backend": best["backend"],
            "inference_precision": best["inference_precision"], "latency_ms": best["latency_ms"],
            "threads": best["threads"], "thread_options": list(counts), "rounds": rounds, "cpu": cpu_model(),
            "rule": RULE, "candidates": measured}


def choose_for_bundle(run, bundle_dir, artifacts, golden, golden_images, reference_outputs):
    """``choose_cpu_default`` for a bundle being assembled (pipeline ``run``); adds a "bf16" golden tolerance,
    measured on the golden inputs, when a BF16 candidate passed the gate (``lungedge selftest`` needs it)."""
    import os

    paths = {k: os.path.join(bundle_dir, a["path"]) for k, a in artifacts.items()}
    data = GateData(run.spec, run.baseline_val, run.val_ds.images, run.val_ds.targets, run.recipe.gate)
    record = choose_cpu_default(data, paths, artifacts, Timing(threads=run.threads))  # None: 1, all CPUs
    bf16 = [c for c in record["candidates"] if c["inference_precision"] == "bf16" and c["gate_passed"]]
    if bf16:
        diffs = []
        for c in bf16:
            with open_candidate(paths[c["artifact"]], "openvino", "bf16", c["threads"]) as b:
                diffs.append(float(np.abs(outputs_of(b, golden_images) - reference_outputs).max()))
        scale = max(1.0, float(np.abs(reference_outputs).max()))
        golden["tolerances"]["bf16"] = float(max(BF16_FLOOR * scale, BF16_MARGIN * max(diffs)))
        golden.setdefault("measured_openvino_bf16", max(diffs))
    return record


BF16_FLOOR = 2e-2  # bf16 keeps 8 mantissa bits: about 0.4 % relative per operation
BF16_MARGIN = 3.0
