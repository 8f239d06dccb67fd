"""The DICOM node: storage SCP -> durable queue -> X-ray / CT pipelines -> SR, SEG, SC -> forwarding.

Three threads share one NodeStore: the SCP's (one per association) receive, the worker processes, the
forwarder sends. Each waits on an event rather than sleeping blindly, so a received instance is picked up
at once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

from lungedge.runtime.dicom_node.forward import Forwarder
from lungedge.runtime.dicom_node.process import Processor, save_results, selftest_bundles
from lungedge.runtime.dicom_node.scp import MODALITY_CODES, StorageSCP
from lungedge.runtime.dicom_node.store import NodeStore
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.errors import LungedgeError

log = logging.getLogger("lungedge.dicom_node")


def describe_file(path):
    """(SOPInstanceUID, SeriesInstanceUID, "xray" | "ct") of an inbox file."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    modality = MODALITY_CODES.get(str(ds.get("Modality", "")).upper(), "xray")
    return str(ds.SOPInstanceUID), str(ds.get("SeriesInstanceUID", "")), modality


class DicomNode:
    """``start()`` recovers the queue, opens the bundles and listens; ``stop()`` finishes the item in hand."""

    def __init__(self, config):
        self.config = config
        self.store = self.processor = self.scp = self.forwarder = None
        self._stop = threading.Event()
        self._work = threading.Event()
        self._forward_event = threading.Event()
        self._threads = []

    def start(self):
        self.store = NodeStore(self.config.state)
        recovered = self.store.recover(describe_file)
        if recovered:
            log.warning("registered %d inbox instances that a stop left without a queue row", recovered)
        self.selftests = selftest_bundles(self.config, log)
        self.processor = Processor(self.config)
        self.forwarder = Forwarder(self.config, self.store)
        self.scp = StorageSCP(self.config, self.store, self.processor.modalities, on_received=self._work.set)
        host, port = self.scp.start()
        counts = self.store.counts()
        log.info("listening as %s on %s:%d (%s); %d instances queued, %d results to forward",
                 self.config.ae_title, host, port, ", ".join(self.processor.modalities), counts["received"],
                 counts["pending"])
        for target, name in ((self._work_loop, "lungedge-node-worker"), (self._forward_loop, "lungedge-node-forward")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._work.set()
        return host, port

    @property
    def address(self):
        return self.scp.address if self.scp else None

    def stop(self):
        self._stop.set()
        self._work.set()
        self._forward_event.set()
        if self.scp is not None:
            self.scp.stop()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads = []
        if self.processor is not None:
            self.processor.close()
        if self.store is not None:
            self.store.close()

    def wait(self):
        """Block until ``stop`` (from a signal handler, say)."""
        while not self._stop.wait(1.0):
            pass

    # -- the worker -------------------------------------------------------------------------------------------

    def _work_loop(self):
        while not self._stop.is_set():
            try:
                busy = self.process_one()
            except Exception as exc:  # never let the worker die; the item stays queued
                # the type only: a library's message or traceback can quote header values
                log.error("worker error (%s); retrying shortly", type(exc).__name__)
                busy = False
                self._stop.wait(1.0)
            if not busy:
                self._work.wait(self.config.poll_seconds)
                self._work.clear()

    def process_one(self):
        """Process one X-ray instance or one settled CT series; False when there was nothing to do."""
        row = self.store.next_xray()
        if row is not None:
            sop, path = row
            self._run([sop], functools.partial(self.processor.run_xray, path), "X-ray instance")
            return True
        for series in self.store.settled_series(self.config.ct_settle_seconds):
            rows = self.store.series_instances(series)
            if rows:
                self._run([s for s, _ in rows], functools.partial(self.processor.run_ct, [p for _, p in rows]),
                          f"CT series of {len(rows)} instances", sr_first=True)
                return True
        return False

    def _run(self, sops, job, what, sr_first=False):
        """Run ``job`` -> (result, DicomResults), save and queue its results, mark ``sops`` done (or failed).

        ``sr_first``: the job takes ``on_sr``; its SR is saved and queued before the SEG and SC are built.
        """
        from lungedge.runtime.dicom_node.writers import derived_uid

        start = time.monotonic()
        key = derived_uid("result", *sops)
        folder = os.path.join(self.store.results, key)
        if sr_first:
            job = functools.partial(job, on_sr=lambda result, sr: self._send_sr_first(folder, sr))
        try:
            result, objects = job()
        except OSError:
            raise  # disk or file trouble: the instances stay queued and are tried again
        except Exception as exc:  # bad input (typed) or a library refusing it: fail it, keep the queue moving
            message = str(exc) if isinstance(exc, LungedgeError) else f"unexpected {type(exc).__name__}: {exc}"
            error = {"schema": "lungedge.error/1", "error": {"type": type(exc).__name__, "message": message}}
            self.store.fail(sops, error)
            log.warning("%s failed (%s): kept in failed/ with its error file", what, type(exc).__name__)
            return
        paths = save_results(folder, result, objects)
        self.store.complete(sops, folder, paths, [d.name for d in self.config.destinations])
        if not self.config.keep_inputs:
            self.store.release_inputs(sops)
        self.forward_now()
        log.info("%s processed in %.2f s: %s -> results/%s", what, time.monotonic() - start, _verdict(result), key)

    def _send_sr_first(self, folder, sr):
        from lungedge.runtime.dicom_node.process import encode
        from lungedge.runtime.dicom_node.store import write_durably

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "sr.dcm")
        write_durably(path, encode(sr))
        self.store.queue([path], [d.name for d in self.config.destinations])
        self.forward_now()

    # -- the forwarder ----------------------------------------------------------------------------------------

    def forward_now(self):
        self._forward_event.set()

    def _forward_loop(self):
        while not self._stop.is_set():
            try:
                self.forwarder.run_once()
            except Exception as exc:
                log.error("forwarder error (%s); retrying shortly", type(exc).__name__)
            due = self.store.next_due()
            wait = self.config.poll_seconds * 10 if due is None else max(0.0, min(due - time.time(), 5.0))
            self._forward_event.wait(wait)
            self._forward_event.clear()


def _verdict(result):
    if result.get("task") == TaskKind.CLASSIFICATION:
        return f"label {result['label']}"
    return f"CT study, severity {result.get('severity')}, score {result.get('covid_probability')}"
