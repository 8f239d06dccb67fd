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

    from lungedge.compress.pipeline import export_baseline

    run = make_run(str(tmp_path / "run"), "ct-seg", "unet_student", 48, ct_seg_dir)
    bundle = export_baseline(run, str(tmp_path / "bundle"), data_dir=ct_seg_dir, overwrite=True)
    out = str(tmp_path / "out")
    res = SC.run_scaling(segmenter=bundle, data_dirs=[ct_seg_dir], slices=(2, 6), repeats=1, batch=4, threads=1,
                         out=out, progress=False, source="png")
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


def test_dicom_series_round_trip(tmp_path, ct_seg_dir):
    """The written series reads back through the runtime's streaming reader as HU, in order, one file at a time."""
    import cv2
    import numpy as np

    from lungedge.runtime.io import iter_slices

    files = SC.slice_files([ct_seg_dir], 3)
    folder = SC.write_dicom_series(files, str(tmp_path / "series"), size=64)
    got = list(iter_slices(folder))
    assert len(got) == 3 and all(m["unit"] == "HU" and m["format"] == "dicom-series" for _, m in got)
    assert got[1][1]["slice_spacing"] == 1.0
    for (array, _), path in zip(got, files):
        display = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (64, 64), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(array, np.round(SC.display_to_hu(display)), atol=0.5)


def test_rss_flatness():
    pts = [{"slices": 10, "peak_rss_mb": 200.0}, {"slices": 50, "peak_rss_mb": 210.0},
           {"slices": 300, "peak_rss_mb": 229.0}]
    flat = SC.rss_flatness(pts)
    assert flat["flat"] and flat["reference_slices"] == 10 and flat["max_growth"] == pytest.approx(0.145)
    assert not SC.rss_flatness(pts + [{"slices": 400, "peak_rss_mb": 240.0}])["flat"]
    assert SC.rss_flatness(pts[:1])["flat"] is None


def test_streamed_dicom_scaling(tmp_path, ct_seg_dir):
    """Source dicom: the study is a series on disk, streamed by the pipeline; the report says so."""
    pytest.importorskip("torch")
    from helpers_bench import make_run

    from lungedge.compress.pipeline import export_baseline

    run = make_run(str(tmp_path / "run"), "ct-seg", "unet_student", 48, ct_seg_dir)
    bundle = export_baseline(run, str(tmp_path / "bundle"), data_dir=ct_seg_dir, overwrite=True)
    res = SC.run_scaling(segmenter=bundle, data_dirs=[ct_seg_dir], slices=(2, 5), repeats=1, batch=4, threads=1,
                         out=str(tmp_path / "out"), progress=False, source="dicom", dicom_size=96,
                         work_dir=str(tmp_path / "work"))
    assert all("error" not in p for p in res["points"]), res["points"]
    p = res["points"][1]
    assert "DICOM series" in p["how"] and p["read_s"] is None and p["ms_per_slice"] > 0
    assert res["rss_flatness"]["reference_slices"] == 2 and res["rss_flatness"]["max_growth"] is not None
    assert "--source dicom --dicom-size 96" in res["command"]
    assert not os.listdir(str(tmp_path / "work"))  # each series is removed once measured
    text = open(os.path.join(str(tmp_path / "out"), "report.md"), encoding="utf-8").read()
    assert "streamed" in text and "Peak RSS:" in text
