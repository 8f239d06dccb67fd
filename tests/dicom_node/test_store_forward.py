"""The durable store and the forwarder on their own: resends kept once, inbox files without a row recovered,
back-off while unreachable without giving up, dead-letter after N refusals, config checks."""

import json
import os

import pytest
from peers import free_port, wait_for

from lungedge.runtime.dicom_node.config import Destination, NodeConfig
from lungedge.runtime.dicom_node.forward import Forwarder, backoff
from lungedge.runtime.dicom_node.store import NodeStore


def test_a_resent_instance_is_kept_once_and_completion_queues_results_per_destination(tmp_path):
    store = NodeStore(str(tmp_path / "state"))
    assert store.receive("1.2.3.4", "1.2.3", "xray", b"DICM-bytes") is True
    assert store.receive("1.2.3.4", "1.2.3", "xray", b"DICM-bytes") is False
    assert store.next_xray()[0] == "1.2.3.4"
    store.complete(["1.2.3.4"], "results/x", ["x/seg.dcm", "x/sr.dcm"], ["PACS@h:1", "CART@h:2"])
    store.complete(["1.2.3.4"], "results/x", ["x/seg.dcm", "x/sr.dcm"], ["PACS@h:1", "CART@h:2"])  # no effect
    assert [path for _, path in store.due()["PACS@h:1"]] == ["x/sr.dcm", "x/seg.dcm"]  # SRs go first
    assert store.next_xray() is None
    assert store.counts()["pending"] == 4 and store.instances() == [("1.2.3.4", "done", 1, "results/x")]
    with pytest.raises(ValueError):
        store.receive("1.2.3/../../etc", "1", "xray", b"x")  # a UID becomes a file name only if it is a UID
    store.close()


def test_an_inbox_file_without_a_row_is_registered_at_start(tmp_path):
    store = NodeStore(str(tmp_path / "state"))
    with open(os.path.join(store.inbox, "9.8.7.dcm"), "wb") as fh:
        fh.write(b"x")
    with open(os.path.join(store.inbox, ".9.8.7.dcm.abc.tmp"), "wb") as fh:  # a write the kill interrupted
        fh.write(b"x")
    store.close()
    store = NodeStore(str(tmp_path / "state"))
    assert os.listdir(store.inbox) == ["9.8.7.dcm"]
    assert store.recover(lambda path: ("9.8.7", "9.8", "ct")) == 1
    assert store.recover(lambda path: ("9.8.7", "9.8", "ct")) == 0
    assert store.settled_series(0.0) == ["9.8"] and store.settled_series(3600.0) == []
    store.close()


def test_backoff_doubles_up_to_its_cap():
    delay = backoff(2.0, 10.0)
    assert [delay(n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def _config(tmp_path, destination, **extra):
    return NodeConfig(state=str(tmp_path / "state"), xray_bundle="unused", allowed_callers=("CART",),
                      destinations=(destination,), retry_base_seconds=0.05, retry_max_seconds=0.1, **extra)


def _result_file(tmp_path, dev_cr):
    from dicom_samples import cr_instance

    return cr_instance(dev_cr, tmp_path / "result.dcm", small=True)


def test_an_unreachable_destination_only_postpones(tmp_path, dev_cr):
    dest = Destination("PACS", "127.0.0.1", free_port())  # nothing listens there
    config = _config(tmp_path, dest, max_rejections=1)
    store = NodeStore(config.state)
    store.complete([], "r", [_result_file(tmp_path, dev_cr)], [dest.name])
    forwarder = Forwarder(config, store)
    for _ in range(3):
        wait_for(lambda: store.due(), timeout=5, what="the next try")
        assert forwarder.run_once() == 0
    row = store._run("SELECT state, attempts, rejections FROM outbox")[0]
    assert row == ("pending", 3, 0) and os.listdir(store.dead) == []
    store.close()


def test_a_destination_that_refuses_sends_the_result_to_dead_letter_after_n_refusals(tmp_path, dev_cr):
    from pynetdicom import AE, evt

    scp = AE(ae_title="PACS")
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.1", ["1.2.840.10008.1.2.1"])
    refused = []

    def refuse(event):
        refused.append(1)
        return 0xA700  # out of resources

    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    try:
        dest = Destination("PACS", "127.0.0.1", server.server_address[1])
        config = _config(tmp_path, dest, max_rejections=2)
        store = NodeStore(config.state)
        store.complete([], "r", [_result_file(tmp_path, dev_cr)], [dest.name])
        forwarder = Forwarder(config, store)

        def dead_after_a_round():
            forwarder.run_once()
            return store.counts()["dead"]
        wait_for(dead_after_a_round, timeout=20, what="the refused result to be moved to dead/")
        assert len(refused) == 2 and store.counts()["dead"] == 1
        folder = os.path.join(store.dead, "PACS")
        errors = [n for n in os.listdir(folder) if n.endswith(".error.json")]
        assert len(errors) == 1 and len(os.listdir(folder)) == 2
        with open(os.path.join(folder, errors[0])) as fh:
            assert json.load(fh)["error"]["message"] == "status 0xA700"
        store.close()
    finally:
        server.shutdown()


@pytest.mark.parametrize("bad, message", [
    ({"allowed_callers": ()}, "allowed_callers is empty"),
    ({"ae_title": "A\\B"}, "not a DICOM AE title"),
    ({"destinations": ("PACS-no-port",)}, "AET@host:port"),
    ({"tls_cert": "cert.pem"}, "both tls_cert and tls_key"),
    ({"xray_bundle": None}, "at least one bundle"),
])
def test_config_refuses_bad_values(tmp_path, bad, message):
    values = dict(state=str(tmp_path), xray_bundle="b", allowed_callers=("CART",))
    values.update(bad)
    with pytest.raises(ValueError, match=message):
        NodeConfig(**values)
    with pytest.raises(ValueError, match="unknown NodeConfig keys"):
        NodeConfig.from_dict({"state": "s", "xray_bundle": "b", "allowed_callers": ["CART"], "prot": 1})
