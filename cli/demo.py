"""``lungedge demo``: train a small baseline, compress it, benchmark both, on the sample shipped in the repository.

    lungedge demo [--out lungedge-demo] [--threads N] [--epochs 8] [--arch resnet18] [--size 96]

Five steps, each with a progress bar, in well under 15 minutes on two CPU cores and with nothing downloaded:

1. train    a ResNet-18 at 96 px on ``cli/demo_data`` (166 CC BY chest X-rays: covid / normal / pneumonia)
2. export   the baseline to its FP32 ONNX bundle
3. compress with the shipped ``demo`` recipe (``compress.pipeline.compress``: distil, prune, INT8); when the
            compress side is not installed, or its gate refuses every variant, a plain INT8 quantization of the
            baseline stands in and the report says so
4. bench    ``run_bench``: torch FP32 vs ONNX FP32 vs the compressed bundle on the sample's test split
5. report   the terminal table here; results.json, report.md and plots under OUT/report

The sample is tiny and confounded (see cli/demo_data/README.md): the demo shows the workflow, not a
diagnostic accuracy.
"""

import argparse
import os
import shutil
import sys
import time

DEMO_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_data")
STEPS = 5


def _step(i, text):
    print(f"\n[demo {i}/{STEPS}] {text}", flush=True)


def train_baseline(out_dir, threads, epochs, arch, size, data=DEMO_DATA):
    from lungedge.models.train import TrainConfig, train

    cfg = TrainConfig(task="xray-cls", data=data, arch=arch, size=size, epochs=epochs, batch_size=16, lr=1e-3,
                      patience=max(3, epochs // 2), threads=threads, seed=0)
    metrics = train(cfg, out_dir)
    return metrics


def fallback_variant(baseline_dir, out_dir, data=DEMO_DATA, n_calibration=32):
    """INT8 (ONNX Runtime QDQ) copy of the baseline bundle, calibrated on training images of the sample."""
    from lungedge.compress.variants import add_int8_artifact
    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.datasets import read_manifest_csv, select

    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    shutil.copytree(baseline_dir, out_dir)
    manifest = dict(Bundle.load(out_dir).manifest)
    manifest["name"] = manifest["name"].replace("-fp32", "") + "-int8-fallback"
    manifest["provenance"] = dict(manifest["provenance"], recipe={"name": "demo-fallback-int8", "gate": {}})
    write_manifest(out_dir, manifest)
    add_int8_artifact(out_dir, select(read_manifest_csv(data), split="train")[:n_calibration])
    return out_dir


def compress_baseline(run_dir, baseline_dir, out_dir, threads, data=DEMO_DATA):
    """The demo recipe through compress.pipeline; (bundle path, note) with a fallback when it cannot run."""
    try:
        from lungedge.compress.errors import GateFailed
        from lungedge.compress.pipeline import compress
    except ImportError as exc:
        note = f"compress.pipeline unavailable ({exc}); INT8 quantization of the baseline stands in"
        return fallback_variant(baseline_dir, out_dir, data), note
    try:
        return compress("demo", run_dir, data, out_dir, threads=threads, overwrite=True), None
    except GateFailed as exc:
        note = f"the demo recipe's gate refused every variant ({str(exc).splitlines()[0]}); INT8 of the baseline stands in"
        return fallback_variant(baseline_dir, out_dir, data), note


def run_demo(out="lungedge-demo", threads=0, epochs=8, arch="resnet18", size=96, data=DEMO_DATA, bench_options=None):
    """All five steps; returns the bench results dict."""
    from lungedge.benchmarks.bench import BenchConfig, run_bench
    from lungedge.benchmarks.report import plain_verdicts, terminal_table
    from lungedge.compress.pipeline import export_baseline

    threads = threads or os.cpu_count() or 1
    started = time.time()
    os.makedirs(out, exist_ok=True)
    run_dir, baseline_dir = os.path.join(out, "baseline-run"), os.path.join(out, "baseline-bundle")
    compressed_dir, report_dir = os.path.join(out, "compressed-bundle"), os.path.join(out, "report")

    _step(1, f"train a {arch} baseline at {size} px on {len(_images(data))} shipped images ({epochs} epochs)")
    metrics = train_baseline(run_dir, threads, epochs, arch, size, data)
    print(f"baseline test AUC ({metrics['test'].get('positive')}): {metrics['test'].get('auc'):.3f} "
          f"({time.time() - started:.0f} s so far)")

    _step(2, "export the baseline to an FP32 ONNX bundle")
    export_baseline(run_dir, baseline_dir, data_dir=data, threads=threads, overwrite=True)

    _step(3, "compress it with the demo recipe (distil, prune, INT8)")
    variant, note = compress_baseline(run_dir, baseline_dir, compressed_dir, threads, data)
    if note:
        print(f"note: {note}")
    print(f"({time.time() - started:.0f} s so far)")

    _step(4, "benchmark torch FP32, ONNX FP32 and the compressed bundle on the test split")
    options = dict(threads=threads, rounds=30, batch_rounds=10, memory_runs=10, n_boot=1000, max_seconds=60.0)
    options.update(bench_options or {})
    results = run_bench(baseline=baseline_dir, variants=[variant], data=data, torch_run=run_dir, out=report_dir,
                        config=BenchConfig(**options))
    results["demo_note"] = note

    _step(5, "results")
    print(terminal_table(results))
    if note:
        print(f"\nnote: {note}")
    verdicts = plain_verdicts(results)
    if verdicts:
        print("\nIn plain words:")
        for line in verdicts:
            print(f"- {line}")
    results["demo_verdicts"] = verdicts
    print(f"\nreport: {os.path.join(report_dir, 'report.md')} (plots and results.json beside it); "
          f"demo took {time.time() - started:.0f} s")
    return results


def _images(data):
    from lungedge.runtime.datasets import read_manifest_csv

    return read_manifest_csv(data)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="lungedge demo", description="Train, compress and benchmark on the shipped sample.")
    p.add_argument("--out", default="lungedge-demo", help="folder for the run, the bundles and the report")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arch", default="resnet18", help="baseline architecture (registry name)")
    p.add_argument("--size", type=int, default=96, help="baseline input side in pixels")
    a = p.parse_args(argv)
    run_demo(a.out, a.threads, a.epochs, a.arch, a.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
