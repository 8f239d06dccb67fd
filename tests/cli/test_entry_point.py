"""The ``lungedge`` entry point (lungedge.cli.main): --version, usage, lazy external subcommands and their extras.

Torch-free: it also runs under the Jetson Pythons (tools/test_runtime_pythons.sh).
"""

import sys

import pytest

from lungedge.cli import main as cli


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lungedge ")


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2


def test_external_commands_table():
    assert cli.EXTERNAL_COMMANDS == {"train": "lungedge.models.train", "compress": "lungedge.compress.cli",
                                     "engine": "lungedge.compress.cli", "export": "lungedge.compress.cli",
                                     "bench": "lungedge.benchmarks.cli", "demo": "lungedge.cli.demo",
                                     "serve": "lungedge.runtime.service",
                                     "dicom-node": "lungedge.runtime.dicom_node.cli"}


@pytest.fixture
def fake_external(tmp_path, monkeypatch):
    """Point EXTERNAL_COMMANDS at throwaway modules in tmp_path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(command, body):
        name = f"lungedge_fake_{command}"
        (tmp_path / f"{name}.py").write_text(body)
        monkeypatch.setitem(cli.EXTERNAL_COMMANDS, command, name)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name
    return make


def test_external_command_gets_full_argv(fake_external):
    fake_external("train", "def main(argv):\n    print('argv', argv)\n    return 7\n")
    assert cli.main(["train", "--recipe", "r.json"]) == 7


def test_external_command_without_torch(fake_external, monkeypatch, capsys):
    fake_external("train", "import torch\n\ndef main(argv):\n    return 0\n")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails as if it were not installed
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "lungedge train needs the compress extra: pip install 'lungedge[compress]'" in err


def test_dicom_node_without_its_extra(fake_external, monkeypatch, capsys):
    fake_external("dicom-node", "import pynetdicom\n\ndef main(argv):\n    return 0\n")
    monkeypatch.setitem(sys.modules, "pynetdicom", None)
    assert cli.main(["dicom-node"]) == 2
    assert "lungedge dicom-node needs the dicom-node extra: pip install 'lungedge[dicom-node]'" in \
        capsys.readouterr().err


def test_external_module_absent(monkeypatch, capsys):
    monkeypatch.setitem(cli.EXTERNAL_COMMANDS, "demo", "lungedge.cli.no_such_module")
    assert cli.main(["demo"]) == 2
    assert "not part of this installation" in capsys.readouterr().err


def test_torch_free_subcommands_dispatch(capsys):
    """`export triton` and `serve` route to runtime modules (no torch needed)."""

    for argv, word in ((["export", "triton", "--help"], "triton"), (["serve", "--help"], "watch")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        assert word in capsys.readouterr().out.lower()
