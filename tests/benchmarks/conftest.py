"""Tiny torch runs and bundles (baseline FP32, variant FP32 + INT8) built once per session for the bench tests."""

import os

import pytest
from helpers_bench import FAST, make_run, make_variant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("LUNGEDGE_DATA", os.path.join(ROOT, "..", "shared", "data"))


def _data(name):
    path = os.path.join(DATA, name)
    if not os.path.isfile(os.path.join(path, "manifest.csv")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev pack folder {path} is missing under CI=true")
        pytest.skip(f"dev pack folder {path} not present")
    return path


@pytest.fixture(scope="session")
def cls_setup(tmp_path_factory):
    pytest.importorskip("torch")
    from lungedge.compress.pipeline import export_baseline

    data = _data("xray-cls")
    root = tmp_path_factory.mktemp("cls")
    run = make_run(str(root / "run"), "xray-cls", "student_s", 48, data)
    base = export_baseline(run, str(root / "baseline"), data_dir=data, overwrite=True)
    var = make_variant(base, str(root / "variant"), data, gate={"auc_drop": 0.05, "sensitivity_drop": 0.1,
                                                               "threshold_rule": "youden"})
    return {"data": data, "run": run, "baseline": base, "variant": var, "root": root}


@pytest.fixture(scope="session")
def seg_setup(tmp_path_factory):
    pytest.importorskip("torch")
    from lungedge.compress.pipeline import export_baseline

    data = _data("xray-seg")
    root = tmp_path_factory.mktemp("seg")
    run = make_run(str(root / "run"), "xray-seg", "unet_student", 48, data)
    base = export_baseline(run, str(root / "baseline"), data_dir=data, overwrite=True)
    var = make_variant(base, str(root / "variant"), data)
    return {"data": data, "run": run, "baseline": base, "variant": var, "root": root}




@pytest.fixture(scope="session")
def fast_options():
    return dict(FAST)



@pytest.fixture(scope="session")
def cls_results(cls_setup, tmp_path_factory, fast_options):
    """A full bench run (torch reference, baseline ONNX, variant FP32 + INT8) over 4 test images per label."""
    from lungedge.benchmarks.bench import run_bench

    out = str(tmp_path_factory.mktemp("cls-out"))
    results = run_bench(baseline=cls_setup["baseline"], variants=[cls_setup["variant"]], data=cls_setup["data"],
                        torch_run=cls_setup["run"], out=out, progress=False, max_images=4, **fast_options)
    return results, out


@pytest.fixture(scope="session")
def seg_results(seg_setup, tmp_path_factory, fast_options):
    """A bench run of the segmentation pair (torch reference, baseline ONNX, variant INT8) over 5 test images."""
    from lungedge.benchmarks.bench import run_bench

    out = str(tmp_path_factory.mktemp("seg-out"))
    results = run_bench(baseline=seg_setup["baseline"], variants=[seg_setup["variant"] + ":onnx-int8"],
                        data=seg_setup["data"], torch_run=seg_setup["run"], out=out, progress=False,
                        **dict(fast_options, max_images=5, memory_runs=0))
    return results, out
