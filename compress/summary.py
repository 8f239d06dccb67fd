"""One-screen summary of a bundle written by ``compress``: size, MACs, latency, metric deltas, gate verdicts."""

import statistics
import time

import numpy as np

from lungedge.runtime.enums import TaskKind


def time_onnx(path, runs=30, threads=None, warmup=3):
    """Median batch-1 latency (ms) of an ONNX model on ONNX Runtime CPU; indicative only (shared machines)."""
    from lungedge.runtime.backends import create_backend

    with create_backend("onnxruntime", path, threads=threads) as backend:
        shape = backend.session.get_inputs()[0].shape
        x = np.zeros((1, 1, int(shape[2]), int(shape[3])), np.float32)  # latency does not depend on the values
        for _ in range(warmup):
            backend.run(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            backend.run(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    return round(statistics.median(times), 3)


def _key_metrics(kind):
    return ("auc", "sensitivity", "specificity") if kind == TaskKind.CLASSIFICATION else ("dice",)


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def render(manifest):
    """The summary as text (about 20 lines)."""
    m = manifest["metrics"]
    base, comp = m["baseline"], m["compressed"]
    keys = _key_metrics(manifest["task"])
    lines = [f"bundle {manifest['name']}  ({manifest['task']}, {manifest['modality']}, "
             f"{manifest['input']['shape'][2]}px)",
             f"  baseline   {base['arch']:<16} {base['macs'] / 1e6:9.1f} MMACs {base['params'] / 1e6:7.3f} M params "
             f"{_mb(base['onnx_bytes'])} ONNX FP32",
             f"  compressed {comp['arch']:<16} {comp['macs'] / 1e6:9.1f} MMACs {comp['params'] / 1e6:7.3f} M params "
             f"(MACs x{comp['macs_ratio']:.3f}, params x{comp['params_ratio']:.3f})"]
    latency = m.get("cpu_latency_ms") or {}
    head = f"  {'artifact':<14} {'size':>9} {'latency':>16} " + " ".join(f"{'val ' + k:>17}" for k in keys) \
        + f" {'test ' + keys[0]:>17}  gate"
    lines += ["", head]
    if latency.get("baseline") is not None:
        lines.append(f"  {'baseline':<14} {_mb(base['onnx_bytes']):>9} {latency['baseline']:>9.2f} ms     "
                     + " ".join(f"{base['val'][k]:>17.4f}" for k in keys) + f" {base['test'][keys[0]]:>17.4f}")
    for key, a in m["artifacts"].items():
        ms = latency.get(key)
        lat = f"{ms:>9.2f} ms x{latency['baseline'] / ms:4.1f}" if ms and latency.get("baseline") else f"{'-':>16}"
        deltas = " ".join(f"{a['val'][k]:>8.4f} ({a['val'][k] - base['val'][k]:+.3f})" for k in keys)
        test = f"{a['test'][keys[0]]:>8.4f} ({a['test'][keys[0]] - base['test'][keys[0]]:+.3f})"
        verdict = "PASS" if a["gate"]["passed"] else "FAIL"
        lines.append(f"  {key:<14} {_mb(a['bytes']):>9} {lat} {deltas} {test}  {verdict}")
    backoffs = [d for d in m.get("gate", []) if d["action"] != "accepted"]
    lines += ["", f"  default artifact: {m['default_artifact']} (threshold "
              f"{next(iter(manifest['thresholds'].values())):.4f}); gate decisions: {len(m.get('gate', []))}, "
              f"back-offs: {len(backoffs)}"]
    for d in backoffs:
        failed = ", ".join(f"{c['metric']} {c['drop']:+.3f}>{c['tolerance']}" for c in d["verdict"]["checks"]
                           if not c["passed"])
        setting = {k: v for k, v in d["setting"].items() if k != "sensitivity_sqnr_db"}
        lines.append(f"    {d['stage']} {d['variant']} {setting}: {failed or 'passed'} -> {d['action']}")
    if latency:
        lines.append(f"  latency: {latency.get('note', '')}")
    return "\n".join(lines)


def render_failure(report):
    """Text of a GateFailed report: the baseline and every attempt that was refused."""
    lines = [f"recipe {report.get('recipe')}: gate failed at {report.get('stage')}",
             "  baseline val: " + ", ".join(f"{k}={v:.4f}" for k, v in report.get("baseline_val", {}).items()
                                            if isinstance(v, float))]
    for d in report.get("decisions", []):
        checks = ", ".join(f"{c['metric']} {c['baseline']:.3f}->{c['variant']:.3f}" for c in d["verdict"]["checks"])
        setting = {k: v for k, v in d["setting"].items() if k != "sensitivity_sqnr_db"}
        lines.append(f"  {d['stage']:<9} {d['variant']:<14} {setting} {checks} -> {d['action']}")
    return "\n".join(lines)
