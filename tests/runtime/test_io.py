"""Readers: image, DICOM (X-ray VOI/MONOCHROME1, CT HU, series, multi-frame, codecs), NIfTI, the registry."""

import os
import shutil

import cv2
import numpy as np
import pytest
from tinymodels import write_ct_series

from lungedge.runtime.errors import InputError
from lungedge.runtime.io import EXTENSIONS, READERS, dicom, image, iter_slices, nifti, read_any, sniff_format

CT = "ct_small_thorax_128.dcm"
CXR1 = "cxr_pa_cr_monochrome1_synthetic.dcm"
CXR2 = "cxr_pa_cr_monochrome2.dcm"


def _ds(dicom_dir, name):
    import pydicom

    return pydicom.dcmread(os.path.join(dicom_dir, name))


def test_registry_is_plain_dicts():
    assert READERS["image"] is image.read and READERS["dicom"] is dicom.read and READERS["nifti"] is nifti.read
    assert EXTENSIONS[".nii.gz"] == "nifti" and EXTENSIONS[".dcm"] == "dicom" and EXTENSIONS[".png"] == "image"


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_image_gray_8_and_16_bit(write_png, dtype, top):
    a = (np.arange(64 * 80).reshape(64, 80) % int(top)).astype(dtype)
    array, meta = read_any(write_png("g.png", a))
    assert array.dtype == np.float32 and array.shape == (64, 80)
    np.testing.assert_array_equal(array, a.astype(np.float32))
    assert meta["intensity_max"] == top and meta["unit"] == "display" and meta["modality"] is None
    assert meta["shape"] == [64, 80] and meta["pixel_spacing"] is None


def test_image_rgb_converted_to_luma(write_png):
    bgr = np.zeros((40, 50, 3), np.uint8)
    bgr[..., 2] = 200  # pure red in OpenCV's BGR order
    array, meta = read_any(write_png("rgb.png", bgr))
    assert meta["converted_from_rgb"] is True and array.shape == (40, 50)
    np.testing.assert_allclose(array, 0.299 * 200, atol=1e-3)


def test_float_tiff_keeps_values(tmp_path):
    a = np.linspace(0, 3000, 48 * 48, dtype=np.float32).reshape(48, 48)
    path = str(tmp_path / "f.tif")
    assert cv2.imwrite(path, a)
    array, meta = read_any(path)
    np.testing.assert_allclose(array, a)
    assert meta["intensity_max"] == pytest.approx(3000.0)


def test_sniffing_by_magic_when_extension_is_missing(write_png, tmp_path):
    path = write_png("x.png", np.full((40, 40), 7, np.uint8))
    bare = str(tmp_path / "noext")
    shutil.copy(path, bare)
    assert sniff_format(bare) == "image"


def test_dicom_preamble_wins_over_extension(dicom_dir, tmp_path):
    odd = str(tmp_path / "scan.bin")
    shutil.copy(os.path.join(dicom_dir, CT), odd)
    assert sniff_format(odd) == "dicom"
    assert read_any(odd)[1]["modality"] == "ct"


def test_folder_is_a_dicom_series(tmp_path):
    assert sniff_format(str(tmp_path)) == "dicom-series"


def test_jpeg_size_read_from_header(tmp_path):
    path = str(tmp_path / "a.jpg")
    assert cv2.imwrite(path, np.full((50, 70), 100, np.uint8))
    assert image._jpeg_size(path) == (50, 70)


def test_ct_dicom_in_hounsfield_units(dicom_dir):
    ds = _ds(dicom_dir, CT)
    array, meta = dicom.read(os.path.join(dicom_dir, CT))
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(array, expected)
    assert meta["unit"] == "HU" and meta["modality"] == "ct" and meta["intensity_max"] is None
    assert meta["pixel_spacing"] == pytest.approx((0.661468, 0.661468)) and meta["shape"] == [128, 128]


def test_cr_monochrome1_is_inverted(dicom_dir):
    mono1, meta1 = dicom.read(os.path.join(dicom_dir, CXR1))
    mono2, meta2 = dicom.read(os.path.join(dicom_dir, CXR2))
    assert meta1["modality"] == meta2["modality"] == "xray" and meta1["unit"] == "display"
    assert meta1["intensity_max"] == 255.0 and meta1["pixel_spacing"] == pytest.approx((0.168, 0.168))
    # Same stored pixels, opposite photometric interpretation: after reading they are mirror images.
    np.testing.assert_allclose(mono1, 255.0 - mono2)


def test_xray_window_is_applied(dicom_dir, tmp_path):
    ds = _ds(dicom_dir, CXR2)
    plain = ds.pixel_array.astype(np.float32)
    ds.WindowCenter, ds.WindowWidth = 100, 50
    path = str(tmp_path / "windowed.dcm")
    ds.save_as(path)
    array, _ = dicom.read(path)
    assert array[plain <= 74].max() == 0.0 and array[plain >= 126].min() == 255.0
    mid = (plain > 80) & (plain < 120)
    assert 0.0 < array[mid].mean() < 255.0


def test_other_modality_is_refused(dicom_dir, tmp_path):
    ds = _ds(dicom_dir, CT)
    ds.Modality = "MR"
    path = str(tmp_path / "mr.dcm")
    ds.save_as(path)
    with pytest.raises(InputError, match="wrong modality 'MR'"):
        read_any(path)


def test_multiframe_returns_frames(dicom_dir, tmp_path):
    ds = _ds(dicom_dir, CT)
    frame = ds.pixel_array
    stack = np.stack([frame, frame + 1, frame + 2])
    ds.NumberOfFrames = 3
    ds.PixelData = stack.astype(frame.dtype).tobytes()
    path = str(tmp_path / "multi.dcm")
    ds.save_as(path)
    array, meta = read_any(path)
    assert array.shape == (3, 128, 128) and meta["frames"] == 3 and meta["shape"] == [3, 128, 128]
    np.testing.assert_allclose(array[2] - array[0], 2.0)
    assert len(list(iter_slices(path))) == 3


def test_missing_decoder_is_named(dicom_dir, monkeypatch):
    monkeypatch.setattr(dicom, "_decoder_available", lambda uid: False)
    with pytest.raises(InputError, match="no decoder for it is installed; install one of: .*pylibjpeg.*gdcm"):
        dicom.read(os.path.join(dicom_dir, CXR2))


def test_rows_columns_refused_before_decoding(dicom_dir, tmp_path, monkeypatch):
    ds = _ds(dicom_dir, CT)
    ds.Rows, ds.Columns = 50000, 50000
    path = str(tmp_path / "huge.dcm")
    ds.save_as(path)
    monkeypatch.setattr(dicom, "_pixels", lambda *a: pytest.fail("pixels decoded before the size check"))
    with pytest.raises(InputError, match="larger than the 12000-pixel maximum"):
        dicom.read(path)


def test_series_ordered_by_position(dicom_dir, tmp_path):
    folder = write_ct_series(tmp_path / "series", os.path.join(dicom_dir, CT), count=4)
    volume, meta = read_any(folder)
    assert volume.shape == (4, 128, 128) and meta["format"] == "dicom-series" and meta["modality"] == "ct"
    assert [float(v) for v in volume[:, 0, 0]] == [0.0, 100.0, 200.0, 300.0]
    assert meta["slice_spacing"] == pytest.approx(2.5) and meta["shape"] == [4, 128, 128]
    indices = [m["slice_index"] for _, m in dicom.iter_dicom_series(folder)]
    assert indices == [0, 1, 2, 3]


def test_series_falls_back_to_instance_number(dicom_dir, tmp_path):
    folder = write_ct_series(tmp_path / "series", os.path.join(dicom_dir, CT), count=3)
    import pydicom

    for name in os.listdir(folder):
        ds = pydicom.dcmread(os.path.join(folder, name))
        del ds.ImagePositionPatient
        ds.save_as(os.path.join(folder, name))
    volume, _ = dicom.read_dicom_series(folder)
    # InstanceNumber runs backwards in the helper, so without positions the order reverses.
    assert [float(v) for v in volume[:, 0, 0]] == [200.0, 100.0, 0.0]


def test_series_refuses_xray_slices(dicom_dir, tmp_path):
    folder = tmp_path / "mixed"
    write_ct_series(folder, os.path.join(dicom_dir, CT), count=2)
    shutil.copy(os.path.join(dicom_dir, CXR2), str(folder / "x.dcm"))
    with pytest.raises(InputError, match="series|not CT"):
        dicom.read_dicom_series(str(folder))


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no DICOM files"):
        read_any(str(tmp_path))


def _save_nifti(path, data, affine, slope=None, inter=None):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)


def test_nifti_canonical_orientation_and_spacing(tmp_path):
    # Stored in LPS-like order (x and y flipped): canonical RAS flips them back.
    data = np.zeros((40, 50, 6), np.int16)
    data[0, 0, 0] = 1000  # stored first voxel: patient right-most, anterior-most, inferior slice
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])
    path = str(tmp_path / "ct.nii.gz")
    _save_nifti(path, data, affine)
    volume, meta = read_any(path)
    assert volume.shape == (6, 50, 40) and meta["shape"] == [6, 50, 40]
    assert meta["pixel_spacing"] == pytest.approx((0.7, 0.8)) and meta["slice_spacing"] == pytest.approx(2.5)
    assert meta["unit"] == "HU" and meta["modality"] == "ct"
    # Radiological display: patient right on the image left, anterior at the top; slice 0 inferior.
    assert volume[0, 0, 0] == 1000.0 and volume.sum() == 1000.0
    data[0, 0, 0], data[39, 49, 5] = 0, 1000  # left-most, posterior-most, superior
    _save_nifti(path, data, affine)
    assert read_any(path)[0][5, 49, 39] == 1000.0


def test_nifti_scaling_to_hu_and_streaming(tmp_path):
    data = np.arange(40 * 40 * 3, dtype=np.int16).reshape(40, 40, 3)
    path = str(tmp_path / "scaled.nii")
    _save_nifti(path, data, np.eye(4), slope=2.0, inter=-1024.0)
    volume, _ = nifti.read(path)
    assert volume.min() == -1024.0 and volume.max() == pytest.approx(2.0 * data.max() - 1024.0)
    streamed = np.stack([s for s, _ in nifti.iter_slices(path)])
    np.testing.assert_allclose(streamed, volume)


def test_nifti_too_small_refused_from_header(tmp_path):
    path = str(tmp_path / "tiny.nii")
    _save_nifti(path, np.zeros((8, 8, 2), np.int16), np.eye(4))
    with pytest.raises(InputError, match="smaller than the 32-pixel minimum"):
        read_any(path)
