"""The node against real peers on 127.0.0.1: DCMTK's echoscu/storescu as the cart, Orthanc as the PACS, and the
faults of the issue: refused callers, unsupported SOP class and transfer syntax, corrupt data, an association
aborted mid-transfer, eight senders at once, and a PACS that is down and comes back."""

import glob
import logging
import os
import socket
import subprocess
import threading

import numpy as np
import pydicom
import pytest
from dicom_samples import cr_instance, ct_series, new_uid
from peers import Orthanc, dciodvfy_errors, free_port, require_tool, wait_for

from lungedge.runtime.dicom_node.config import NodeConfig
from lungedge.runtime.dicom_node.node import DicomNode

CART = "CART"
NODE = "LUNGEDGE"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def start_node(tmp_path, bundles):
    """Callable(**config) starting a node on a free port with the tiny bundles; stopped after the test."""
    nodes = []

    def start(**extra):
        values = dict(state=str(tmp_path / "state"), xray_bundle=bundles["xray"],
                      xray_lung_bundle=bundles["xray_lung"], ct_bundle=bundles["ct"],
                      ct_lesion_bundle=bundles["ct_lesion"], host="127.0.0.1", port=0, allowed_callers=(CART,),
                      ct_settle_seconds=0.5, retry_base_seconds=0.2, retry_max_seconds=1.0, poll_seconds=0.05)
        values.update(extra)
        node = DicomNode(NodeConfig(**values))
        node.start()
        nodes.append(node)
        return node
    yield start
    for node in nodes:
        node.stop()


def storescu(node, *files, aet=CART, extra=()):
    exe = require_tool("storescu")
    host, port = node.address
    return subprocess.run([exe, "-aet", aet, "-aec", NODE, *extra, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def done(node, count):
    return lambda: node.store.counts()["done"] >= count


def kinds(orthanc, study_uid):
    return sorted(kind for kind, _, _ in orthanc.study_instances(study_uid))


def test_echo_then_store_the_dev_pack_cr_and_find_sr_seg_sc_in_its_study_at_orthanc(
        tmp_path, start_node, orthanc, dev_cr, caplog):
    caplog.set_level(logging.DEBUG)
    node = start_node(destinations=(orthanc.destination,))
    host, port = node.address
    echo = subprocess.run([require_tool("echoscu"), "-aet", CART, "-aec", NODE, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    path = cr_instance(dev_cr, tmp_path / "cr.dcm")  # the 1024x1024 JPEG baseline file as it ships
    source = pydicom.dcmread(path)
    sent = storescu(node, path, extra=("-xy",))  # propose JPEG baseline
    assert sent.returncode == 0, sent.stderr
    study = str(source.StudyInstanceUID)
    wait_for(lambda: kinds(orthanc, study) == ["SC", "SEG", "SR"], timeout=60, what="SR, SEG and SC at Orthanc")
    series = {s for _, _, s in orthanc.study_instances(study)}
    assert len(series) == 1 and source.SeriesInstanceUID not in series  # one new series in the source's study

    # What Orthanc holds validates, and the SEG there equals the mask the node predicted.
    result_dir = node.store.instances()[0][3]
    for kind, sop_uid, _ in orthanc.study_instances(study):
        file = tmp_path / f"from-orthanc-{kind}.dcm"
        file.write_bytes(orthanc.file(sop_uid))
        assert dciodvfy_errors(file) == [], kind
        if kind == "SEG":
            from lungedge.runtime.pipelines import XrayPipeline
            from lungedge.runtime.predictor import Predictor

            pipe = XrayPipeline(Predictor.from_bundle(node.config.xray_bundle),
                                Predictor.from_bundle(node.config.xray_lung_bundle))
            expected = pipe.predict(path)["mask"] > 0
            np.testing.assert_array_equal(pydicom.dcmread(file).pixel_array > 0, expected)
    assert os.path.isfile(os.path.join(result_dir, "result.json"))
    assert str(source.PatientID) not in caplog.text and str(source.PatientName) not in caplog.text
    with open(os.path.join(result_dir, "result.json")) as fh:
        assert str(source.PatientID) not in fh.read()


def test_ct_series_is_assembled_and_its_sr_reaches_orthanc(tmp_path, start_node, orthanc, dev_ct):
    node = start_node(destinations=(orthanc.destination,))
    study = new_uid()
    folder = ct_series(dev_ct, tmp_path / "series", count=5, study_uid=study)
    sent = storescu(node, "+sd", folder)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: kinds(orthanc, study) == ["SC", "SEG", "SR"], timeout=60, what="CT results at Orthanc")
    rows = node.store.instances()
    assert len(rows) == 5 and {r[1] for r in rows} == {"done"} and len({r[3] for r in rows}) == 1  # one study


def test_calling_ae_title_not_allowed_is_refused_and_logged_without_patient_data(start_node, caplog, tmp_path,
                                                                                 dev_cr):
    caplog.set_level(logging.INFO)
    node = start_node()
    host, port = node.address
    echo = subprocess.run([require_tool("echoscu"), "-aet", "INTRUDER", "-aec", NODE, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode != 0
    assert "Rejected" in echo.stderr or "rejected" in echo.stderr.lower()
    sent = storescu(node, cr_instance(dev_cr, tmp_path / "cr.dcm", small=True), aet="INTRUDER")
    assert sent.returncode != 0
    wait_for(lambda: "refused an association from INTRUDER" in caplog.text, timeout=10, what="the refusal log")
    assert node.store.counts()["received"] == 0 and node.store.counts()["done"] == 0


def _associate(node, contexts, max_pdu=None):
    from pynetdicom import AE

    ae = AE(ae_title=CART)
    for uid, syntaxes in contexts:
        ae.add_requested_context(uid, syntaxes)
    if max_pdu:
        ae.maximum_pdu_size = max_pdu
    host, port = node.address
    return ae, ae.associate("127.0.0.1", port, ae_title=NODE)


def test_unsupported_sop_class_and_transfer_syntax_are_refused_at_association(start_node):
    from pydicom.uid import ExplicitVRLittleEndian

    node = start_node()
    mr, cr = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1"
    mpeg2 = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder, never accepted
    ae, assoc = _associate(node, [(mr, [ExplicitVRLittleEndian]), (cr, [mpeg2]), (cr, [ExplicitVRLittleEndian])])
    try:
        assert assoc.is_established
        results = {(cx.abstract_syntax, tuple(cx.transfer_syntax)): cx.result for cx in assoc.rejected_contexts}
        assert results[(mr, (ExplicitVRLittleEndian,))] == 0x03  # abstract syntax not supported
        assert results[(cr, (mpeg2,))] == 0x04  # transfer syntaxes not supported
        accepted = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
        assert accepted == [(cr, ExplicitVRLittleEndian)]
    finally:
        assoc.release()
        ae.shutdown()


def test_accepted_transfer_syntaxes_follow_the_installed_decoders():
    from lungedge.runtime.dicom_node.scp import COMPRESSED, decodable_syntaxes
    from lungedge.runtime.io.dicom import _decoder_available

    accepted = decodable_syntaxes()
    assert accepted[:2] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    assert [u for u in COMPRESSED if u in accepted] == [u for u in COMPRESSED if _decoder_available(u)]
    # the dicom-node extra brings decoders for every syntax the issue lists
    assert set(COMPRESSED) <= set(accepted)


def test_corrupt_dataset_gets_a_failure_status_and_a_typed_error_file(tmp_path, start_node, dev_cr):
    node = start_node()
    ds = pydicom.dcmread(cr_instance(dev_cr, tmp_path / "cr.dcm", small=True))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixel data
    ae, assoc = _associate(node, [(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])])
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
        ae.shutdown()
    assert status.Status == 0xC210
    errors = glob.glob(str(tmp_path / "state" / "failed" / "*.error.json"))
    assert len(errors) == 1
    import json

    with open(errors[0]) as fh:
        error = json.load(fh)
    assert error["error"]["type"] == "CorruptDataset" and error["status"] == "0xC210"
    assert node.store.counts()["received"] == 0 and os.listdir(node.store.inbox) == []


def test_association_aborted_mid_transfer_acknowledges_nothing_and_the_node_keeps_serving(tmp_path, start_node,
                                                                                           dev_cr):
    from pynetdicom import evt

    node = start_node(max_pdu=4096)  # the 1 MB image then takes about 256 P-DATA PDUs
    ds = pydicom.dcmread(cr_instance(dev_cr, tmp_path / "cr.dcm", uncompressed=True))
    pdus, aborted = [], threading.Event()
    a_abort = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT PDU, source: service user

    def abort_after_five(event):
        """Runs in the sender's network thread: the fifth data PDU is followed by an A-ABORT and a dead socket."""
        if type(event.pdu).__name__ == "P_DATA_TF" and not aborted.is_set():
            pdus.append(1)
            if len(pdus) == 5:
                raw = event.assoc.dul.socket.socket
                raw.sendall(a_abort)
                raw.shutdown(socket.SHUT_RDWR)
                aborted.set()

    from pynetdicom import AE

    ae = AE(ae_title=CART)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title=NODE,
                         evt_handlers=[(evt.EVT_PDU_SENT, abort_after_five)])
    assert assoc.is_established
    sender = threading.Thread(target=lambda: assoc.send_c_store(ds), daemon=True)
    sender.start()
    assert aborted.wait(30)
    sender.join(30)
    ae.shutdown()
    assert len(pdus) == 5
    # nothing half-received is kept or queued; the next sender is served normally
    assert node.store.counts()["received"] == node.store.counts()["done"] == 0
    assert [n for n in os.listdir(node.store.inbox)] == []
    sent = storescu(node, cr_instance(dev_cr, tmp_path / "cr2.dcm", small=True))
    assert sent.returncode == 0, sent.stderr
    wait_for(done(node, 1), timeout=30, what="the next instance to be processed")


def test_eight_concurrent_senders_lose_nothing_and_process_each_instance_once(tmp_path, start_node, orthanc,
                                                                               dev_cr):
    node = start_node(destinations=(orthanc.destination,))
    study = new_uid()
    files = [[cr_instance(dev_cr, tmp_path / f"s{s}-{i}.dcm", small=True, study_uid=study) for i in range(2)]
             for s in range(8)]
    results = [None] * 8

    def send(index):
        results[index] = storescu(node, *files[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.returncode == 0 for r in results), [r.stderr for r in results if r]
    wait_for(lambda: kinds(orthanc, study).count("SR") == 16, timeout=120, what="16 SRs at Orthanc")
    rows = node.store.instances()
    assert len(rows) == 16 and all(state == "done" and processed == 1 for _, state, processed, _ in rows)
    assert len({r[3] for r in rows}) == 16
    assert node.store.counts()["dead"] == 0 and os.listdir(node.store.inbox) == []  # processed inputs released


def test_results_wait_while_the_pacs_is_down_and_go_out_when_it_returns(tmp_path, start_node, dev_cr):
    pacs = Orthanc(tmp_path / "late-pacs", dicom_port=free_port())
    node = start_node(destinations=(pacs.destination,))
    study = new_uid()
    sent = storescu(node, cr_instance(dev_cr, tmp_path / "cr.dcm", small=True, study_uid=study))
    assert sent.returncode == 0, sent.stderr
    wait_for(done(node, 1), timeout=30, what="processing")
    attempts = lambda: node.store._run("SELECT MIN(attempts) FROM outbox")[0][0] or 0  # noqa: E731
    wait_for(lambda: attempts() >= 2, timeout=30, what="two failed delivery attempts")
    assert node.store.counts()["pending"] == 3 and node.store.counts()["dead"] == 0
    try:
        pacs.start()
        wait_for(lambda: kinds(pacs, study) == ["SC", "SEG", "SR"], timeout=60, what="the results at the PACS")
    finally:
        pacs.stop()
    assert node.store.counts()["sent"] == 3 and os.listdir(node.store.dead) == []


def test_tls_only_a_tls_peer_gets_in(tmp_path, start_node):
    import ssl

    from pynetdicom import AE

    openssl = require_tool("openssl")
    cert, key = str(tmp_path / "node.crt"), str(tmp_path / "node.key")
    made = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    node = start_node(tls_cert=cert, tls_key=key)
    port = node.address[1]
    plain = subprocess.run([require_tool("echoscu"), "-to", "5", "-aet", CART, "-aec", NODE, "127.0.0.1", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0  # no TLS, no association
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    ae = AE(ae_title=CART)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE, tls_args=(context, "127.0.0.1"))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()


def _compress(tool, args, src, dst):
    proc = subprocess.run([require_tool(tool), *args, str(src), str(dst)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _j2k(src, dst):
    ds = pydicom.dcmread(src)
    ds.compress("1.2.840.10008.1.2.4.90")  # JPEG 2000 lossless, encoded by pylibjpeg-openjpeg
    ds.save_as(str(dst), enforce_file_format=True)


@pytest.mark.parametrize("name, syntax, make, propose", [
    ("rle", "1.2.840.10008.1.2.5", lambda s, d: _compress("dcmcrle", [], s, d), "-xr"),
    ("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", lambda s, d: _compress("dcmcjpeg", ["+e1"], s, d), "-xs"),
    ("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", lambda s, d: _compress("dcmcjpls", ["+el"], s, d), "-xt"),
    ("jpeg2000-lossless", "1.2.840.10008.1.2.4.90", _j2k, "-xv"),
])
def test_compressed_transfer_syntaxes_from_storescu_decode_to_the_same_result(tmp_path, start_node, dev_cr, name,
                                                                                syntax, make, propose):
    import json

    from lungedge.runtime.pipelines import XrayPipeline
    from lungedge.runtime.predictor import Predictor

    plain = cr_instance(dev_cr, tmp_path / "plain.dcm", small=True)
    packed = tmp_path / f"{name}.dcm"
    make(plain, packed)
    assert str(pydicom.dcmread(packed).file_meta.TransferSyntaxUID) == syntax
    node = start_node()
    sent = storescu(node, packed, extra=(propose,))
    assert sent.returncode == 0, sent.stderr
    wait_for(done(node, 1), timeout=30, what="the compressed instance to be processed")
    with open(os.path.join(node.store.instances()[0][3], "result.json")) as fh:
        got = json.load(fh)
    pipe = XrayPipeline(Predictor.from_bundle(node.config.xray_bundle),
                        Predictor.from_bundle(node.config.xray_lung_bundle))
    expected = pipe.predict(plain)
    assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)  # lossless: same pixels
    assert got["lung"]["areas"]["lung"]["pixels"] == expected["lung"]["areas"]["lung"]["pixels"]


def test_an_unusable_instance_fails_with_a_typed_error_file_and_the_queue_moves_on(tmp_path, start_node, dev_cr,
                                                                                   caplog):
    import json

    node = start_node()
    tiny = pydicom.dcmread(cr_instance(dev_cr, tmp_path / "tiny.dcm", small=True))
    tiny.Rows = tiny.Columns = 8  # too small to diagnose: the reader refuses it (InputError)
    tiny.PixelData = bytes(64)
    tiny.save_as(str(tmp_path / "tiny.dcm"), enforce_file_format=True)
    mismatched = pydicom.dcmread(cr_instance(dev_cr, tmp_path / "mr.dcm", small=True))
    mismatched.Modality = "MR"  # CR Image Storage holding an MR: refused on receipt
    mismatched.save_as(str(tmp_path / "mr.dcm"), enforce_file_format=True)
    good = cr_instance(dev_cr, tmp_path / "good.dcm", small=True)
    storescu(node, tmp_path / "tiny.dcm", tmp_path / "mr.dcm", good, extra=("--no-halt",))  # past the refusal
    wait_for(lambda: node.store.counts()["done"] == 1 and node.store.counts()["failed"] == 1, timeout=30,
             what="one failed and one processed instance")
    failed = os.path.join(node.store.failed, str(tiny.SOPInstanceUID) + ".dcm")
    assert os.path.isfile(failed)
    with open(failed + ".error.json") as fh:
        assert json.load(fh)["error"]["type"] == "InputError"
    refused = [n for n in os.listdir(node.store.failed) if n.startswith("received-") and n.endswith(".error.json")]
    assert len(refused) == 1
    with open(os.path.join(node.store.failed, refused[0])) as fh:
        assert json.load(fh)["status"] == "0xA900"


def test_results_go_to_every_destination_the_pacs_and_back_to_the_cart(tmp_path, start_node, orthanc, dev_cr):
    """A second destination: DCMTK's storescp standing in for the cart's own storage SCP."""
    received = tmp_path / "cart-inbox"
    received.mkdir()
    port = free_port()
    cart = subprocess.Popen([require_tool("storescp"), "-aet", "CARTSCP", "-od", str(received), "--fork",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        node = start_node(destinations=(orthanc.destination, f"CARTSCP@127.0.0.1:{port}"))
        study = new_uid()
        sent = storescu(node, cr_instance(dev_cr, tmp_path / "cr.dcm", small=True, study_uid=study))
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: kinds(orthanc, study) == ["SC", "SEG", "SR"], timeout=60, what="the results at Orthanc")
        wait_for(lambda: len(os.listdir(received)) == 3, timeout=60, what="the results at the cart")
        wait_for(lambda: node.store.counts()["sent"] == 6, timeout=30, what="six deliveries recorded")
    finally:
        cart.terminate()
        cart.wait(10)
    at_cart = sorted(pydicom.dcmread(str(received / n)).SOPInstanceUID for n in os.listdir(received))
    assert at_cart == sorted(uid for _, uid, _ in orthanc.study_instances(study))
