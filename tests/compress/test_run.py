"""Staging: a bundle folder appears only when the build finishes; a failed build leaves nothing behind."""

import os

import pytest

from lungedge.compress.errors import CompressError
from lungedge.compress.run import Staging


def test_staging_publishes_only_a_finished_build(tmp_path):
    out = tmp_path / "bundle"
    staging = Staging(str(out), prefix="lungedge-test-")
    with staging:
        assert os.path.isdir(staging.dir) and os.path.isdir(staging.work) and not out.exists()
        (tmp_path / "bundle.partial" / "manifest.json").write_text("{}")
    assert not os.path.exists(staging.work)
    assert staging.publish() == str(out) and (out / "manifest.json").is_file()
    assert not (tmp_path / "bundle.partial").exists()
    with pytest.raises(CompressError, match="exists"):
        Staging(str(out))
    again = Staging(str(out), overwrite=True)
    with again:
        (tmp_path / "bundle.partial" / "other.txt").write_text("x")
    again.publish()
    assert sorted(os.listdir(out)) == ["other.txt"]


def test_a_failed_build_leaves_no_partial_folder(tmp_path):
    staging = Staging(str(tmp_path / "bundle"))
    with pytest.raises(RuntimeError), staging:
        (tmp_path / "bundle.partial" / "half.onnx").write_text("x")
        raise RuntimeError("stage failed")
    assert not (tmp_path / "bundle.partial").exists() and not os.path.exists(staging.work)
    assert not (tmp_path / "bundle").exists()
