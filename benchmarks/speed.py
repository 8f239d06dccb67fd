"""The bench's measurements of cost: interleaved timing phases, speed-ups, energy on a Jetson, peak memory, MACs.

Every row is timed in the same rounds, in the same order, under a CPU-load guard: batch 1 split into
preprocess / model / postprocess stages, then batch N; speed-ups are ratios of medians with bootstrap intervals.
"""

import itertools
import os
import tempfile
import time

import numpy as np

from lungedge.benchmarks import latency as L
from lungedge.benchmarks.macs import MacCountError, count_onnx_macs
from lungedge.benchmarks.memory import measure_peak_rss
from lungedge.benchmarks.tegrastats import TegrastatsSampler, energy_per_image, summarize


def complexity(runner):
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


def timing_phases(runners, pool, cfg, progress):
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


def latency_row(b1, bn, batch):
    stages = {k: L.summarize_times(v) for k, v in b1["stages"].items()}
    model_p50 = stages["model"]["p50_ms"]
    share = (stages["preprocess"]["p50_ms"] + stages["postprocess"]["p50_ms"]) / model_p50 if model_p50 else None
    return {"batch1": stages["model"], "batch1_end_to_end": L.summarize_times(b1["seconds"]), "stages": stages,
            "pre_post_share_of_model": share, "batchN": L.summarize_times(bn["seconds"], batch=batch),
            "raw_seconds": {"batch1_total": b1["seconds"], "batch1_stages": b1["stages"], "batchN": bn["seconds"]}}


def speedups(ref_b1, ref_bn, b1, bn, n_boot, seed):
    return {"batch1": L.ratio_of_medians(ref_b1["stages"]["model"], b1["stages"]["model"], n_boot, seed),
            "batch1_end_to_end": L.ratio_of_medians(ref_b1["seconds"], b1["seconds"], n_boot, seed),
            "batchN": L.ratio_of_medians(ref_bn["seconds"], bn["seconds"], n_boot, seed)}


def energy_phase(runners, pool, sampler, seconds):
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


def measure_speed(rows, runners, pool, cfg, bar):
    """Timing phases (and, on a Jetson, tegrastats and energy) into each row; returns (guards, jetson summary)."""
    sampler = TegrastatsSampler().start()
    try:
        b1, bn, guards = timing_phases(runners, pool, cfg, bar)
        energy = energy_phase(runners, pool, sampler, cfg.energy_seconds)
        jetson = {"tegrastats": summarize([s for _, s in sampler.samples]), "energy": energy} if energy else None
    finally:
        sampler.stop()
    ref = runners[0].name
    ref_bytes, ref_macs = rows[0]["info"]["bytes"], rows[0]["complexity"].get("macs")
    for row, r in zip(rows, runners):
        row["latency"] = latency_row(b1[r.name], bn[r.name], cfg.batch)
        row["speedup"] = speedups(b1[ref], bn[ref], b1[r.name], bn[r.name], cfg.n_boot, cfg.seed)
        row["size_ratio"] = ref_bytes / row["info"]["bytes"] if row["info"]["bytes"] else None
        macs = row["complexity"].get("macs")
        row["macs_ratio"] = ref_macs / macs if ref_macs and macs else None
        row["energy"] = energy["rows"].get(r.name) if energy else None
    return guards, jetson


def measure_memory(rows, specs, files, cfg, threads):
    """Peak RSS of each row in its own subprocess (None when ``memory_runs`` is 0)."""
    for row, spec in zip(rows, specs):
        row["memory"] = None
        if cfg.memory_runs:
            mem_spec = {k: spec[k] for k in ("torch_run", "bundle", "artifact", "backend", "inference_precision")
                        if k in spec}
            row["memory"] = measure_peak_rss(mem_spec, files, n=cfg.memory_runs, threads=threads)
