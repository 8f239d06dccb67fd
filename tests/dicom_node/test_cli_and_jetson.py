"""``lungedge dicom-node`` wiring, the Jetson unit and example config for the node, and the container recipe."""

import os
import shutil
import subprocess
import sys

import pytest

from lungedge.runtime.dicom_node.cli import main
from lungedge.runtime.dicom_node.config import NodeConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JETSON = os.path.join(REPO, "jetson")


def test_the_example_config_is_a_valid_node_config():
    config = NodeConfig.from_file(os.path.join(JETSON, "dicom-node.json"))
    assert config.allowed_callers and config.destinations and config.port == 11112
    assert [d.ae_title for d in config.destinations] == ["PACS", "XRAYCART1"]


def test_cli_refuses_a_bad_config_with_status_2(tmp_path, caplog):
    assert main(["dicom-node", "--state", str(tmp_path), "--xray-bundle", "b"]) == 2  # no --allow
    assert "allowed_callers is empty" in caplog.text
    assert main(["dicom-node", "--state", str(tmp_path), "--xray-bundle", str(tmp_path / "missing"),
                 "--allow", "CART", "--port", "0"]) == 2  # the bundle is not there
    assert "cannot start" in caplog.text


def test_a_bundle_failing_its_golden_self_test_stops_the_node_with_status_3(tmp_path, caplog):
    from tinymodels import classifier_model, golden_writer, write_bundle

    spoiled = write_bundle(tmp_path / "spoiled", classifier_model(3), "classification", "xray",
                           ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                           golden=golden_writer(shift=1.0))
    assert main(["dicom-node", "--state", str(tmp_path / "state"), "--xray-bundle", spoiled, "--allow", "CART",
                 "--host", "127.0.0.1", "--port", "0"]) == 3
    assert "refusing to serve" in caplog.text


def test_lungedge_dicom_node_help_runs_through_the_main_cli():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", "import sys; from lungedge.cli.main import main; "
                           "sys.exit(main())", "dicom-node", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and "--allow" in proc.stdout and "--destination" in proc.stdout


def test_node_unit_runs_the_node_module_and_verifies(tmp_path):
    with open(os.path.join(JETSON, "lungedge-dicom-node.service")) as fh:
        text = fh.read()
    assert "ExecStart=/opt/lungedge/venv/bin/python -m lungedge.runtime.dicom_node.cli --config " in text
    assert "Type=notify" in text and "RestartPreventExitStatus=2 3" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (the key checks above still ran)")
    unit = tmp_path / "lungedge-dicom-node.service"
    unit.write_text(text.replace("/opt/lungedge/venv/bin/python", sys.executable))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_container_installs_the_node_extra_and_documents_running_it():
    with open(os.path.join(JETSON, "Dockerfile")) as fh:
        text = fh.read()
    for package in ("pynetdicom", "highdicom", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"):
        assert package in text
    assert "-m lungedge.runtime.dicom_node.cli --config" in text and "EXPOSE 11112" in text
