"""The bedside service (lungedge.runtime.service) end to end on ONNX Runtime with a tiny self-tested bundle."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from tinymodels import XRAY_LABELS, golden_writer, square_image, xray_classifier_bundle

from lungedge.runtime import service as svc

FAST = {"poll_seconds": 0.05, "settle_seconds": 0.0}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def folders(tmp_path):
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    return str(watch), str(out)


def listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def wait_for(condition, timeout=30.0, step=0.05):
    """Poll ``condition`` until true or ``timeout`` seconds pass (for another process's work: no event to hook)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture
def bundle(xray_cls_bundle):
    return xray_cls_bundle


@pytest.fixture
def png_bytes():
    """Callable(seed) -> bytes of a small 8-bit PNG with a bright rectangle (distinct per seed)."""
    import cv2

    def encode(seed=0):
        img = square_image(96, 128, box=(20 + seed, 30, 60 + seed, 90 + seed))
        img = (img + np.random.default_rng(seed).integers(0, 8, img.shape)).astype(np.uint8)
        ok, buf = cv2.imencode(".png", img)
        assert ok
        return buf.tobytes()
    return encode


def count_outcomes(service, total):
    """An Event set once ``service`` has processed or failed ``total`` inputs (serve_forever runs in a thread)."""
    finished, process = threading.Event(), service.process

    def counted(name):
        process(name)
        if service.processed + service.failed >= total:
            finished.set()
    service.process = counted
    return finished


@pytest.fixture
def started(tmp_path, bundle):
    """Callable(**config) -> a started Service on tmp folders; closed after the test."""
    made = []

    def start(**overrides):
        watch, out = folders(tmp_path)
        config = svc.ServiceConfig(bundle=bundle, watch=watch, out=out, **dict(FAST, **overrides))
        service = svc.Service(config)
        made.append(service)
        service.start()
        return service
    yield start
    for service in made:
        service.close()


def test_watch_folder_processes_good_inputs_and_quarantines_a_corrupt_one(tmp_path, bundle, png_bytes):
    watch, out = folders(tmp_path)
    service = svc.Service(svc.ServiceConfig(bundle=bundle, watch=watch, out=out, poll_seconds=0.05,
                                            settle_seconds=0.2))
    service.start()
    finished = count_outcomes(service, 4)
    worker = threading.Thread(target=service.serve_forever, daemon=True)
    worker.start()
    try:
        dropped = ["a.png", "b.png", "c.png", "broken.png"]
        for i, name in enumerate(dropped[:3]):
            with open(os.path.join(watch, name), "wb") as fh:
                fh.write(png_bytes(i))
        with open(os.path.join(watch, "broken.png"), "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature and nothing readable
        for ignored in (".incoming.png", "d.png.part"):  # still being copied: never touched
            with open(os.path.join(watch, ignored), "wb") as fh:
                fh.write(png_bytes(9))
        assert finished.wait(timeout=60)
    finally:
        service.stop()
        worker.join(timeout=10)
        service.close()
    assert not worker.is_alive()

    # Nothing lost: every dropped input is in done/ or failed/, the partial uploads are where they were.
    assert listing(os.path.join(watch, "done")) == ["a.png", "b.png", "c.png"]
    assert listing(os.path.join(watch, "failed")) == ["broken.png", "broken.png.error.json"]
    assert listing(watch) == [".incoming.png", ".processing", "d.png.part", "done", "failed"]
    assert listing(os.path.join(watch, ".processing")) == []
    assert listing(out) == ["a.json", "a_overlay.png", "b.json", "b_overlay.png", "broken.error.json",
                            "c.json", "c_overlay.png"]  # no temporary files left behind
    for stem in "abc":
        with open(os.path.join(out, stem + ".json")) as fh:
            result = json.load(fh)
        assert result["schema"] == "lungedge.result/1"
        assert result["input"] == {"file": stem + ".png"}
        assert result["bundle"]["backend"] == "onnxruntime"
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
        assert result["label"] in ("covid", "normal", "pneumonia")
    for path in (os.path.join(watch, "failed", "broken.png.error.json"), os.path.join(out, "broken.error.json")):
        with open(path) as fh:
            error = json.load(fh)
        assert error["schema"] == "lungedge.error/1"
        assert error["error"]["type"] == "InputError"
        assert error["input"] == {"file": "broken.png"}
        assert error["archived_as"] == "failed/broken.png"
    assert (service.processed, service.failed) == (3, 1)


def test_same_name_twice_keeps_both_results(started, png_bytes):
    service = started()
    watch, out = service.config.watch, service.config.out
    for seed in (1, 2):
        with open(os.path.join(watch, "scan.png"), "wb") as fh:
            fh.write(png_bytes(seed))
        assert service.poll_once() == 1
    assert listing(os.path.join(watch, "done")) == ["scan-1.png", "scan.png"]
    assert listing(out) == ["scan-1.json", "scan-1_overlay.png", "scan.json", "scan_overlay.png"]


def test_unsettled_input_waits(tmp_path, bundle, png_bytes):
    watch, out = folders(tmp_path)
    service = svc.Service(svc.ServiceConfig(bundle=bundle, watch=watch, out=out, settle_seconds=0.3))
    service.start()
    now = [1000.0]
    service.watch.clock = lambda: now[0]  # the watch folder's settling time, without waiting for it
    try:
        with open(os.path.join(watch, "x.png"), "wb") as fh:
            fh.write(png_bytes(3))
        assert service.poll_once() == 0  # first sighting: not yet settled
        now[0] += 0.25
        assert service.poll_once() == 0  # unchanged, but not for settle_seconds yet
        with open(os.path.join(watch, "x.png"), "ab") as fh:
            fh.write(b"\0")  # still being written: the settling starts again
        now[0] += 0.1
        assert service.poll_once() == 0
        now[0] += 0.25
        assert service.poll_once() == 0
        now[0] += 0.1
        assert service.poll_once() == 1
    finally:
        service.close()


def test_input_left_by_a_crash_goes_to_failed_not_back_into_the_loop(tmp_path, bundle, png_bytes):
    watch, out = folders(tmp_path)
    os.makedirs(os.path.join(watch, ".processing"))
    with open(os.path.join(watch, ".processing", "poison.png"), "wb") as fh:
        fh.write(png_bytes(4))
    service = svc.Service(svc.ServiceConfig(bundle=bundle, watch=watch, out=out, **FAST))
    service.start()
    service.close()
    assert listing(os.path.join(watch, "failed")) == ["poison.png", "poison.png.error.json"]
    with open(os.path.join(out, "poison.error.json")) as fh:
        assert json.load(fh)["error"]["type"] == "Interrupted"


def test_unwritable_output_puts_the_input_back(started, png_bytes, monkeypatch):
    service = started()
    watch = service.config.watch
    with open(os.path.join(watch, "keep.png"), "wb") as fh:
        fh.write(png_bytes(5))

    def disk_full(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(svc.core, "write_json_atomic", disk_full)
    with pytest.raises(svc.OutputError, match="No space left"):
        service.poll_once()
    assert "keep.png" in listing(watch)  # back where it was dropped, to be tried again
    assert listing(os.path.join(watch, "done")) == listing(os.path.join(watch, ".processing")) == []


def test_logs_hash_file_names(started, png_bytes, caplog):
    service = started()
    with open(os.path.join(service.config.watch, "DOE_JOHN_1957.png"), "wb") as fh:
        fh.write(png_bytes(6))
    with open(os.path.join(service.config.watch, "DOE_JANE.png"), "wb") as fh:
        fh.write(b"garbage")
    with caplog.at_level(logging.INFO, logger="lungedge.service"):
        assert service.poll_once() == 2
    text = caplog.text
    assert "DOE_" not in text
    assert svc.input_label("DOE_JOHN_1957.png") in text and svc.input_label("DOE_JANE.png") in text


def test_real_dicom_keeps_patient_identifiers_out_of_logs_and_outputs(started, dicom_dir, caplog):
    import pydicom

    service = started()
    identifiers = set()
    for name in ("cxr_pa_cr_monochrome2.dcm", "ct_small_thorax_128.dcm"):
        header = pydicom.dcmread(os.path.join(dicom_dir, name), stop_before_pixels=True)
        identifiers |= {str(header.get(tag, "")) for tag in ("PatientName", "PatientID", "PatientBirthDate")}
        shutil.copy(os.path.join(dicom_dir, name), service.config.watch)
    identifiers.discard("")
    assert identifiers
    with caplog.at_level(logging.DEBUG, logger="lungedge"):
        assert service.poll_once() == 2
    watch, out = service.config.watch, service.config.out
    assert listing(os.path.join(watch, "done")) == ["cxr_pa_cr_monochrome2.dcm"]
    with open(os.path.join(watch, "failed", "ct_small_thorax_128.dcm.error.json")) as fh:
        assert json.load(fh)["error"]["type"] == "InputError"  # a CT slice sent to an X-ray bundle
    written = [caplog.text]
    for path in [os.path.join(out, f) for f in listing(out) if f.endswith(".json")] + \
            [os.path.join(watch, "failed", "ct_small_thorax_128.dcm.error.json")]:
        with open(path) as fh:
            written.append(fh.read())
    leaked = [i for i in identifiers if any(i in text for text in written)]
    assert not leaked


def test_refuses_to_serve_when_the_golden_outputs_do_not_match(tmp_path, png_bytes, caplog):
    spoiled = xray_classifier_bundle(tmp_path / "spoiled", golden=golden_writer(shift=0.5))  # re-hashed, so it loads
    watch, out = folders(tmp_path)
    with open(os.path.join(watch, "waiting.png"), "wb") as fh:
        fh.write(png_bytes(7))
    with caplog.at_level(logging.ERROR, logger="lungedge.service"):
        status = svc.main(["serve", "--bundle", spoiled, "--watch", watch, "--out", out, "--poll-seconds", "0.05"])
    assert status == svc.EXIT_SELFTEST
    assert "self-test" in caplog.text and "exceeds" in caplog.text
    assert listing(watch) == [".processing", "done", "failed", "waiting.png"]  # nothing was served
    assert listing(out) == []


def test_refuses_to_serve_a_bundle_without_golden_inputs(tmp_path):
    from tinymodels import classifier_model, write_bundle

    bare = write_bundle(tmp_path / "bare", classifier_model(3), "classification", "xray",
                        ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid")
    watch, out = folders(tmp_path)
    assert svc.main(["--bundle", bare, "--watch", watch, "--out", out]) == svc.EXIT_SELFTEST


def test_refuses_unusable_folders(tmp_path, bundle):
    watch = str(tmp_path / "watch")
    assert svc.main(["--bundle", bundle, "--watch", watch, "--out", str(tmp_path / "o")]) == svc.EXIT_UNUSABLE
    os.mkdir(watch)
    assert svc.main(["--bundle", bundle, "--watch", watch, "--out", os.path.join(watch, "results")]) \
        == svc.EXIT_UNUSABLE  # results inside the watch folder would be read back as inputs


def test_http_endpoint_on_loopback(started, png_bytes):
    service = started(http_port=0)
    host, port = service.http_address
    assert host == "127.0.0.1"
    base = f"http://{host}:{port}"

    def call(path, data=None, headers=None):
        request = urllib.request.Request(base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, health = call("/health")
    assert status == 200 and health["status"] == "ok" and health["selftest"][0]["passed"] is True
    status, result = call("/predict", png_bytes(8), {"Content-Type": "image/png"})
    assert status == 200 and result["schema"] == "lungedge.result/1" and result["input"] == {"file": "upload.png"}
    status, result = call("/predict?name=bed4.png", png_bytes(8))
    assert status == 200 and result["input"] == {"file": "bed4.png"}
    status, error = call("/predict", b"not an image at all", {"Content-Type": "image/png"})
    assert status == 422 and error["error"]["type"] == "InputError"
    status, error = call("/elsewhere")
    assert status == 404
    assert listing(service.config.out) == []  # HTTP answers the caller; it writes nothing to OUT


def test_upload_name_is_sanitised():
    assert svc.http._upload_name("name=../../etc/passwd", None) == "passwd"
    assert svc.http._upload_name("name=.hidden.png", "image/png") == "upload.png"
    assert svc.http._upload_name("name=a b.png", "application/dicom") == "upload.dcm"
    assert svc.http._upload_name("", "application/octet-stream") == "upload"


def test_sigterm_stops_gracefully_and_notifies_systemd(tmp_path, bundle, png_bytes):
    watch, out = folders(tmp_path)
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([sys.executable, "-m", "lungedge.runtime.service", "serve", "--bundle", bundle,
                             "--watch", watch, "--out", out, "--poll-seconds", "0.05", "--settle-seconds", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        # Written under an ignored name, then renamed: with --settle-seconds 0 the watcher could otherwise take
        # the file while it is still being written (a race on a loaded machine, not what this test checks).
        with open(os.path.join(watch, "late.png.part"), "wb") as fh:
            fh.write(png_bytes(10))
        os.rename(os.path.join(watch, "late.png.part"), os.path.join(watch, "late.png"))
        assert wait_for(lambda: listing(os.path.join(watch, "done")) == ["late.png"]), listing(watch)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == svc.EXIT_OK
        messages.append(sock.recv(4096).decode())
        assert "STOPPING=1" in messages[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        log_text = proc.communicate(timeout=30)[0].decode()
        sock.close()
    assert "self-test passed" in log_text and "stopped after 1 processed" in log_text


def test_service_and_triton_modules_are_torch_free():
    code = "import sys, lungedge.runtime.service, lungedge.runtime.triton; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_refused_input_is_reported_not_assessed(tmp_path, caplog):
    import cv2
    from tinymodels import chest_like

    bundle = xray_classifier_bundle(tmp_path / "qc", quality={"view": "frontal"})
    watch, out = folders(tmp_path)
    service = svc.Service(svc.ServiceConfig(bundle=bundle, watch=watch, out=out, **FAST))
    service.start()
    try:
        cv2.imwrite(os.path.join(watch, "film.png"), chest_like())
        cv2.imwrite(os.path.join(watch, "blank.png"), np.full((128, 128), 90, np.uint8))
        with caplog.at_level(logging.INFO, logger="lungedge"):
            assert service.poll_once() == 2
    finally:
        service.close()
    with open(os.path.join(out, "blank.json")) as fh:
        refused = json.load(fh)
    assert refused["assessed"] is False and refused["outcome"] == "not assessed" and "label" not in refused
    assert refused["quality"]["reasons"][0]["reason"] == "blank_or_constant"
    with open(os.path.join(out, "film.json")) as fh:
        assert json.load(fh)["label"] in XRAY_LABELS
    assert listing(os.path.join(watch, "done")) == ["blank.png", "film.png"]  # an outcome, not a failure
    assert (service.processed, service.failed, service.not_assessed) == (2, 0, 1)
    assert any("not assessed (pixel standard deviation 0 below 0.02" in r.getMessage() for r in caplog.records)
