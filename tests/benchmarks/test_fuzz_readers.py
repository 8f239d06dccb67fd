"""Readers cannot crash: fuzz regressions (each once an untyped exception or a stderr leak) and a short fuzz run."""

import os
import struct

import cv2
import numpy as np
import pytest

from lungedge.benchmarks import fuzz_readers
from lungedge.runtime.errors import InputError
from lungedge.runtime.io import READERS, read_any
from lungedge.runtime.io.image import _png_size

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("LUNGEDGE_DATA", os.path.join(ROOT, "..", "shared", "data"))


def _gray(h=64, w=64):
    return (np.random.default_rng(0).random((h, w)) * 255).astype(np.uint8)


def _write(tmp_path, name, data):
    path = str(tmp_path / name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


@pytest.mark.parametrize("length", [0, 8, 12, 16, 20, 23])
def test_png_shorter_than_its_header_is_typed(tmp_path, length):
    full = cv2.imencode(".png", _gray())[1].tobytes()
    assert _png_size(full[:length]) is None
    assert _png_size(full[:24]) == (64, 64)
    if length:
        with pytest.raises(InputError, match="short.png"):
            read_any(_write(tmp_path, "short.png", full[:length]))


def test_bmp_with_huge_width_is_typed(tmp_path):
    data = bytearray(cv2.imencode(".bmp", _gray())[1].tobytes())
    data[18:22] = struct.pack("<i", 0x7FFFFFFF)  # BITMAPINFOHEADER width
    with pytest.raises(InputError, match="OpenCV"):
        read_any(_write(tmp_path, "wide.bmp", bytes(data)))


def test_dicom_with_unknown_vr_is_typed(tmp_path):
    data = fuzz_readers._dicom_bytes("CT")
    i = data.index(b"\x28\x00\x30\x00DS")  # PixelSpacing (0028,0030) in explicit VR little endian
    data = data[:i + 4] + b"ES" + data[i + 6:]
    with pytest.raises(InputError, match="corrupt or truncated DICOM"):
        read_any(_write(tmp_path, "bad_vr.dcm", data))


def test_failed_decode_quotes_the_decoder_and_prints_nothing(tmp_path, capfd):
    data = bytearray(cv2.imencode(".png", _gray())[1].tobytes())
    data[29] ^= 0xFF  # IHDR CRC
    with pytest.raises(InputError, match="libpng error: IHDR: CRC error"):
        read_any(_write(tmp_path, "crc.png", bytes(data)))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_decoder_warning_kept_in_meta_not_on_stderr(tmp_path, capfd):
    data = cv2.imencode(".jpg", _gray())[1].tobytes()
    array, meta = read_any(_write(tmp_path, "cut.jpg", data[:len(data) // 2]))
    assert array.shape == (64, 64)
    assert "Premature end of JPEG file" in meta["decoder_warning"]
    assert capfd.readouterr() == ("", "")


def test_damaged_nifti_header_prints_nothing(tmp_path, capfd):
    data = bytearray(fuzz_readers._nifti_bytes(False))
    data[0:4] = struct.pack("<i", 1000)  # sizeof_hdr: nibabel fixes it up and logs to its own stderr handler
    data[252:254] = struct.pack("<h", 128)  # qform_code out of range
    try:
        READERS["nifti"](_write(tmp_path, "fixup.nii", bytes(data)))
    except InputError:
        pass
    assert capfd.readouterr() == ("", "")


def test_every_seed_reads_before_mutation(tmp_path):
    for name, fmt, ext, data in fuzz_readers.synthetic_seeds():
        array, meta = READERS[fmt](_write(tmp_path, "seed" + ext, data))
        assert np.isfinite(array).all(), name
        assert read_any(str(tmp_path / ("seed" + ext)))[1]["format"] == fmt, name


def test_mutations_are_deterministic():
    seeds = fuzz_readers.synthetic_seeds()
    a = [fuzz_readers.mutate(np.random.default_rng(5), s[3], seeds) for s in seeds]
    b = [fuzz_readers.mutate(np.random.default_rng(5), s[3], seeds) for s in seeds]
    assert a == b
    assert any(m[0] != s[3] for m, s in zip(a, seeds))


def test_short_fuzz_run_has_no_untyped_exception_and_no_stderr(tmp_path):
    data = DATA if os.path.isfile(os.path.join(DATA, "dicom", "manifest.csv")) else None
    s = fuzz_readers.run_fuzz(600, seed=11, data_root=data, out=str(tmp_path / "fuzz"), progress=False)
    assert s["untyped_exceptions"] == 0, s["untyped_examples"][:3]
    assert s["stderr_leaks"] == 0, s["stderr_text"][:500]
    for target in ("read_any", "format_reader"):
        assert s["counts"][target]["ok"] > 0 and s["counts"][target]["typed"] > 0
    assert os.path.isfile(tmp_path / "fuzz" / "report.md")
