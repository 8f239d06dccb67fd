"""``lungedge compress``, ``lungedge export onnx`` and ``lungedge engine build`` (dispatched by the runtime CLI).

Flags only map onto the recipe (the recipe file stays the record of what was done). Exit status: 0 success;
1 the accuracy gate refused every variant (the report is printed and written to ``OUT.gate-report.json``);
2 nothing could run (bad recipe, baseline, data or bundle; missing TensorRT).
"""

import argparse
import json
import os
import sys

from lungedge.compress.engine import engine_source  # noqa: F401 - jetson/build_engine.sh imports it from here
from lungedge.runtime.errors import LungedgeError


def _compress_parser():
    p = argparse.ArgumentParser(prog="lungedge compress", description="Distill, prune, quantize and gate a "
                                "baseline into a bundle.")
    p.add_argument("--recipe", required=True, help="recipe JSON file, or the name of a shipped recipe "
                   "(compress/recipes/NAME.json)")
    p.add_argument("--baseline", required=True, help="baseline run folder (config.json, best.pt)")
    p.add_argument("--data", required=True, help="dev-pack folder with manifest.csv")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--student", help="recipe.student (registry name or 'none')")
    p.add_argument("--input-size", type=int, help="recipe.input_size")
    p.add_argument("--epochs", type=int, help="recipe.distill.epochs")
    p.add_argument("--macs-ratio", type=float, help="recipe.prune.macs_ratio")
    p.add_argument("--no-int8", action="store_true", help="recipe.quantize = []")
    p.add_argument("--fp16", action="store_true", help="recipe.fp16 = true")
    p.add_argument("--threshold-rule", help="recipe.gate.threshold_rule")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    p.add_argument("--time-runs", type=int, default=30, help="batch-1 ONNX Runtime timings per artifact (0: none)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--other-modality", metavar="DIR", help="dev-pack folder of the other modality (ct-cls for an "
                   "X-ray bundle, xray-cls for a CT bundle): fit the modality check (quality.modality_check) "
                   "from its training split")
    return p


def apply_flags(recipe, args):
    """The recipe with the command-line overrides applied (each flag names the recipe field it sets)."""
    from lungedge.compress.distill import DistillConfig
    from lungedge.compress.errors import RecipeError

    d = recipe.to_dict()
    if args.student is not None:
        d["student"] = args.student
        if args.student != "none" and d["distill"] is None:
            d["distill"] = DistillConfig().to_dict()
        if args.student == "none":
            d["distill"] = None
    if args.input_size is not None:
        d["input_size"] = args.input_size
    if args.epochs is not None:
        if d["distill"] is None:
            raise RecipeError("--epochs sets recipe.distill.epochs, but this recipe distills nothing")
        d["distill"]["epochs"] = args.epochs
    if args.macs_ratio is not None:
        if d["prune"] is None:
            raise RecipeError("--macs-ratio sets recipe.prune.macs_ratio, but this recipe prunes nothing")
        d["prune"]["macs_ratio"] = args.macs_ratio
    if args.no_int8:
        d["quantize"] = []
    if args.fp16:
        d["fp16"] = True
    if args.threshold_rule:
        d["gate"]["threshold_rule"] = args.threshold_rule
    return type(recipe).from_dict(d)


def cmd_compress(argv):
    from lungedge.compress.errors import GateFailed
    from lungedge.compress.pipeline import compress
    from lungedge.compress.recipe import load_recipe
    from lungedge.compress.summary import render, render_failure
    from lungedge.runtime.bundle import Bundle

    args = _compress_parser().parse_args(argv)
    try:
        recipe = apply_flags(load_recipe(args.recipe), args)
        bundle_dir = compress(recipe, args.baseline, args.data, args.out, threads=args.threads,
                              overwrite=args.force, time_runs=args.time_runs)
        if args.other_modality:
            from lungedge.compress.quality import fit_modality

            fit_modality(bundle_dir, args.data, args.other_modality)
    except GateFailed as exc:
        path = os.path.abspath(args.out).rstrip(os.sep) + ".gate-report.json"
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(exc.report, fh, indent=2, sort_keys=True, default=str)
        print(render_failure(exc.report), file=sys.stderr)
        print(f"lungedge compress: GATE FAILED, no bundle written: {str(exc).splitlines()[0]}\n"
              f"full report: {path}", file=sys.stderr)
        return 1
    except (LungedgeError, ValueError, FileNotFoundError) as exc:
        print(f"lungedge compress: {exc}", file=sys.stderr)
        return 2
    print(render(Bundle.load(bundle_dir).manifest))
    return 0


def cmd_export(argv):
    p = argparse.ArgumentParser(prog="lungedge export", description="FP32 ONNX bundle of an uncompressed baseline.")
    p.add_argument("format", choices=["onnx"])
    p.add_argument("--baseline", required=True, help="baseline run folder")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--data", default=None, help="dev-pack folder (default: the run's config.json data path)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-runs", type=int, default=0)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    from lungedge.compress.pipeline import export_baseline
    from lungedge.compress.summary import render
    from lungedge.runtime.bundle import Bundle

    try:
        path = export_baseline(args.baseline, args.out, data_dir=args.data, threads=args.threads,
                               overwrite=args.force, opset=args.opset, time_runs=args.time_runs)
    except (LungedgeError, ValueError, FileNotFoundError) as exc:
        print(f"lungedge export: {exc}", file=sys.stderr)
        return 2
    print(render(Bundle.load(path).manifest))
    return 0


def cmd_engine(argv):
    p = argparse.ArgumentParser(prog="lungedge engine", description="Build a TensorRT engine into a bundle.")
    p.add_argument("action", choices=["build"])
    p.add_argument("bundle")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--dla-core", type=int, default=None)
    p.add_argument("--timing-cache", default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--workspace-mib", type=int, default=1024)
    args = p.parse_args(argv)
    from lungedge.compress.engine import build_engine_into_bundle

    try:
        key = build_engine_into_bundle(args.bundle, args.precision, dla_core=args.dla_core,
                                       timing_cache=args.timing_cache, max_batch=args.max_batch,
                                       workspace_mib=args.workspace_mib)
    except (LungedgeError, ValueError) as exc:
        print(f"lungedge engine: {exc}", file=sys.stderr)
        return 2
    print(f"lungedge engine: added {key} to {args.bundle}")
    return 0


COMMANDS = {"compress": cmd_compress, "export": cmd_export, "engine": cmd_engine}


def main(argv=None):
    """Entry point: ``argv`` starts with the subcommand name (compress, export or engine)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: lungedge {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
