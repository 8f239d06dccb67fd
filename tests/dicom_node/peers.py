"""Third-party peers for the node's tests, each started on 127.0.0.1: Orthanc (the PACS), DCMTK, dciodvfy."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

DEV_CR = "cxr_pa_cr_monochrome2.dcm"
DEV_CT = "ct_small_thorax_128.dcm"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SOP_NAMES = {"1.2.840.10008.5.1.4.1.1.88.34": "SR", "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
             "1.2.840.10008.5.1.4.1.1.7": "SC"}


def require_tool(name):
    """Path of a Debian tool; skip without it, but fail under CI=true (``make tools`` installs it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed under CI=true; `make tools` installs it (apt)")
        pytest.skip(f"{name} not installed (`make tools` installs dcmtk, orthanc and dicom3tools)")
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def dciodvfy_errors(path):
    """The error lines dciodvfy reports for a DICOM file (warnings are not errors)."""
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


class Orthanc:
    """An Orthanc server in a temporary folder, DICOM and HTTP on free 127.0.0.1 ports."""

    def __init__(self, folder, ae_title="ORTHANC", dicom_port=None):
        self.folder, self.ae_title = str(folder), ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.proc = None

    @property
    def destination(self):
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def start(self):
        exe = require_tool("Orthanc")
        os.makedirs(self.folder, exist_ok=True)
        config = {"Name": "lungedge-test", "StorageDirectory": os.path.join(self.folder, "db"),
                  "IndexDirectory": os.path.join(self.folder, "db"), "DicomAet": self.ae_title,
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                  "HttpServerEnabled": True, "Plugins": [], "StorageCompression": False}
        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w") as fh:
            json.dump(config, fh)
        log = open(os.path.join(self.folder, "orthanc.log"), "ab")
        self.proc = subprocess.Popen([exe, path], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=60, what="Orthanc to start")
        return self

    def _up(self):
        if self.proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {self.proc.returncode}; see {self.folder}/orthanc.log")
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def post(self, path, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def study_instances(self, study_uid):
        """[(kind "SR" | "SEG" | "SC" | SOP class UID, SOPInstanceUID, SeriesInstanceUID)] in one study."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                          "Expand": True})
        out = []
        for inst in found:
            sop_class = self.get(f"/instances/{inst['ID']}/metadata?expand").get("SopClassUid", "")
            series = self.get(f"/series/{inst['ParentSeries']}")["MainDicomTags"]["SeriesInstanceUID"]
            out.append((SOP_NAMES.get(sop_class, sop_class), inst["MainDicomTags"]["SOPInstanceUID"], series))
        return out

    def count(self):
        return len(self.get("/instances"))

    def file(self, sop_uid):
        ids = self.post("/tools/lookup", sop_uid)
        return urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/instances/{ids[0]['ID']}/file",
                                      timeout=10).read()
