"""The bedside service: one self-tested bundle serving a watch folder and, optionally, the HTTP endpoint."""

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from lungedge.runtime import report
from lungedge.runtime.errors import LungedgeError
from lungedge.runtime.service.atomic import (
    free_name,
    fsync_path,
    split_name,
    write_json_atomic,
    write_overlay_atomic,
)
from lungedge.runtime.service.daemon import SelfTestFailed, sd_notify
from lungedge.runtime.service.http import serve_in_thread
from lungedge.runtime.service.labels import input_label, scrub, verdict
from lungedge.runtime.service.watch import WatchFolder

ERROR_SCHEMA = "lungedge.error/1"

log = logging.getLogger("lungedge.service")


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


def utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
                write_overlay_atomic(image, result, os.path.join(self.config.out, stem + "_overlay.png"))
            write_json_atomic(result, os.path.join(self.config.out, stem + ".json"))
            archived = self._archive(claimed, self.watch.done, name)
        except OSError as exc:
            self._give_back(claimed, name)
            raise OutputError(f"cannot write the result of {label} to {self.config.out}: {exc}") from None
        self.processed += 1
        if result.get("assessed") is False:
            self.not_assessed += 1
        where = f" -> {stem}.json, input kept as done/{archived}" if self.config.log_names else ""
        log.info("%s: %s in %.2f s%s", label, scrub(verdict(result), name, label), time.monotonic() - start,
                 where)

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
        fsync_path(folder, directory=True)
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
            fsync_path(self.watch.failed, directory=True)
        except OSError as oserr:
            self._give_back(claimed, name)
            raise OutputError(f"cannot record the failure of {label}: {oserr}") from None
        self.failed += 1
        where = f" (input kept as failed/{final})" if self.config.log_names else ""
        log.warning("%s: failed (%s): %s%s", label, type_name, scrub(message, name, label), where)

    # -- HTTP -------------------------------------------------------------------------------------------------

    def _start_http(self):
        self.httpd, self._http_thread = serve_in_thread(self, self.config.http_port)
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
