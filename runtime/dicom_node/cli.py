"""``lungedge dicom-node``: run the DICOM node from a JSON config file and/or flags (flags win)."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK, EXIT_UNUSABLE, EXIT_SELFTEST = 0, 2, 3  # as lungedge serve's (lungedge.runtime.service.daemon)
log = logging.getLogger("lungedge.dicom_node")

FLAGS = {  # flag -> (config key, type)
    "--state": ("state", str), "--xray-bundle": ("xray_bundle", str), "--xray-lung-bundle": ("xray_lung_bundle", str),
    "--ct-bundle": ("ct_bundle", str), "--ct-lesion-bundle": ("ct_lesion_bundle", str),
    "--ct-lung-bundle": ("ct_lung_bundle", str), "--ae-title": ("ae_title", str), "--host": ("host", str),
    "--port": ("port", int), "--backend": ("backend", str), "--threads": ("threads", int),
    "--ct-settle-seconds": ("ct_settle_seconds", float), "--retry-base-seconds": ("retry_base_seconds", float),
    "--retry-max-seconds": ("retry_max_seconds", float), "--max-rejections": ("max_rejections", int),
    "--tls-cert": ("tls_cert", str), "--tls-key": ("tls_key", str), "--tls-ca": ("tls_ca", str),
    "--max-pdu": ("max_pdu", int),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="lungedge dicom-node",
                                     description="DICOM storage SCP that answers with SR, SEG and SC results.")
    parser.add_argument("--config", help="JSON file with NodeConfig keys (see docs); flags override it")
    for flag, (key, kind) in FLAGS.items():
        parser.add_argument(flag, dest=key, type=kind, default=None)
    parser.add_argument("--allow", dest="allowed_callers", action="append", default=None, metavar="AET",
                        help="calling AE title allowed to send (repeat; at least one)")
    parser.add_argument("--destination", dest="destinations", action="append", default=None,
                        metavar="AET@HOST:PORT", help="where results go (repeat)")
    parser.add_argument("--keep-inputs", dest="keep_inputs", action="store_true", default=None,
                        help="keep received instances in STATE/inbox after processing (default: delete them)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def config_from_args(args):
    import json

    from lungedge.runtime.dicom_node.config import NodeConfig

    data = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            data = json.load(fh)
    for key, value in vars(args).items():
        if key not in ("config", "verbose") and value is not None:
            data[key] = value
    return NodeConfig.from_dict(data)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dicom-node":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s lungedge-dicom-node %(levelname)s %(message)s")
    from lungedge.runtime.dicom_node.node import DicomNode
    from lungedge.runtime.service.daemon import sd_notify, start_status, stop_on_signals

    try:
        config = config_from_args(args)
    except (ValueError, TypeError, OSError) as exc:
        log.error("bad configuration: %s", exc)
        return EXIT_UNUSABLE
    node = DicomNode(config)
    with stop_on_signals(node._stop.set):
        try:
            status = start_status(node.start, log)
            if status is not None:
                return status
            print(f"READY {node.address[0]} {node.address[1]}", flush=True)
            sd_notify(f"READY=1\nSTATUS=listening as {config.ae_title} on port {node.address[1]}")
            node.wait()
            return EXIT_OK
        finally:
            sd_notify("STOPPING=1")
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
