"""Bad-input corpus: each bad file gets a typed InputError naming the problem; odd-but-fine files work."""

import json
import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest

from lungedge.runtime import cli
from lungedge.runtime.errors import InputError
from lungedge.runtime.io import image as image_io
from lungedge.runtime.predictor import Predictor

CT = "ct_small_thorax_128.dcm"
CXR = "cxr_pa_cr_monochrome2.dcm"


def _truncated_dicom(tmp, dicom_dir):
    data = open(os.path.join(dicom_dir, CXR), "rb").read()
    path = os.path.join(tmp, "truncated.dcm")
    open(path, "wb").write(data[:len(data) // 2])
    return path


def _truncated_ct_dicom(tmp, dicom_dir):
    data = open(os.path.join(dicom_dir, CT), "rb").read()
    path = os.path.join(tmp, "truncated_ct.dcm")
    open(path, "wb").write(data[:len(data) - 5000])
    return path


def _corrupt_dicom(tmp, dicom_dir):
    path = os.path.join(tmp, "corrupt.dcm")
    open(path, "wb").write(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    return path


def _text_file(tmp, _):
    path = os.path.join(tmp, "notes.txt")
    open(path, "w").write("not an image\n")
    return path


def _text_as_png(tmp, _):
    path = os.path.join(tmp, "fake.png")
    open(path, "w").write("this is text pretending to be a PNG\n")
    return path


def _empty_png(tmp, _):
    path = os.path.join(tmp, "empty.png")
    open(path, "wb").close()
    return path


def _empty_dcm(tmp, _):
    path = os.path.join(tmp, "empty.dcm")
    open(path, "wb").close()
    return path


def _one_pixel(tmp, _):
    path = os.path.join(tmp, "one_pixel.png")
    cv2.imwrite(path, np.zeros((1, 1), np.uint8))
    return path


def _huge_png_header(tmp, _):
    """A PNG whose IHDR claims 50000x50000: refused from the header, never decoded."""
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path = os.path.join(tmp, "huge.png")
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk)
    return path


def _nan_tiff(tmp, _):
    a = np.ones((40, 40), np.float32)
    a[5, 5], a[6, 6] = np.nan, np.inf
    path = os.path.join(tmp, "nan.tif")
    cv2.imwrite(path, a)
    return path


def _flat_image(tmp, _):
    path = os.path.join(tmp, "flat.png")
    cv2.imwrite(path, np.full((64, 64), 128, np.uint8))
    return path


def _ct_into_xray(tmp, dicom_dir):
    path = os.path.join(tmp, "ct_slice.dcm")
    shutil.copy(os.path.join(dicom_dir, CT), path)
    return path


# (builder, what the InputError must say)
BAD = [
    (_truncated_dicom, "corrupt or truncated"),
    (_truncated_ct_dicom, "corrupt or truncated"),
    (_corrupt_dicom, "corrupt or truncated|not a DICOM"),
    (_text_file, "unsupported file type '.txt'"),
    (_text_as_png, "not a readable PNG/JPEG/TIFF"),
    (_empty_png, "file is empty"),
    (_empty_dcm, "file is empty"),
    (_one_pixel, "1x1, smaller than the 32-pixel minimum"),
    (_huge_png_header, "50000x50000, larger than the 12000-pixel maximum"),
    (_nan_tiff, "NaN or infinite"),
    (_flat_image, "no contrast"),
    (_ct_into_xray, "wrong modality: the input is CT but bundle .* expects X-ray"),
]


@pytest.mark.parametrize("build,message", BAD, ids=[b.__name__.strip("_") for b, _ in BAD])
def test_bad_input_raises_named_input_error(build, message, tmp_path, dicom_dir, xray_cls_bundle, monkeypatch):
    path = build(str(tmp_path), dicom_dir)
    predictor = Predictor.from_bundle(xray_cls_bundle, threads=1)
    with pytest.raises(InputError, match=message) as info:
        predictor.predict(path)
    assert os.path.basename(path) in str(info.value)


def test_huge_png_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _huge_png_header(str(tmp_path), None)
    monkeypatch.setattr(image_io.cv2, "imread", lambda *a, **k: pytest.fail("decoded a refused image"))
    with pytest.raises(InputError, match="larger than"):
        image_io.read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_array_input(bad, xray_cls_bundle):
    a = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    a[3, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        Predictor.from_bundle(xray_cls_bundle, threads=1).predict(a)


def test_rgb_screenshot_and_16_bit_png_work(tmp_path, xray_cls_bundle):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (120, 160, 4), dtype=np.uint8)  # BGRA screenshot
    deep = (rng.random((100, 90)) * 65535).astype(np.uint16)
    paths = [str(tmp_path / "screenshot.png"), str(tmp_path / "deep16.png")]
    cv2.imwrite(paths[0], rgb)
    cv2.imwrite(paths[1], deep)
    predictor = Predictor.from_bundle(xray_cls_bundle, threads=1)
    for path in paths:
        result = predictor.predict(path)
        assert result["label"] in ("covid", "normal", "pneumonia")
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)


def test_cli_batch_continues_past_bad_inputs(tmp_path, dicom_dir, xray_cls_bundle, capsys):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = [build(str(bad_dir), dicom_dir) for build, _ in BAD]
    good = []
    for i in range(2):
        path = str(tmp_path / f"good{i}.png")
        cv2.imwrite(path, (np.random.default_rng(i).random((64, 80)) * 255).astype(np.uint8))
        good.append(path)
    good.append(os.path.join(dicom_dir, CXR))
    out = tmp_path / "out"
    status = cli.main(["infer", good[0]] + bad + good[1:] + ["--bundle", xray_cls_bundle, "--out", str(out),
                                                            "--threads", "1"])
    assert status == 1
    err = capsys.readouterr().err
    assert f"{len(bad)} of {len(bad) + len(good)} inputs failed" in err
    for path in good:
        stem = os.path.basename(path).rsplit(".", 1)[0]
        result = json.loads((out / f"{stem}.json").read_text())
        assert result["label"] in ("covid", "normal", "pneumonia")
        assert (out / f"{stem}_overlay.png").is_file()
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + len(bad) + len(good)
    assert sum(",error," in r for r in rows) == len(bad)
    for path in bad:
        assert os.path.basename(path) in err
