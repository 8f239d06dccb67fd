"""``lungedge serve``: flags (or the container's environment variables) onto a ServiceConfig, then serve."""

import argparse
import logging
import os
import sys

from lungedge.runtime.service.core import OutputError, Service, ServiceConfig
from lungedge.runtime.service.daemon import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNUSABLE,
    start_status,
    stop_on_signals,
)
from lungedge.runtime.service.http import HTTP_HOST

DESCRIPTION = ("Bedside service: a watch folder (and optionally a local HTTP endpoint) in front of one "
               "self-tested bundle.")
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# Options that fall back to an environment variable (the container image sets these).
ENV_DEFAULTS = {"bundle": "LUNGEDGE_BUNDLE", "watch": "LUNGEDGE_WATCH", "out": "LUNGEDGE_OUT",
                "backend": "LUNGEDGE_BACKEND"}

log = logging.getLogger("lungedge.service")


def _env_option(parser, name, help_text, fallback=None):
    env = ENV_DEFAULTS[name]
    default = os.environ.get(env) or fallback
    parser.add_argument(f"--{name}", default=default, required=default is None,
                        help=f"{help_text} (default: ${env}" + (f", else {fallback})" if fallback else ")"))


def build_parser():
    parser = argparse.ArgumentParser(prog="lungedge serve", description=DESCRIPTION)
    _env_option(parser, "bundle", "bundle folder (self-tested at start)")
    _env_option(parser, "watch", "folder to watch for new inputs")
    _env_option(parser, "out", "folder for result JSON and overlays")
    _env_option(parser, "backend", f"one of {', '.join(BACKENDS)}", fallback="onnxruntime")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="artifact precision (default: the smallest the bundle has for the backend)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--lung-bundle", default=None, help="lung segmentation bundle (self-tested too)")
    parser.add_argument("--rule", default="mean", help="CT study aggregation: mean, max, positive_rate, consecutive")
    parser.add_argument("--consecutive", type=int, default=3, help="slices in a run for --rule consecutive")
    parser.add_argument("--batch-size", type=int, default=8, help="CT slices per batch")
    parser.add_argument("--http-port", type=int, default=None,
                        help=f"also serve POST /predict and GET /health on {HTTP_HOST}:PORT")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--settle-seconds", type=float, default=2.0,
                        help="an input must stay unchanged this long before it is read")
    parser.add_argument("--log-names", action="store_true",
                        help="log input file names as given (default: a hash; names can carry patient names)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def config_from_args(args):
    return ServiceConfig(bundle=args.bundle, watch=args.watch, out=args.out, backend=args.backend,
                         precision=args.precision, threads=args.threads, lung_bundle=args.lung_bundle,
                         rule=args.rule, consecutive=args.consecutive, batch_size=args.batch_size,
                         http_port=args.http_port, poll_seconds=args.poll_seconds,
                         settle_seconds=args.settle_seconds, log_names=args.log_names)


def main(argv=None):
    """``lungedge serve ...``: argv[0] may be the subcommand name. Returns an EXIT_* status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS:  # argparse does not check defaults taken from the environment
        parser.error(f"--backend {args.backend!r} is not one of {', '.join(BACKENDS)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s lungedge-serve %(levelname)s %(message)s")
    try:
        service = Service(config_from_args(args))
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_UNUSABLE
    with stop_on_signals(service.stop):
        try:
            status = start_status(service.start, log)
            if status is not None:
                return status
            try:
                service.serve_forever()
            except OutputError as exc:
                log.error("%s; stopping", exc)
                return EXIT_FAILED
            log.info("stopped after %d processed and %d failed inputs", service.processed, service.failed)
            return EXIT_OK
        finally:
            service.close()
