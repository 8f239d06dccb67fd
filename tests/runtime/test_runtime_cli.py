"""The lungedge command: infer, selftest, --version, external subcommands, and no patient identifiers out."""

import json
import logging
import os

import cv2
import pytest
from tinymodels import classifier_model, golden_writer, square_image, write_bundle, write_ct_series

from lungedge.runtime import cli


def test_infer_writes_json_overlay_and_csv(xray_cls_bundle, xray_lung_bundle, tmp_path):
    inputs = []
    for i in range(3):
        path = str(tmp_path / f"img{i}.png")
        cv2.imwrite(path, square_image(box=(10 + i, 32, 60, 92)))
        inputs.append(path)
    out = tmp_path / "out"
    assert cli.main(["infer"] + inputs + ["--bundle", xray_cls_bundle, "--lung-bundle", xray_lung_bundle,
                                           "--out", str(out), "--threads", "1"]) == 0
    for i in range(3):
        result = json.loads((out / f"img{i}.json").read_text())
        assert result["input"] == {"file": f"img{i}.png"} and result["lung"]["crop_box"]
        assert (out / f"img{i}_overlay.png").is_file()
    assert len((out / "summary.csv").read_text().splitlines()) == 4


def test_infer_prints_json_lines_without_out(xray_cls_bundle, tmp_path, capsys):
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, square_image())
    assert cli.main(["infer", path, "--bundle", xray_cls_bundle]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["input"] == {"file": "a.png"}


def test_infer_same_file_names_do_not_collide(xray_cls_bundle, tmp_path):
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        paths.append(str(tmp_path / sub / "x.png"))
        cv2.imwrite(paths[-1], square_image())
    out = tmp_path / "out"
    assert cli.main(["infer"] + paths + ["--bundle", xray_cls_bundle, "--out", str(out)]) == 0
    assert (out / "x.json").is_file() and (out / "x_1.json").is_file()


def test_infer_ct_study_from_series_and_slice(ct_lesion_bundle, dicom_dir, tmp_path):
    folder = write_ct_series(tmp_path / "series", os.path.join(dicom_dir, "ct_small_thorax_128.dcm"), count=3)
    out = tmp_path / "out"
    status = cli.main(["infer", folder, os.path.join(dicom_dir, "ct_small_thorax_128.dcm"), "--bundle",
                       ct_lesion_bundle, "--out", str(out), "--rule", "max", "--batch-size", "2"])
    assert status == 0
    study = json.loads((out / "series.json").read_text())
    assert study["task"] == "ct-study" and study["slices"] == 3 and study["lung_area_source"] == "hu_threshold"
    single = json.loads((out / "ct_small_thorax_128.json").read_text())
    assert single["task"] == "segmentation"


def test_infer_bad_bundle_exits_2(tmp_path, capsys):
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, square_image())
    assert cli.main(["infer", path, "--bundle", str(tmp_path / "nowhere")]) == 2
    assert "not a bundle" in capsys.readouterr().err


def test_infer_missing_tensorrt_exits_2(xray_cls_bundle, tmp_path, capsys):
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, square_image())
    assert cli.main(["infer", path, "--bundle", xray_cls_bundle, "--backend", "tensorrt"]) == 2
    assert "no tensorrt artifact" in capsys.readouterr().err


def test_selftest_passes(xray_cls_bundle, capsys):
    assert cli.main(["selftest", xray_cls_bundle]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["samples"] == 3


def test_selftest_fails_on_drifted_outputs(tmp_path, capsys):
    bundle = write_bundle(tmp_path / "drift", classifier_model(3), "classification", "xray", ["a", "b", "c"],
                          {}, golden=golden_writer(shift=0.01))
    assert cli.main(["selftest", bundle]) == 1
    assert "exceeds the fp32 tolerance" in capsys.readouterr().err


def test_selftest_without_golden_fails(xray_lung_bundle, capsys):
    assert cli.main(["selftest", xray_lung_bundle]) == 1
    assert "no golden inputs" in capsys.readouterr().err


def _identifiers(dicom_dir):
    import pydicom

    values = set()
    for name in os.listdir(dicom_dir):
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(os.path.join(dicom_dir, name), stop_before_pixels=True)
            for key in ("PatientName", "PatientID", "PatientBirthDate"):
                value = str(ds.get(key, "") or "")
                if value:
                    values.add(value)
                    values.update(part for part in value.split("^") if len(part) > 3)
    return values


@pytest.mark.parametrize("bundle_fixture", ["xray_cls_bundle", "ct_cls_bundle", "ct_lesion_bundle"])
def test_no_patient_identifiers_in_any_output(bundle_fixture, request, dicom_dir, tmp_path, capsys, caplog):
    identifiers = _identifiers(dicom_dir)
    assert identifiers, "the sample DICOM files carry patient identifiers to look for"
    bundle = request.getfixturevalue(bundle_fixture)
    inputs = sorted(os.path.join(dicom_dir, n) for n in os.listdir(dicom_dir) if n.endswith(".dcm"))
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    status = cli.main(["infer"] + inputs + ["--bundle", bundle, "--out", str(out)])
    assert status in (0, 1)  # the wrong-modality file fails, the others succeed
    captured = capsys.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "logs": caplog.text}
    files = sorted(out.iterdir())
    assert any(f.suffix == ".json" for f in files) and any(f.suffix == ".png" for f in files)
    for f in files:
        data = f.read_bytes()  # raw bytes: JSON, CSV and every PNG chunk (tEXt/iTXt/eXIf included)
        texts[f.name] = data.decode("latin-1")
    for where, text in texts.items():
        for value in identifiers:
            assert value not in text, f"patient identifier {value!r} found in {where}"


def test_infer_multiframe_ct_is_a_study_and_nifti_into_xray_is_refused(ct_cls_bundle, xray_cls_bundle, dicom_dir,
                                                                        tmp_path, capsys):
    import nibabel as nib
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(os.path.join(dicom_dir, "ct_small_thorax_128.dcm"))
    frame = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame]).astype(frame.dtype).tobytes()
    multi = str(tmp_path / "multi.dcm")
    ds.save_as(multi)
    out = tmp_path / "out"
    assert cli.main(["infer", multi, "--bundle", ct_cls_bundle, "--out", str(out)]) == 0
    study = json.loads((out / "multi.json").read_text())
    assert study["task"] == "ct-study" and study["slices"] == 2 and study["input"] == {"file": "multi.dcm"}
    volume = str(tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 3), np.int16), np.eye(4)), volume)
    assert cli.main(["infer", volume, "--bundle", xray_cls_bundle]) == 1
    assert "vol.nii.gz: wrong modality: the input is CT" in capsys.readouterr().err
