"""lungedge bench throughput: the shipped CLI, batched runtime workers and the bedside service over real images."""

import os
import sys

import pytest

from lungedge.benchmarks import throughput as T

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
from tinymodels import classifier_model, golden_writer, write_bundle  # noqa: E402


@pytest.fixture
def bundle(tmp_path):
    return write_bundle(tmp_path / "xray-cls", classifier_model(3), "classification", "xray",
                        ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                        golden=golden_writer())


def test_files_and_shares(xray_cls_dir):
    files = T.image_files(xray_cls_dir, 5)
    assert len(files) == 5 and all(os.path.isfile(f) for f in files)
    parts = T.shares(list(range(7)), 2)
    assert parts == [[0, 2, 4, 6], [1, 3, 5]]


def _check(results, expected):
    got = [(p["mode"], p["batch"], p["workers"]) for p in results["points"]]
    assert got == expected
    for p in results["points"]:
        assert "error" not in p, p
        # cpu_s >= 0, not > 0: the service mode reads /proc ticks (10 ms), and 4 images on a warm service on a fast,
        # idle CPU can take less than one tick.
        assert p["images_per_s"] > 0 and p["cpu_s"] >= 0 and p["cpu_s_per_1000"] == pytest.approx(
            1000 * p["cpu_s"] / p["images"])


def test_every_mode_once(bundle, xray_cls_dir, tmp_path):
    out = str(tmp_path / "out")
    results = T.run_throughput(bundle, xray_cls_dir, images=4, batches=(2,), workers=(1,), threads=1, out=out,
                               progress=False, repeats=1)
    _check(results, [("infer", 1, 1), ("batch", 2, 1), ("service", 1, 1)])
    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "CPU s / 1000 images" in text and "lungedge bench throughput" in text
    assert results["environment"]["cpu_model"]


def test_failures_are_reported_not_hidden(tmp_path, xray_cls_dir, bundle):
    broken = str(tmp_path / "not-a-bundle")
    os.makedirs(broken)
    with pytest.raises(Exception, match="not a bundle"):
        T.run_throughput(broken, xray_cls_dir, images=2, modes=("batch",), progress=False, repeats=1)


@pytest.mark.slow
def test_two_workers(bundle, xray_cls_dir):
    results = T.run_throughput(bundle, xray_cls_dir, images=8, batches=(1, 4), workers=(1, 2), threads=1,
                               progress=False, repeats=2)
    assert all(p["runs"] == 2 and len(p["wall_s_all"]) == 2 for p in results["points"])
    _check(results, [("infer", 1, 1), ("infer", 1, 2), ("batch", 1, 1), ("batch", 4, 1), ("batch", 1, 2),
                     ("batch", 4, 2), ("service", 1, 1), ("service", 1, 2)])
