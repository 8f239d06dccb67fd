"""The runtime's subcommands of ``lungedge``: ``infer`` and ``selftest`` (torch-free).

The ``lungedge`` entry point itself is ``lungedge.cli.main`` (the top layer), which hands these two to ``run``
and imports the other subcommands lazily from the packages that own them.

Exit status: 0 success; 1 some input failed (infer) or the self-test failed; 2 nothing could run (bad bundle,
missing backend, missing extra, usage error). An input refused by quality control is "not assessed": an outcome,
counted apart from errors, not a failure.
"""

import argparse
import json
import logging
import os
import sys

from lungedge.runtime.enums import BackendName, Precision
from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch, LungedgeError

BACKEND_CHOICES = BackendName.values() + ("auto",)
PRECISIONS = Precision.values()

log = logging.getLogger("lungedge")


def _add_backend_options(parser):
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime",
                        help="auto: the bundle's measured CPU default (manifest cpu_default)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="artifact precision (default: the smallest the bundle has for the backend)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (ONNX Runtime intra-op, OpenVINO)")
    parser.add_argument("--inference-precision", choices=("f32", "bf16"), default="f32",
                        help="OpenVINO compute precision (pinned; BF16 only where the bundle's gate allows it)")


def build_parser(extra_commands=None):
    """The parser of ``infer`` and ``selftest``; ``extra_commands`` ({name: help}) lists the subcommands other
    packages own, so that ``lungedge --help`` shows them all."""
    parser = argparse.ArgumentParser(prog="lungedge", description="Chest X-ray and CT diagnosis on edge devices.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    infer = sub.add_parser("infer", help="run a bundle on images, DICOM files/series or NIfTI volumes")
    infer.add_argument("inputs", nargs="+", metavar="INPUT")
    infer.add_argument("--bundle", required=True)
    _add_backend_options(infer)
    infer.add_argument("--out", default=None, help="folder for JSON results, overlays and summary.csv "
                                                   "(default: JSON lines on stdout)")
    infer.add_argument("--lung-bundle", default=None, help="lung segmentation bundle (X-ray crop; CT lung area)")
    infer.add_argument("--rule", default="mean", help="CT study aggregation: mean, max, positive_rate, consecutive")
    infer.add_argument("--consecutive", type=int, default=3, help="slices in a run for --rule consecutive")
    infer.add_argument("--batch-size", type=int, default=8, help="CT slices per batch")
    selftest = sub.add_parser("selftest", help="check a bundle's artifact against its golden outputs")
    selftest.add_argument("bundle")
    _add_backend_options(selftest)
    for name, text in (extra_commands or {}).items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _label(path):
    return os.path.basename(os.path.normpath(str(path)))


def _stems(inputs):
    """Output file stems, unique even when two inputs share a file name."""
    seen, stems = {}, []
    for path in inputs:
        base = _label(path)
        for ext in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            if base.lower().endswith(ext):
                base = base[:-len(ext)]
                break
        count = seen.get(base, 0)
        seen[base] = count + 1
        stems.append(base if count == 0 else f"{base}_{count}")
    return stems


def _open(bundle_dir, args, precision):
    from lungedge.runtime.predictor import Predictor

    return Predictor.from_bundle(bundle_dir, backend=args.backend, precision=precision, threads=args.threads,
                                 inference_precision=args.inference_precision)


def cmd_infer(args):
    """Run a bundle over every input, continuing past bad ones; 1 if any failed."""
    from tqdm import tqdm

    from lungedge.runtime import report
    from lungedge.runtime.pipelines import InputRouter

    try:
        predictor = _open(args.bundle, args, args.precision)
        lung = _open(args.lung_bundle, args, None) if args.lung_bundle else None
        runner = InputRouter(predictor, lung, rule=args.rule, consecutive=args.consecutive,
                             batch_size=args.batch_size)
    except (BundleError, BackendUnavailable, EngineMismatch) as exc:
        print(f"lungedge infer: {exc}", file=sys.stderr)
        return 2
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    rows, failures, not_assessed = [], [], []
    items = list(zip(args.inputs, _stems(args.inputs)))
    for path, stem in tqdm(items, unit="input", file=sys.stderr, disable=len(items) < 2):
        name = _label(path)
        try:
            result, image = runner.run(path)
        except Exception as exc:  # one bad input must not stop the batch
            message = str(exc) if isinstance(exc, LungedgeError) else f"unexpected {type(exc).__name__}: {exc}"
            message = message if message.startswith(name) else f"{name}: {message}"
            log.info("%s", message)
            failures.append(message)
            rows.append(report.summary_row(name, error=message))
            continue
        rows.append(report.summary_row(name, result))
        if result.get("assessed") is False:
            not_assessed.append(f"{name}: {result.get('reason', '')}")
        if args.out:
            report.write_json(result, os.path.join(args.out, stem + ".json"))
            if image is not None:
                report.write_overlay(image[0], image[1], result, os.path.join(args.out, stem + "_overlay.png"))
        else:
            print(json.dumps(report.jsonable(result), sort_keys=True))
    if args.out:
        report.write_csv(rows, os.path.join(args.out, "summary.csv"))
    if len(items) > 1 or failures or not_assessed:
        print(f"{len(items) - len(failures) - len(not_assessed)} assessed, {len(not_assessed)} not assessed, "
              f"{len(failures)} errors", file=sys.stderr)
    if not_assessed:
        print(f"{len(not_assessed)} of {len(items)} inputs not assessed (refused by quality control; no label "
              "was given):", file=sys.stderr)
        for message in not_assessed:
            print(f"  {message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(items)} inputs failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def cmd_selftest(args):
    """Golden-output check; 0 pass, 1 fail."""
    from lungedge.runtime.selftest import run_selftest

    try:
        result = run_selftest(args.bundle, backend=args.backend, precision=args.precision, threads=args.threads,
                              inference_precision=args.inference_precision)
    except LungedgeError as exc:
        print(f"lungedge selftest: FAIL: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    verdict = "PASS" if result["passed"] else f"FAIL: {result['reason']}"
    print(f"lungedge selftest {result['bundle']} [{result['artifact']} on {result['backend']}]: {verdict}",
          file=sys.stderr)
    return 0 if result["passed"] else 1


COMMANDS = {"infer": cmd_infer, "selftest": cmd_selftest}


def run(args):
    """Run parsed ``infer``/``selftest`` arguments; 2 (usage) without a command."""
    if getattr(args, "command", None) not in COMMANDS:
        build_parser().print_help(sys.stderr)
        return 2
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.WARNING, format="lungedge: %(message)s")
    return COMMANDS[args.command](args)


def main(argv=None):
    """``lungedge infer ...`` / ``lungedge selftest ...`` without the top-level dispatch (for subprocesses)."""
    return run(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
