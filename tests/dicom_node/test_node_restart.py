"""Kill -9 the node (run as ``lungedge dicom-node``) mid-queue, restart it: every acknowledged instance is processed
exactly once, every result reaches the PACS once, and the logs hold no patient identifier."""

import os
import signal
import sqlite3
import subprocess
import sys

import pydicom
from dicom_samples import cr_instance, new_uid
from peers import Orthanc, free_port, require_tool, wait_for

COUNT = 8


def start(bundles, state, port, destination, log):
    cmd = [sys.executable, "-c", "import sys; from lungedge.cli.main import main; sys.exit(main())",
           "dicom-node", "--state", state, "--xray-bundle", bundles["xray"], "--xray-lung-bundle",
           bundles["xray_lung"], "--host", "127.0.0.1", "--port", str(port), "--allow", "CART",
           "--destination", destination, "--retry-base-seconds", "0.2", "--retry-max-seconds", "1"]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = proc.stdout.readline()
    assert line.startswith("READY"), f"the node did not start; see {log.name}"
    return proc


def states(state):
    with sqlite3.connect(os.path.join(state, "queue.sqlite"), timeout=30) as db:
        return db.execute("SELECT sop_uid, state, processed FROM instances").fetchall()


def test_kill_mid_queue_then_restart_processes_every_instance_exactly_once(tmp_path, bundles, dev_cr):
    pacs = Orthanc(tmp_path / "pacs").start()
    state, port = str(tmp_path / "state"), free_port()
    study = new_uid()
    files = [cr_instance(dev_cr, tmp_path / f"cr{i}.dcm", study_uid=study) for i in range(COUNT)]
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    log_path = tmp_path / "node.log"
    try:
        with open(log_path, "w") as log:
            node = start(bundles, state, port, pacs.destination, log)
            sent = subprocess.run([require_tool("storescu"), "-aet", "CART", "-aec", "LUNGEDGE", "-xy", "127.0.0.1",
                                   str(port), *files], capture_output=True, text=True, timeout=120)
            node.send_signal(signal.SIGKILL)  # every instance acknowledged, most still queued
            node.wait(30)
            assert sent.returncode == 0, sent.stderr
            before = states(state)
            assert len(before) == COUNT  # acknowledged means on disk and queued
            assert sum(s == "done" for _, s, _ in before) < COUNT, "the kill came too late to test a restart"

            node = start(bundles, state, port, pacs.destination, log)
            try:
                wait_for(lambda: all(s == "done" for _, s, _ in states(state)), timeout=120,
                         what="the queue to drain after the restart")
                wait_for(lambda: len(pacs.study_instances(study)) >= 3 * COUNT, timeout=60,
                         what="every result at the PACS")
            finally:
                node.send_signal(signal.SIGTERM)
                node.wait(60)
        after = states(state)
        assert sorted(u for u, _, _ in after) == sorted(str(s.SOPInstanceUID) for s in sources)
        assert all(processed == 1 for _, _, processed in after)
        found = pacs.study_instances(study)
        assert sorted(k for k, _, _ in found) == ["SC"] * COUNT + ["SEG"] * COUNT + ["SR"] * COUNT
        assert len(os.listdir(os.path.join(state, "results"))) == COUNT
        with sqlite3.connect(os.path.join(state, "queue.sqlite")) as db:
            assert db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall() == [("sent", 3 * COUNT)]
    finally:
        pacs.stop()
    logged = log_path.read_text()
    assert "processed" in logged and "READY" not in logged
    for ds in sources[:1]:
        assert str(ds.PatientID) not in logged and str(ds.PatientName) not in logged
