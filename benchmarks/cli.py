"""``lungedge bench``: compressed variants against their baseline; ``bench scaling``; ``bench report``.

    lungedge bench --baseline B0 --variants B1 B2 --data DIR --split test [--torch-run RUN_DIR]
                   [--threads N] [--batch N] [--backends auto | onnxruntime openvino-f32 openvino-bf16] [--out DIR]
    lungedge bench scaling --bundles CT_SEG [CT_CLS] --data DIR [DIR ...] [--slices 10 50 100 300] [--out DIR]
    lungedge bench throughput --bundle B --data DIR [--batch 1 8] [--workers 1 2] [--out DIR]
    lungedge bench report RESULTS_DIR ... -o BENCHMARKS.md
    lungedge bench qc --data ../shared/data [--xray-bundle B] [--ct-bundle B] [--out DIR]   (benchmarks.qc)
    lungedge bench dicom-node --xray-bundle B [--xray-lung-bundle B] [--ct-bundle B] [--ct-lesion-bundle B]
                   --dicom ../shared/data/dicom [--out DIR]

The runtime's CLI hands ``argv`` (starting with "bench") to ``main``. Flags map onto ``bench.BenchConfig``.
"""

import argparse
import sys

from lungedge.benchmarks.bench import BenchConfig


def bench_parser():
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="lungedge bench", description="Benchmark compressed bundles against their "
                                "uncompressed baseline on the same images in the same run.")
    p.add_argument("--baseline", help="FP32 ONNX bundle of the baseline (PATH or PATH:ARTIFACT); the bench takes bundles "
                                      "and never builds them: export one with `lungedge export onnx --baseline RUN`")
    p.add_argument("--variants", nargs="*", default=[], help="variant bundles (PATH or PATH:ARTIFACT); every "
                                                             "artifact this machine can run by default")
    p.add_argument("--data", required=True, help="folder with manifest.csv (e.g. ../shared/data/xray-cls), or a "
                                                 "folder-per-class tree for external evaluation")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="split to evaluate; 'all' for an external folder (with --thresholds bundle)")
    p.add_argument("--thresholds", default=d.thresholds, choices=["val", "bundle"],
                   help="val: re-fit each row's threshold on the validation split (never on the evaluated one); "
                        "bundle: use the thresholds the bundles ship (external evaluation, a clinic's own films)")
    p.add_argument("--subgroups", default="", help="comma-separated manifest columns to report per value, e.g. "
                   "source,age_group,view (join columns with + for crossed groups: source+label)")
    p.add_argument("--lung-bundle", help="X-ray lung segmentation bundle (rows trained on lung crops need it)")
    p.add_argument("--torch-run", help="training run folder of the torch FP32 baseline (becomes the reference)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads per model (0: all logical CPUs)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size N of the batch-N timing")
    p.add_argument("--out", help="folder for results.json, report.md and the plots")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved batch-1 rounds")
    p.add_argument("--batch-rounds", type=int, default=d.batch_rounds, help="interleaved batch-N rounds")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="time budget per timing phase")
    p.add_argument("--settle-ms", type=float, default=d.settle_ms,
                   help="untimed pause after every timed call (stops one engine's spinning threads slowing the next)")
    p.add_argument("--max-images", type=int, default=d.max_images,
                   help="0: all; else this many per label (classification) or in all (segmentation)")
    p.add_argument("--memory-runs", type=int, default=d.memory_runs, help="predictions per memory subprocess "
                                                                          "(0 skips memory)")
    p.add_argument("--n-boot", type=int, default=d.n_boot)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--backends", nargs="+", default=["auto"], metavar="BACKEND",
                   help="CPU backends to time every ONNX artifact on: onnxruntime, openvino-f32, openvino-bf16, "
                        "or auto (all of them this machine can run)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a variant's verdict is FAIL or ERROR")
    return p


def run(argv):
    a = bench_parser().parse_args(argv)
    from lungedge.benchmarks.bench import run_bench
    from lungedge.benchmarks.report import terminal_table

    cfg = BenchConfig(threads=a.threads, batch=a.batch, rounds=a.rounds, batch_rounds=a.batch_rounds,
                      warmup=a.warmup, max_seconds=a.max_seconds, settle_ms=a.settle_ms, max_images=a.max_images,
                      memory_runs=a.memory_runs, n_boot=a.n_boot, seed=a.seed, plots=not a.no_plots,
                      thresholds=a.thresholds, subgroups=tuple(c.strip() for c in a.subgroups.split(",") if c.strip()),
                      backends=tuple(a.backends))
    results = run_bench(baseline=a.baseline, variants=a.variants, data=a.data, split=a.split, torch_run=a.torch_run,
                        out=a.out, progress=not a.no_progress, config=cfg, lung_bundle=a.lung_bundle)
    print(terminal_table(results))
    if a.out:
        print(f"\nresults: {a.out}/results.json, report: {a.out}/report.md")
    failed = [r["name"] for r in results["rows"] if r.get("verdict") in ("FAIL", "ERROR")]
    return 1 if a.strict and failed else 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        argv = argv[1:]
    if argv and argv[0] == "scaling":
        from lungedge.benchmarks.scaling import main as scaling_main

        return scaling_main(argv[1:])
    if argv and argv[0] == "throughput":
        from lungedge.benchmarks.throughput import main as throughput_main

        return throughput_main(argv[1:])
    if argv and argv[0] == "qc":
        from lungedge.benchmarks.qc import main as qc_main

        return qc_main(argv[1:])
    if argv and argv[0] == "dicom-node":
        from lungedge.benchmarks.dicom_node import main as node_main

        return node_main(argv[1:])
    if argv and argv[0] == "report":
        from lungedge.benchmarks.make_benchmarks_md import main as report_main

        return report_main(argv[1:])
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
