"""Peak resident memory of an inference process, measured in a fresh subprocess per variant.

A process's peak RSS only grows, so measuring several models in one process measures the largest plus the
others' leftovers. Each variant therefore gets its own interpreter that imports what it needs (the runtime
only, for a bundle: no torch), loads the model, runs ``n`` predictions on real image files (read, preprocess,
model, post-process) and reports ``VmHWM`` from ``/proc/self/status``: the high-water mark of its resident set.

Run by hand: ``python -m lungedge.benchmarks.memory --spec '{"bundle": "B", "artifact": "onnx-int8"}' IMG...``
"""

import argparse
import json
import os
import subprocess
import sys
import time


def read_status_kb(field, path="/proc/self/status"):
    """A ``kB`` field of /proc/<pid>/status (``VmHWM``, ``VmRSS``), or None where /proc is absent."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb():
    """VmHWM in kB, falling back to getrusage's ru_maxrss (kB on Linux) off /proc."""
    value = read_status_kb("VmHWM")
    if value is None:
        import resource

        value = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if sys.platform == "darwin":  # bytes there
            value //= 1024
    return value


def child(spec, images, n, threads):
    """Body of the measuring subprocess: load, predict ``n`` times, report memory as one JSON line."""
    after_start = peak_rss_kb()
    from lungedge.benchmarks.runners import open_runner, predict_one
    from lungedge.runtime.io import read_any

    t0 = time.perf_counter()
    runner = open_runner(spec, threads=threads)
    loaded = peak_rss_kb()
    for i in range(n):
        array, meta = read_any(images[i % len(images)])
        predict_one(runner, array, meta)
    seconds = time.perf_counter() - t0
    return {"vmhwm_kb": peak_rss_kb(), "vmrss_kb": read_status_kb("VmRSS"), "vmhwm_at_start_kb": after_start,
            "vmhwm_after_load_kb": loaded, "predictions": n, "seconds": seconds,
            "torch_loaded": "torch" in sys.modules, "python": sys.version.split()[0]}


def measure_peak_rss(spec, images, n=20, threads=None, timeout=900, python=None):
    """Run ``child`` in a new interpreter; returns its report with ``peak_rss_mb`` added (or ``error``)."""
    cmd = [python or sys.executable, "-m", "lungedge.benchmarks.memory", "--spec", json.dumps(spec), "--n", str(n)]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += [os.path.abspath(p) for p in images]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"memory measurement timed out after {timeout} s", "peak_rss_mb": None}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"memory subprocess failed (exit {done.returncode}): {' | '.join(tail)}", "peak_rss_mb": None}
    report = json.loads(lines[-1])
    report["peak_rss_mb"] = report["vmhwm_kb"] / 1024.0 if report.get("vmhwm_kb") is not None else None
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description="Peak RSS of one inference process (used by lungedge bench).")
    p.add_argument("--spec", required=True, help='JSON: {"bundle": PATH, "artifact": KEY} or {"torch_run": DIR}')
    p.add_argument("--n", type=int, default=20, help="predictions to run")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("images", nargs="+")
    a = p.parse_args(argv)
    print(json.dumps(child(json.loads(a.spec), a.images, a.n, a.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
