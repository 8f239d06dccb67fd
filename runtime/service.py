"""Bedside service: a watch folder (and optionally a local HTTP endpoint) in front of one self-tested bundle.

Folders (WATCH is where the modality, PACS router or a user drops files)::

    WATCH/<input>                  a new image, DICOM file, NIfTI volume or DICOM series folder
    WATCH/.processing/<input>      claimed and being read; found here at start-up only after a crash or power
                                   loss, and then moved to failed/ (error type "Interrupted") instead of being
                                   retried, so one input that kills the process cannot put it in a restart loop
    WATCH/done/<input>             read; its results are in OUT
    WATCH/failed/<input>           could not be read; ``<input>.error.json`` beside it names the typed error
    OUT/<stem>.json                the result, exactly as ``lungedge infer --out`` writes it
    OUT/<stem>_overlay.png         the overlay of a 2-D image
    OUT/<stem>.error.json          the error of a failed input, for whoever watches OUT

An input is picked up once it has stayed unchanged for ``settle_seconds`` (a file still being copied is left
alone); names starting with "." or ending in .part, .tmp, .partial or .crdownload are ignored. Every output is
written to a hidden temporary file, flushed to disk and renamed, the JSON last, so a reader of OUT never sees
half a file and a JSON's appearance means its overlay is there. An input moves to done/ or failed/ only after
its outputs are in place; a name already taken there or in OUT gets a "-1", "-2"... suffix, never an overwrite.

Logs name an input by a short hash of its file name (file names can carry patient names) unless
``log_names`` is set; nothing read from a DICOM header reaches a log line. Start-up runs the bundle's golden
self-test (``lungedge selftest``) on the serving backend and exits with EXIT_SELFTEST, serving nothing, if it
fails. SIGTERM or SIGINT finish the input in hand and stop. Under systemd (``Type=notify``) READY=1 is sent
only after the self-test passed.
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from lungedge.runtime import report
from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch, InputError, LungedgeError

EXIT_OK = 0  # stopped on request
EXIT_FAILED = 1  # stopped because an output could not be written (the input in hand went back to WATCH)
EXIT_UNUSABLE = 2  # could not start: bad bundle, missing backend, unusable folders, usage error
EXIT_SELFTEST = 3  # the golden self-test failed or could not run: refused to serve

ERROR_SCHEMA = "lungedge.error/1"
IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
# Volume and image extensions stripped from an input name to make its result stem (".nii.gz" before ".gz").
STEM_EXTENSIONS = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
UPLOAD_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif", "image/bmp": ".bmp",
                   "application/dicom": ".dcm"}
HTTP_HOST = "127.0.0.1"  # never another interface: the endpoint has no authentication

log = logging.getLogger("lungedge.service")


class SelfTestFailed(LungedgeError):
    """The bundle's golden self-test failed or could not run on the serving backend; the service refuses to serve."""


class OutputError(LungedgeError):
    """A result could not be written (disk full, folder not writable); the input was put back for a later try."""


class InterruptedInput(LungedgeError):
    """An input found half-processed at start-up (the service died while reading it)."""


@dataclass(frozen=True)
class ServiceConfig:
    bundle: str
    watch: str
    out: str
    backend: str = "onnxruntime"
    precision: Optional[str] = None
    threads: Optional[int] = None
    lung_bundle: Optional[str] = None
    rule: str = "mean"  # CT study aggregation, as lungedge infer --rule
    consecutive: int = 3
    batch_size: int = 8
    http_port: Optional[int] = None  # None: no HTTP endpoint; 0: any free port (tests)
    poll_seconds: float = 1.0
    settle_seconds: float = 2.0
    max_upload_bytes: int = 256 * 1024 * 1024
    log_names: bool = False

    def __post_init__(self):
        if self.poll_seconds <= 0 or self.settle_seconds < 0:
            raise ValueError("poll_seconds must be > 0 and settle_seconds >= 0")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port {self.http_port} is not a TCP port")


def input_label(name, log_names=False):
    """How logs name an input: a short hash of its file name, or the name itself with ``log_names``."""
    if log_names:
        return name
    return "input-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def split_name(name):
    """(stem, extension) with the known image and volume extensions (".nii.gz" as one)."""
    lower = name.lower()
    for ext in STEM_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[:-len(ext)], name[-len(ext):]
    return name, ""


def free_name(folder, name, companions=()):
    """``name``, or ``stem-1.ext``, ``stem-2.ext``...: the first that ``folder`` holds neither alone nor with any
    of the ``companions`` suffixes appended."""
    stem, ext = split_name(name)
    candidate, n = name, 0
    while any(os.path.lexists(os.path.join(folder, candidate + s)) for s in ("",) + tuple(companions)):
        n += 1
        candidate = f"{stem}-{n}{ext}"
    return candidate


def is_ignored(name):
    """Hidden names and partial-upload suffixes are never picked up."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp, final):
    """Flush ``tmp`` to disk and rename it over ``final`` (atomic within one file system)."""
    _fsync(tmp)
    os.replace(tmp, final)


def write_json_atomic(data, path):
    """Write ``data`` as JSON to ``path`` through a hidden temporary file in the same folder."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        report.write_json(data, tmp)
        commit(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def entry_signature(path):
    """What must stay the same while an input settles: size and mtime (a folder: file count, total, latest)."""
    st = os.stat(path)
    if not os.path.isdir(path):
        return ("file", st.st_size, st.st_mtime_ns)
    count, total, latest = 0, 0, st.st_mtime_ns
    for root, _, files in os.walk(path):
        latest = max(latest, os.stat(root).st_mtime_ns)
        for f in files:
            fst = os.stat(os.path.join(root, f))
            count, total, latest = count + 1, total + fst.st_size, max(latest, fst.st_mtime_ns)
    return ("dir", count, total, latest)


def sd_notify(message):
    """Send ``message`` to systemd's notify socket when run under ``Type=notify``; False when not."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("=")[0], exc)
        return False
    return True


class WatchFolder:
    """The inputs in WATCH that have stayed unchanged for ``settle_seconds``, oldest first."""

    SUBFOLDERS = (".processing", "done", "failed")

    def __init__(self, root, settle_seconds):
        self.root = root
        self.settle_seconds = settle_seconds
        self.processing, self.done, self.failed = (os.path.join(root, d) for d in self.SUBFOLDERS)
        self._seen = {}  # name -> (signature, monotonic time it was first seen with that signature)

    def prepare(self):
        """Create the folders; raise OSError if WATCH is missing or any of them is not writable."""
        if not os.path.isdir(self.root):
            raise OSError(f"watch folder {self.root} does not exist")
        for folder in (self.processing, self.done, self.failed):
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OSError(f"folder {folder} is not writable by this user")

    def ready(self):
        """Names ready to process now, oldest modification first."""
        now, found = time.monotonic(), []
        try:
            names = os.listdir(self.root)
        except OSError as exc:
            log.warning("cannot list the watch folder: %s", exc)
            return []
        for name in names:
            if is_ignored(name) or name in self.SUBFOLDERS:
                continue
            try:
                sig = entry_signature(os.path.join(self.root, name))
            except OSError:  # vanished or unreadable mid-copy: look again next poll
                continue
            previous = self._seen.get(name)
            if previous is None or previous[0] != sig:
                self._seen[name] = (sig, now)
                if self.settle_seconds > 0:
                    continue
            elif now - previous[1] < self.settle_seconds:
                continue
            found.append((sig[-1], name))
        self._seen = {k: v for k, v in self._seen.items() if k in names}
        return [name for _, name in sorted(found)]

    def forget(self, name):
        self._seen.pop(name, None)


class Service:
    """One bundle serving a watch folder (and an optional 127.0.0.1 HTTP endpoint); ``start`` self-tests it."""

    def __init__(self, config):
        self.config = config
        self.watch = WatchFolder(config.watch, config.settle_seconds)
        self.selftests = []
        self.predictor = self.lung = self.runner = None
        self.httpd = None
        self._http_thread = None
        self._lock = threading.Lock()  # one inference at a time, watch folder and HTTP alike
        self._stop = threading.Event()
        self.processed = self.failed = self.not_assessed = 0  # not assessed: refused by quality control

    # -- start-up ---------------------------------------------------------------------------------------------

    def start(self):
        """Check the folders, recover crashed inputs, self-test, open the bundle(s), start HTTP, notify READY."""
        cfg = self.config
        watch, out = os.path.realpath(cfg.watch), os.path.realpath(cfg.out)
        if out == watch or out.startswith(watch + os.sep):
            raise OSError(f"output folder {cfg.out} is inside the watch folder: results would be read as inputs")
        self.watch.prepare()
        os.makedirs(cfg.out, exist_ok=True)
        if not os.access(cfg.out, os.W_OK | os.X_OK):
            raise OSError(f"output folder {cfg.out} is not writable by this user")
        self.recover_interrupted()
        sd_notify("STATUS=running the golden self-test")
        for bundle_dir in (cfg.bundle, cfg.lung_bundle):
            if bundle_dir:
                self.selftests.append(self._selftest(bundle_dir))
        self.predictor = self._open(cfg.bundle, cfg.precision)
        self.lung = self._open(cfg.lung_bundle, None) if cfg.lung_bundle else None
        for predictor, result in zip((self.predictor, self.lung), self.selftests):
            if predictor.artifact_key != result["artifact"]:
                raise SelfTestFailed(f"the self-test ran artifact {result['artifact']!r} but the service opened "
                                     f"{predictor.artifact_key!r}; refusing to serve an untested artifact")
        self.runner = _make_runner(self.predictor, self.lung, cfg)
        if cfg.http_port is not None:
            self._start_http()
        info = self.predictor.info
        log.info("serving %s (%s on %s, %s); watching %s", info["name"], info["artifact"], info["backend"],
                 info["precision"], cfg.watch)
        sd_notify(f"READY=1\nSTATUS=serving {info['name']} on {info['backend']}")

    def _selftest(self, bundle_dir):
        from lungedge.runtime.selftest import run_selftest

        cfg = self.config
        precision = cfg.precision if bundle_dir == cfg.bundle else None
        try:
            result = run_selftest(bundle_dir, backend=cfg.backend, precision=precision, threads=cfg.threads)
        except LungedgeError as exc:
            raise SelfTestFailed(f"self-test of {bundle_dir} could not run: {exc}") from None
        if not result["passed"]:
            raise SelfTestFailed(f"self-test of {result['bundle']} [{result['artifact']} on {result['backend']}] "
                                 f"failed: {result['reason']}; refusing to serve")
        log.info("self-test passed: %s [%s on %s], max abs diff %.3g <= %.3g", result["bundle"],
                 result["artifact"], result["backend"], result["max_abs_diff"], result["tolerance"])
        return result

    def _open(self, bundle_dir, precision):
        from lungedge.runtime.predictor import Predictor

        cfg = self.config
        return Predictor.from_bundle(bundle_dir, backend=cfg.backend, precision=precision, threads=cfg.threads)

    def recover_interrupted(self):
        """Move inputs left in .processing by a crash or power loss to failed/, with an "Interrupted" error."""
        for name in sorted(os.listdir(self.watch.processing)):
            exc = InterruptedInput(f"{name}: the service stopped while reading this input (crash or power loss); "
                                   "it was not retried automatically: drop it into the watch folder again")
            self._fail(name, os.path.join(self.watch.processing, name), exc, type_name="Interrupted")

    # -- the watch folder -------------------------------------------------------------------------------------

    def serve_forever(self):
        """Poll until ``stop``; raises OutputError if results cannot be written."""
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.config.poll_seconds)

    def poll_once(self):
        """Process every settled input; returns how many were taken."""
        taken = 0
        for name in self.watch.ready():
            if self._stop.is_set():
                break
            self.process(name)
            taken += 1
        return taken

    def process(self, name):
        """Claim one input, run it, write its outputs, archive it to done/ (or failed/ with its error)."""
        source = os.path.join(self.config.watch, name)
        claimed = os.path.join(self.watch.processing, name)
        self.watch.forget(name)
        try:
            os.replace(source, claimed)
        except FileNotFoundError:
            return  # taken away before we got to it
        label = input_label(name, self.config.log_names)
        start = time.monotonic()
        try:
            with self._lock:
                result, image = self.runner.run(claimed)
        except Exception as exc:  # one bad input must not stop the service
            self._fail(name, claimed, exc)
            return
        stem = self._free_stem(split_name(name)[0])
        try:
            if image is not None:
                self._write_overlay(image, result, os.path.join(self.config.out, stem + "_overlay.png"))
            write_json_atomic(result, os.path.join(self.config.out, stem + ".json"))
            archived = self._archive(claimed, self.watch.done, name)
        except OSError as exc:
            self._give_back(claimed, name)
            raise OutputError(f"cannot write the result of {label} to {self.config.out}: {exc}") from None
        self.processed += 1
        if result.get("assessed") is False:
            self.not_assessed += 1
        where = f" -> {stem}.json, input kept as done/{archived}" if self.config.log_names else ""
        log.info("%s: %s in %.2f s%s", label, _scrub(_verdict(result), name, label), time.monotonic() - start,
                 where)

    def _write_overlay(self, image, result, path):
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".tmp-{name}")  # keeps ".png" last: OpenCV picks the format by extension
        try:
            report.write_overlay(image[0], image[1], result, tmp)
            commit(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def _free_stem(self, stem):
        out, n, candidate = self.config.out, 0, stem
        while any(os.path.lexists(os.path.join(out, candidate + suffix))
                  for suffix in (".json", ".error.json", "_overlay.png")):
            n += 1
            candidate = f"{stem}-{n}"
        return candidate

    def _archive(self, claimed, folder, name):
        final = free_name(folder, name)
        os.replace(claimed, os.path.join(folder, final))
        _fsync(folder, directory=True)
        return final

    def _give_back(self, claimed, name):
        """Put a claimed input back into WATCH for a later try."""
        try:
            os.replace(claimed, os.path.join(self.config.watch, free_name(self.config.watch, name)))
        except OSError as exc:  # the input stays in .processing and goes to failed/ at the next start
            log.error("could not put an input back into the watch folder: %s", exc)

    def _fail(self, name, claimed, exc, type_name=None):
        """Write the error JSON (failed/ and OUT), then move the input to failed/."""
        label = input_label(name, self.config.log_names)
        type_name = type_name or type(exc).__name__
        message = str(exc) if isinstance(exc, LungedgeError) else f"unexpected {type(exc).__name__}: {exc}"
        final = free_name(self.watch.failed, name, companions=(".error.json",))
        error = {"schema": ERROR_SCHEMA, "input": {"file": name}, "error": {"type": type_name, "message": message},
                 "archived_as": f"failed/{final}", "time": utc_now()}
        if self.predictor is not None:
            error["bundle"] = self.predictor.info
        stem = self._free_stem(split_name(name)[0])
        try:
            write_json_atomic(error, os.path.join(self.watch.failed, final + ".error.json"))
            write_json_atomic(error, os.path.join(self.config.out, stem + ".error.json"))
            os.replace(claimed, os.path.join(self.watch.failed, final))
            _fsync(self.watch.failed, directory=True)
        except OSError as oserr:
            self._give_back(claimed, name)
            raise OutputError(f"cannot record the failure of {label}: {oserr}") from None
        self.failed += 1
        where = f" (input kept as failed/{final})" if self.config.log_names else ""
        log.warning("%s: failed (%s): %s%s", label, type_name, _scrub(message, name, label), where)

    # -- HTTP -------------------------------------------------------------------------------------------------

    def _start_http(self):
        self.httpd = ThreadingHTTPServer((HTTP_HOST, self.config.http_port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="lungedge-http", daemon=True)
        self._http_thread.start()
        log.info("HTTP endpoint on http://%s:%d (POST /predict, GET /health)", *self.http_address)

    @property
    def http_address(self):
        return self.httpd.server_address[:2] if self.httpd else None

    def predict_upload(self, data, name):
        """Run uploaded bytes (written to a private temporary file named ``name``); returns the JSON-safe result."""
        folder = tempfile.mkdtemp(prefix="lungedge-upload-")
        try:
            path = os.path.join(folder, name)
            with open(path, "wb") as fh:
                fh.write(data)
            with self._lock:
                result, _ = self.runner.run(path)
            return report.jsonable(result)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- stopping ---------------------------------------------------------------------------------------------

    def stop(self):
        """Ask the service to stop after the input in hand (safe from a signal handler)."""
        self._stop.set()

    def close(self):
        """Stop HTTP, release the backends."""
        sd_notify("STOPPING=1")
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        with self._lock:  # an HTTP request already inside the model finishes first
            for predictor in (self.predictor, self.lung):
                if predictor is not None:
                    predictor.close()
            self.predictor = self.lung = self.runner = None


def _make_runner(predictor, lung, cfg):
    """The same routing as ``lungedge infer`` (X-ray pipeline, CT studies), so both give identical results."""
    from lungedge.runtime.pipelines import InputRouter

    return InputRouter(predictor, lung, rule=cfg.rule, consecutive=cfg.consecutive, batch_size=cfg.batch_size)


def _verdict(result):
    if result.get("assessed") is False:
        return f"not assessed ({result.get('reason', '')})"
    if result.get("task") == "classification":
        return f"label {result['label']}"
    if result.get("task") == "segmentation":
        return "segmented"
    return f"CT study, {result.get('slices')} slices"


def _scrub(message, name, label):
    """The message with the input's file name (and its stem) replaced by its label."""
    for text in sorted({name, split_name(name)[0]}, key=len, reverse=True):
        if text:
            message = message.replace(text, label)
    return message


HTTP_STATUS = ((InputError, 422), (EngineMismatch, 500), (BackendUnavailable, 503), (BundleError, 500))


def _upload_name(query, content_type):
    """A safe file name for an upload: ``?name=`` (base name only) or ``upload`` plus a suffix from its type."""
    given = os.path.basename((parse_qs(query).get("name") or [""])[0])
    if given and not given.startswith(".") and all(c.isalnum() or c in "._-" for c in given):
        return given
    return "upload" + UPLOAD_SUFFIXES.get((content_type or "").split(";")[0].strip().lower(), "")


def _handler_for(service):
    class Handler(BaseHTTPRequestHandler):
        server_version = "lungedge"
        timeout = 30  # seconds a client may stall before its connection is dropped

        def log_message(self, fmt, *args):  # the default writes to stderr with the client address
            log.debug("http: " + fmt, *args)

        def _reply(self, status, body):
            data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, type_name, message):
            self._reply(status, {"error": {"type": type_name, "message": message}})

        def do_GET(self):
            if urlsplit(self.path).path != "/health":
                return self._error(404, "NotFound", "GET /health or POST /predict")
            self._reply(200, {"status": "ok", "bundle": service.predictor.info,
                              "selftest": report.jsonable(service.selftests)})

        def do_POST(self):
            url = urlsplit(self.path)
            if url.path != "/predict":
                return self._error(404, "NotFound", "POST the image bytes to /predict")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._error(411, "LengthRequired", "send a Content-Length header")
            if int(length) > service.config.max_upload_bytes:
                self.close_connection = True
                return self._error(413, "TooLarge", f"upload of {length} bytes exceeds the "
                                                    f"{service.config.max_upload_bytes}-byte limit")
            data = self.rfile.read(int(length))
            try:
                result = service.predict_upload(data, _upload_name(url.query, self.headers.get("Content-Type")))
            except Exception as exc:  # reported to the caller; the service keeps serving
                status = next((code for cls, code in HTTP_STATUS if isinstance(exc, cls)), 500)
                message = str(exc) if isinstance(exc, LungedgeError) else f"unexpected {type(exc).__name__}: {exc}"
                log.warning("http upload failed (%s)", type(exc).__name__)
                return self._error(status, type(exc).__name__, message)
            log.info("http upload: %s", _verdict(result))
            self._reply(200, result)

        def do_PUT(self):
            self._error(405, "MethodNotAllowed", "GET /health or POST /predict")

        do_DELETE = do_PATCH = do_PUT

    return Handler


BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# Options that fall back to an environment variable (the container image sets these).
ENV_DEFAULTS = {"bundle": "LUNGEDGE_BUNDLE", "watch": "LUNGEDGE_WATCH", "out": "LUNGEDGE_OUT",
                "backend": "LUNGEDGE_BACKEND"}


def _env_option(parser, name, help_text, fallback=None):
    env = ENV_DEFAULTS[name]
    default = os.environ.get(env) or fallback
    parser.add_argument(f"--{name}", default=default, required=default is None,
                        help=f"{help_text} (default: ${env}" + (f", else {fallback})" if fallback else ")"))


def build_parser():
    parser = argparse.ArgumentParser(prog="lungedge serve", description=__doc__.split("\n\n")[0])
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
    previous = {sig: signal.signal(sig, lambda *_: service.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            service.start()
        except SelfTestFailed as exc:
            log.error("%s", exc)
            return EXIT_SELFTEST
        except (LungedgeError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_UNUSABLE
        try:
            service.serve_forever()
        except OutputError as exc:
            log.error("%s; stopping", exc)
            return EXIT_FAILED
        log.info("stopped after %d processed and %d failed inputs", service.processed, service.failed)
        return EXIT_OK
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
