"""CT study scaling: one subprocess per study size through the runtime's CT pipeline; the linear fit."""

import os

import pytest

from lungedge.benchmarks import scaling as SC


def test_linear_fit():
    fit = SC.fit_linear([10, 50, 100, 300], [0.5 + 0.02 * n for n in (10, 50, 100, 300)])
    assert fit["per_slice_s"] == pytest.approx(0.02) and fit["intercept_s"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)


def test_slice_files_cycle(ct_seg_dir):
    files = SC.slice_files([ct_seg_dir], 200)
    assert len(files) == 200 and len(set(files)) == 78  # the dev pack holds 78 CT slices with masks
    assert all(f.endswith(".png") and os.path.isfile(f) for f in files)


def test_scaling_run(tmp_path, ct_seg_dir):
    pytest.importorskip("torch")
    from helpers_bench import make_run

    from lungedge.benchmarks.bundles import export_baseline_bundle

    run = make_run(str(tmp_path / "run"), "ct-seg", "unet_student", 48, ct_seg_dir)
    bundle = export_baseline_bundle(run, str(tmp_path / "bundle"), use_compress=False)
    out = str(tmp_path / "out")
    res = SC.run_scaling(segmenter=bundle, data_dirs=[ct_seg_dir], slices=(2, 6), repeats=1, batch=4, threads=1,
                         out=out, progress=False)
    assert [p["slices"] for p in res["points"]] == [2, 6]
    assert all("error" not in p for p in res["points"]), res["points"]
    p = res["points"][1]
    assert p["how"] == "runtime.pipelines.CtStudyPipeline" and p["torch_loaded"] is False
    assert p["latency_s"]["median"] > 0 and 20 < p["peak_rss_mb"] < 2000
    assert res["meets_target"] is None  # no 300-slice point in this run
    assert res["fit"]["per_slice_s"] is not None
    for name in ("results.json", "scaling.png", "report.md"):
        assert os.path.getsize(os.path.join(out, name)) > 200
    assert "lungedge bench scaling --segmenter" in res["command"]
