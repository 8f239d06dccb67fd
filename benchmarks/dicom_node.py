"""``lungedge bench dicom-node``: throughput and latency of the DICOM node, from C-STORE to the SR at Orthanc.

    lungedge bench dicom-node --xray-bundle B [--xray-lung-bundle B] [--ct-bundle B] [--ct-lesion-bundle B]
        --dicom ../shared/data/dicom [--latency-images 30] [--burst-images 50] [--ct-slices 300] [--out DIR]

The node runs as its own process (``lungedge dicom-node``), Orthanc as the PACS, this process as the cart
(pynetdicom SCU), all on 127.0.0.1. Phases:

1. latency: one X-ray instance at a time; from the end of its C-STORE (success status back at the cart) to its SR
   showing up in Orthanc's change log (polled every 10 ms), p50/p95/max;
2. burst: ``burst-images`` instances back to back on one association: images per second received (C-STORE
   rate), inferred (processing done, from the node's queue) and forwarded (accepted by Orthanc), and the
   latency of each under that load;
3. CT: one ``ct-slices`` series; from the end of the last slice's C-STORE to its SR at Orthanc (this includes
   the series settle time, reported beside it).

The X-ray source is the dev pack's chest CR (1024x1024, JPEG baseline, re-tagged CR Image Storage, new UIDs
per instance); the CT series is the dev pack's CT slice resized to 512x512 and repeated along z.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancPeer:
    """Orthanc in a temporary folder on 127.0.0.1, with a thread that timestamps every SR it receives."""

    def __init__(self, folder):
        self.folder, self.dicom_port, self.http_port = folder, _free_port(), _free_port()
        self.proc, self.arrivals, self._stop = None, {}, threading.Event()

    def start(self):
        exe = shutil.which("Orthanc")
        if exe is None:
            raise SystemExit("Orthanc is not installed (make tools installs it)")
        db = os.path.join(self.folder, "db")
        os.makedirs(db, exist_ok=True)
        config = {"Name": "bench", "StorageDirectory": db, "IndexDirectory": db, "DicomAet": "ORTHANC",
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
                  "StorageCompression": False}
        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w") as fh:
            json.dump(config, fh)
        self.proc = subprocess.Popen([exe, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("Orthanc did not start") from None
                time.sleep(0.1)
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _watch(self):
        since = 0
        while not self._stop.is_set():
            changes = self.get(f"/changes?since={since}&limit=1000")
            now = time.time()
            for change in changes["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    tags = self.get(f"/instances/{change['ID']}")["MainDicomTags"]
                    self.arrivals[tags["SOPInstanceUID"]] = now
            since = changes["Last"]
            if not changes["Changes"]:
                time.sleep(0.01)

    def stop(self):
        self._stop.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def cr_dataset(source):
    """The dev CR re-tagged CR Image Storage; callers give each copy new UIDs."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    return ds


def fresh(ds, study=None, series=None):
    from pydicom.uid import generate_uid

    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    return ds


def ct_series(source, slices, side=512):
    """``slices`` datasets of the dev CT slice resized to ``side`` px, 1 mm apart, one new series."""
    import cv2
    import pydicom
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(source)
    pixels = cv2.resize(base.pixel_array, (side, side), interpolation=cv2.INTER_LINEAR).astype(base.pixel_array.dtype)
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(slices):
        ds = pydicom.dcmread(source)
        ds.Rows = ds.Columns = side
        ds.PixelSpacing = [float(ds.PixelSpacing[0]) * base.Rows / side] * 2
        ds.PixelData = pixels.tobytes()
        fresh(ds, study, series)
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 1.0 * k]
        ds.InstanceNumber = k + 1
        out.append(ds)
    return out


def expected_sr_uid(node_config, sources):
    """The SR UID the node derives for an X-ray source or a CT series (see lungedge.runtime.dicom_node.writers)."""
    from lungedge.runtime.bundle import MANIFEST, sha256_file
    from lungedge.runtime.dicom_node.writers import derived_uid

    def sha(bundle):
        return sha256_file(os.path.join(bundle, MANIFEST)) if bundle else ""

    if len(sources) == 1 and str(sources[0].Modality) != "CT":
        key = (sources[0].SOPInstanceUID, sha(node_config["xray_bundle"]), sha(node_config.get("xray_lung_bundle")))
        return derived_uid("sr", key)
    raise ValueError("CT keys depend on the node's slice order; use the study's SR instead")


def start_node(args, state, port, destination, log):
    cmd = [sys.executable, "-c", "import sys; from lungedge.runtime.dicom_node.cli import main; sys.exit(main())",
           "dicom-node", "--state", state, "--host", "127.0.0.1", "--port", str(port), "--allow", "BENCH",
           "--destination", destination, "--ct-settle-seconds", str(args.ct_settle_seconds)]
    for flag in ("xray_bundle", "xray_lung_bundle", "ct_bundle", "ct_lesion_bundle"):
        if getattr(args, flag):
            cmd += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    if not proc.stdout.readline().startswith("READY"):
        raise SystemExit("the node did not start; see its log")
    return proc


class Cart:
    """A pynetdicom SCU holding one association to the node."""

    def __init__(self, port, contexts):
        from pynetdicom import AE

        self.ae = AE(ae_title="BENCH")
        for uid, syntax in contexts:
            self.ae.add_requested_context(uid, [syntax])
        self.assoc = self.ae.associate("127.0.0.1", port, ae_title="LUNGEDGE")
        if not self.assoc.is_established:
            raise SystemExit("the node refused the association")

    def store(self, ds):
        status = self.assoc.send_c_store(ds)
        if not status or status.Status != 0:
            raise SystemExit(f"C-STORE failed: {status}")
        return time.time()

    def close(self):
        self.assoc.release()
        self.ae.shutdown()


def _arrived(pacs, uids):
    return lambda: all(u in pacs.arrivals for u in uids)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for results at Orthanc")
        time.sleep(0.005)


def percentiles(values):
    v = np.asarray(values, float)
    return {"n": int(v.size), "p50_s": float(np.percentile(v, 50)), "p95_s": float(np.percentile(v, 95)),
            "max_s": float(v.max()), "mean_s": float(v.mean())}


def queue_rates(state, sop_uids):
    """Received, inferred and forwarded images per second from the node's queue timestamps."""
    import sqlite3

    with sqlite3.connect(os.path.join(state, "queue.sqlite")) as db:
        marks = ",".join("?" * len(sop_uids))
        rows = db.execute(f"SELECT received, processed_at, result FROM instances WHERE sop_uid IN ({marks})",
                          list(sop_uids)).fetchall()
        results = [r[2] for r in rows]
        sent = db.execute(f"SELECT MAX(sent) FROM outbox WHERE path LIKE '%sr.dcm' AND "
                          f"({' OR '.join(['path LIKE ?'] * len(results))})",
                          [r + "%" for r in results]).fetchone()[0]
    first, last_received = min(r[0] for r in rows), max(r[0] for r in rows)
    last_processed = max(r[1] for r in rows)
    n = len(rows)
    return {"images": n, "received_per_s": n / max(last_received - first, 1e-9),
            "inferred_per_s": n / max(last_processed - first, 1e-9), "forwarded_per_s": n / max(sent - first, 1e-9)}


def run(args):
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

    work = tempfile.mkdtemp(prefix="lungedge-bench-node-")
    pacs = OrthancPeer(os.path.join(work, "pacs")).start()
    port, state = _free_port(), os.path.join(work, "state")
    log = open(os.path.join(work, "node.log"), "w")
    node = start_node(args, state, port, f"ORTHANC@127.0.0.1:{pacs.dicom_port}", log)
    config = {"xray_bundle": args.xray_bundle, "xray_lung_bundle": args.xray_lung_bundle}
    results = {"schema": "lungedge.bench.dicom-node/1", "command": "lungedge bench " + " ".join(args.argv),
               "cpu": _cpu(), "python": platform.python_version(), "ct_settle_seconds": args.ct_settle_seconds,
               "bundles": {k: os.path.basename(os.path.normpath(v)) for k, v in vars(args).items()
                           if k.endswith("bundle") and v}}
    try:
        base = cr_dataset(os.path.join(args.dicom, "cxr_pa_cr_monochrome2.dcm"))
        cart = Cart(port, [(CR_STORAGE, JPEGBaseline8Bit), ("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)])
        try:
            for _ in range(args.warmup):  # first-call costs (model load caches, Orthanc's first study)
                sr = expected_sr_uid(config, [fresh(base)])
                cart.store(base)
                _wait(_arrived(pacs, [sr]), 60)
            latencies = []
            for _ in range(args.latency_images):
                sr = expected_sr_uid(config, [fresh(base)])
                end = cart.store(base)
                _wait(_arrived(pacs, [sr]), 60)
                latencies.append(pacs.arrivals[sr] - end)
            results["xray_latency"] = percentiles(latencies)

            ends, srs, sops = [], [], []
            start = time.time()
            for _ in range(args.burst_images):
                srs.append(expected_sr_uid(config, [fresh(base)]))
                sops.append(str(base.SOPInstanceUID))
                ends.append(cart.store(base))
            _wait(_arrived(pacs, srs), 600)
            burst = percentiles([pacs.arrivals[s] - e for s, e in zip(srs, ends)])
            burst.update(queue_rates(state, sops))
            burst["end_to_end_per_s"] = len(srs) / (max(pacs.arrivals[s] for s in srs) - start)
            results["xray_burst"] = burst

            if args.ct_bundle or args.ct_lesion_bundle:
                series = ct_series(os.path.join(args.dicom, "ct_small_thorax_128.dcm"), args.ct_slices)
                t0 = time.time()
                for ds in series:
                    last = cart.store(ds)
                study = str(series[0].StudyInstanceUID)
                _wait(lambda: _study_sr(pacs, study), 600)
                sr_uid = _study_sr(pacs, study)
                results["ct_series"] = {"slices": len(series), "side": int(series[0].Rows),
                                        "send_s": last - t0, "last_slice_to_sr_s": pacs.arrivals[sr_uid] - last,
                                        "settle_s": args.ct_settle_seconds}
        finally:
            cart.close()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(60)
        log.close()
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def _study_sr(pacs, study):
    """SOP Instance UID of the SR in ``study`` once it has arrived (and been timestamped), else None."""
    req = urllib.request.Request(f"http://127.0.0.1:{pacs.http_port}/tools/find",
                                 data=json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study},
                                                  "Expand": True}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        found = json.loads(resp.read().decode("utf-8"))
    for inst in found:
        uid = inst["MainDicomTags"]["SOPInstanceUID"]
        if uid in pacs.arrivals and pacs.get(f"/instances/{inst['ID']}/metadata?expand").get("SopClassUid") == SR_CLASS:
            return uid
    return None


def _cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"model": model, "logical_cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}


def write_report(results, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2, sort_keys=True)
        fh.write("\n")
    lat, burst, ct = results.get("xray_latency"), results.get("xray_burst"), results.get("ct_series")
    lines = ["# DICOM node: throughput and latency", "",
             f"CPU: {results['cpu']['model']}, {results['cpu']['logical_cpus']} logical CPUs (load average at start "
             f"{', '.join(f'{x:.1f}' for x in results['cpu']['load_average_at_start'])}; shared machine).",
             f"Bundles: {results['bundles']}.", "", "Command:", "", "```", results["command"], "```", "",
             "| measure | value | target |", "|---|---|---|"]
    if lat:
        lines += [f"| X-ray, one at a time: C-STORE end -> SR at Orthanc, p50 / p95 (n={lat['n']}) | "
                  f"{lat['p50_s']:.3f} s / {lat['p95_s']:.3f} s | p95 <= 1 s |"]
    if burst:
        lines += [f"| X-ray burst of {burst['images']}: received | {burst['received_per_s']:.1f} images/s | |",
                  f"| X-ray burst: inferred | {burst['inferred_per_s']:.2f} images/s | |",
                  f"| X-ray burst: forwarded (SR accepted by Orthanc) | {burst['forwarded_per_s']:.2f} images/s | |",
                  f"| X-ray burst: C-STORE end -> SR, p50 / p95 (queueing included) | {burst['p50_s']:.2f} s / "
                  f"{burst['p95_s']:.2f} s | |"]
    if ct:
        lines += [f"| CT series of {ct['slices']} slices ({ct['side']} px): last slice -> SR at Orthanc | "
                  f"{ct['last_slice_to_sr_s']:.2f} s (settle {ct['settle_s']:.1f} s included) | <= 15 s |",
                  f"| CT series: sending all slices | {ct['send_s']:.2f} s | |"]
    lines += ["", "How it is measured: the node runs as its own process (`lungedge dicom-node`), Orthanc as the PACS, "
              "this process as the cart (pynetdicom), all on 127.0.0.1 and the same 2 cores. Latency runs from the "
              "success status of a C-STORE at the cart to the SR's appearance in Orthanc's change log (polled "
              "every 10 ms). Received/inferred/forwarded rates come from the node's queue timestamps (received, "
              "processed, SR accepted by Orthanc) over the burst. The X-ray input is the dev pack's 1024x1024 "
              "JPEG CR; the CT series is the dev pack's CT slice resized to 512x512 and repeated.",
              "", "Each X-ray result is three objects (SR, SEG, SC); the SC overlay and the SEG of a 1024x1024 image "
              "are part of the time (the forwarder sends SRs ahead of queued SEGs and SCs). A CT series is "
              "processed after `ct_settle_seconds` without a new slice (the study pipeline does not start while "
              "slices still arrive); its SR is written and sent before the SEG (2 x 300 frames) and SC are built."]
    if any("tiny" in str(v) for v in results["bundles"].values()):
        lines += ["", "**Bundles with `tiny` in their name are the tests' 32-pixel ONNX models** "
                  "(`python tools/tiny_bundles.py bundles/tiny`), used because no compressed classifier or CT "
                  "bundle was present on this machine: these numbers measure the node's own overhead (DICOM "
                  "decoding, networking, queue, SR/SEG/SC writing, forwarding) plus those models, not the "
                  "compressed models' inference. Add a real bundle's per-image (or per-study) latency from "
                  "BENCHMARKS.md to estimate a deployment."]
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def build_parser():
    p = argparse.ArgumentParser(prog="lungedge bench dicom-node", description=__doc__.split("\n\n")[0])
    p.add_argument("--xray-bundle", required=True)
    p.add_argument("--xray-lung-bundle")
    p.add_argument("--ct-bundle")
    p.add_argument("--ct-lesion-bundle")
    p.add_argument("--dicom", required=True, help="the dev pack's dicom folder (../shared/data/dicom)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--latency-images", type=int, default=30)
    p.add_argument("--burst-images", type=int, default=50)
    p.add_argument("--ct-slices", type=int, default=300)
    p.add_argument("--ct-settle-seconds", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads in the node")
    p.add_argument("--out")
    return p


def main(argv):
    args = build_parser().parse_args(argv)
    args.argv = ["dicom-node"] + list(argv)
    results = run(args)
    print(json.dumps(results, indent=2, sort_keys=True))
    if args.out:
        write_report(results, args.out)
    return 0
