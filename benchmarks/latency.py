"""Latency: interleaved timing (A B A B ...), percentiles, speed ratios with their spread, and a noise guard.

Timing the variants one after another lets machine drift (thermal state, a cron job, the training run on the
same cores) land on one of them; interleaving makes every round hit all of them alike, and pairs the rounds
so a ratio's bootstrap resamples whole rounds. A timed callable may return ``{stage: seconds}`` (e.g.
preprocess / model / postprocess measured inside it); those are recorded beside the total.

``CpuLoadGuard`` reads ``/proc/stat`` and this process's CPU time before and after a timing phase: CPU time
the cores this process may run on (its affinity set) spent outside this process is other processes competing
for them. Above ``NOISY_FOREIGN_SHARE`` of those cores' capacity the phase is flagged ``noisy`` in the results.
"""

import os
import time
from collections import OrderedDict

import numpy as np

PERCENTILES = (50, 90, 99)
# Share of all cores' time used by other processes during a timing phase above which the phase is noisy.
NOISY_FOREIGN_SHARE = 0.10


def summarize_times(seconds, batch=1):
    """n, mean, std, min, max and p50/p90/p99 (milliseconds) of per-call times, plus images per second."""
    t = np.asarray(seconds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"need a non-empty 1-D list of times, got shape {t.shape}")
    ms = t * 1000.0
    out = {"n": int(t.size), "batch": int(batch), "mean_ms": float(ms.mean()), "std_ms": float(ms.std()),
           "min_ms": float(ms.min()), "max_ms": float(ms.max())}
    for p, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
        out[f"p{p}_ms"] = float(value)
    out["throughput_ips"] = float(batch / np.median(t)) if np.median(t) > 0 else None
    return out


def interleaved(fns, rounds, warmup=3, clock=time.perf_counter, max_seconds=None, min_rounds=5, progress=None,
                settle_s=0.0, sleep=time.sleep):
    """Time each callable of ``fns`` (name -> callable) once per round, in the same order every round.

    Warm-up calls (``warmup`` per callable, interleaved too) are not recorded. With ``max_seconds`` the
    timing stops after that much wall time once ``min_rounds`` rounds are done. ``settle_s`` pauses (untimed)
    after every call, so one engine's worker threads, which spin for a while after a run (OpenMP, ONNX Runtime),
    cannot take cores from the next engine's call. Returns
    ``{name: {"seconds": [...], "stages": {stage: [...]}}}`` with one entry per round.
    """
    fns = OrderedDict(fns)
    if not fns:
        raise ValueError("nothing to time")
    for _ in range(int(warmup)):
        for fn in fns.values():
            fn()
    out = OrderedDict((name, {"seconds": [], "stages": OrderedDict()}) for name in fns)
    start = clock()
    steps = range(int(rounds))
    for r in (progress(steps) if progress else steps):
        for name, fn in fns.items():
            t0 = clock()
            stages = fn()
            t1 = clock()
            out[name]["seconds"].append(t1 - t0)
            if isinstance(stages, dict):
                for stage, value in stages.items():
                    out[name]["stages"].setdefault(stage, []).append(float(value))
            if settle_s:
                sleep(settle_s)
        if max_seconds is not None and r + 1 >= min_rounds and clock() - start > max_seconds:
            break
    return out


def ratio_of_medians(baseline_s, variant_s, n_boot=2000, seed=0, ci=0.95):
    """Speed-up ``median(baseline) / median(variant)`` with a bootstrap interval over paired rounds.

    Rounds are resampled together (round i of both series), which is what interleaving makes valid. The
    ``iqr`` pair is a cruder spread: (q25 baseline / q75 variant, q75 baseline / q25 variant).
    """
    a = np.asarray(baseline_s, dtype=np.float64)
    b = np.asarray(variant_s, dtype=np.float64)
    n = min(a.size, b.size)
    if n == 0:
        raise ValueError("both series need at least one time")
    a, b = a[:n], b[:n]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    boots = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = 100.0 * (1.0 - ci) / 2.0
    low, high = np.percentile(boots, [tail, 100.0 - tail])
    qa, qb = np.percentile(a, [25, 75]), np.percentile(b, [25, 75])
    return {"ratio": float(np.median(a) / np.median(b)), "low": float(low), "high": float(high), "ci": ci,
            "iqr": [float(qa[0] / qb[1]), float(qa[1] / qb[0])], "n_rounds": int(n)}


def _busy_total(values):
    user, nice, system, idle = values[:4]
    iowait, irq, softirq, steal = (values[4:8] + [0, 0, 0, 0])[:4]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def parse_proc_stat(text, cpus=None):
    """(busy, total) clock ticks from /proc/stat: of the CPUs numbered in ``cpus`` (the ones this process may run
    on) when given, else of the aggregate ``cpu`` line."""
    lines = {}
    for line in text.splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            lines[name] = [int(v) for v in values]
    if cpus:
        picked = [lines[f"cpu{c}"] for c in cpus if f"cpu{c}" in lines]
        if picked:
            sums = [_busy_total(v) for v in picked]
            return sum(b for b, _ in sums), sum(t for _, t in sums)
    if "cpu" not in lines:
        raise ValueError("no aggregate 'cpu' line in /proc/stat text")
    return _busy_total(lines["cpu"])


def read_loadavg(path="/proc/loadavg"):
    """[1, 5, 15]-minute load averages, or None where /proc is absent."""
    try:
        with open(path, encoding="ascii") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except (OSError, ValueError):
        return None


def _our_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _proc_stat(path="/proc/stat"):
    try:
        with open(path, encoding="ascii") as fh:
            return parse_proc_stat(fh.read(), _our_cpus())
    except (OSError, ValueError):
        return None


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system


class CpuLoadGuard:
    """Measure how much CPU other processes used while a timing phase ran; ``result()`` after ``stop()``."""

    def __init__(self, threshold=NOISY_FOREIGN_SHARE):
        self.threshold = threshold
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._before = self._after = None

    def _snapshot(self):
        return {"stat": _proc_stat(), "own": _own_cpu_seconds(), "wall": time.monotonic(), "loadavg": read_loadavg()}

    def start(self):
        self._before = self._snapshot()
        return self

    def stop(self):
        self._after = self._snapshot()
        return self.result()

    def result(self):
        b, a = self._before, self._after
        out = {"loadavg_before": b["loadavg"], "loadavg_after": a["loadavg"], "cpus": os.cpu_count(),
               "wall_s": a["wall"] - b["wall"], "own_cpu_s": a["own"] - b["own"], "foreign_cpu_s": None,
               "foreign_share": None, "noisy": None, "threshold": self.threshold}
        if b["stat"] is None or a["stat"] is None:
            return out
        busy_s = (a["stat"][0] - b["stat"][0]) / float(self.ticks_per_second)
        total_s = (a["stat"][1] - b["stat"][1]) / float(self.ticks_per_second)
        foreign = max(0.0, busy_s - out["own_cpu_s"])
        out["foreign_cpu_s"] = foreign
        out["foreign_share"] = foreign / total_s if total_s > 0 else 0.0
        out["noisy"] = bool(out["foreign_share"] > self.threshold)
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self._after is None:
            self.stop()
        return False
