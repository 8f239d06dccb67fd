# Over 400 lines on purpose: one harness; the per-format corpus builders, mutators and the typed-outcome runner change together.
"""Mutation fuzzing of the readers: every mutated file must read or raise a LungedgeError, and print nothing.

    python -m lungedge.benchmarks.fuzz_readers --n 100000 --out docs/benchmarks/fuzz [--data ../shared/data]

Seeds are small files of every format the runtime reads: synthetic PNG (8/16-bit, RGB), JPEG, TIFF (16-bit,
float), BMP, DICOM (DX, CT, raw and JPEG-baseline pixels), NIfTI (.nii, .nii.gz), plus real dev-pack files when
``--data`` is given. Each input stacks one to three mutations (bit flips, byte and integer overwrites biased
to the header, truncation, insertion, deletion, duplication, splicing with another seed, random bytes behind
a magic number; PNG chunk CRCs recomputed half of the time so that mutations pass libpng's CRC check and reach
the decoder) and is saved under its seed's extension (sometimes another one, or none). It then goes
through ``read_any`` and through the seed format's own reader, and a mutated CT slice sometimes travels as a
two-file series folder. Outcomes: "ok", "typed" (a LungedgeError) or "untyped" (anything else: a bug; the
input is saved for reproduction). Descriptor 2 is redirected for the whole run, so any byte a decoder prints
counts as a leak.
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import traceback
import zlib

import cv2
import numpy as np

from lungedge.runtime.errors import LungedgeError
from lungedge.runtime.io import READERS, iter_slices, read_any

INTERESTING_16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 60000, 12001, 31, 32)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 60000, 1 << 20, 12001, 2 ** 31 - 1)
EXTENSIONS = {"image": (".png", ".jpg", ".tif", ".bmp"), "dicom": (".dcm",), "nifti": (".nii", ".nii.gz")}
MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"\0" * 128 + b"DICM",
          b"\x5c\x01\x00\x00")


# ----------------------------------------------------------------------------------------------- seeds

def _encode(ext, array, params=()):
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {ext}")
    return buf.tobytes()


def _dicom_bytes(modality, rows=64, cols=64, jpeg=False, seed=0, pixels=None, view="PA"):
    """A small valid DICOM file written by pydicom (synthetic, no patient data); ``pixels`` (8-bit, X-ray only)
    replace the random ones."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    rng = np.random.default_rng(seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if modality == "CT":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelData = rng.integers(0, 2000, (rows, cols)).astype(np.int16).tobytes()
    else:
        ds.ViewPosition, ds.BodyPartExamined = view, "CHEST"
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if pixels is None:
            pixels = rng.integers(0, 256, (rows, cols)).astype(np.uint8)
        else:
            pixels = np.ascontiguousarray(pixels, np.uint8)
            ds.Rows, ds.Columns = pixels.shape
        if jpeg:
            from pydicom.encaps import encapsulate

            meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.PixelData = encapsulate([_encode(".jpg", pixels)])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True) if _pydicom_3() else ds.save_as(buf, write_like_original=False)
    return buf.getvalue()


def _pydicom_3():
    import pydicom

    return int(pydicom.__version__.split(".")[0]) >= 3


def _nifti_bytes(gz, seed=0):
    import gzip

    import nibabel as nib

    data = np.random.default_rng(seed).integers(-1000, 400, (40, 36, 3)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def synthetic_seeds(seed=0):
    """[(name, format, extension, bytes)] of small valid files of every readable format."""
    rng = np.random.default_rng(seed)
    gray = (rng.random((48, 40)) * 255).astype(np.uint8)
    gray16 = (rng.random((40, 48)) * 65535).astype(np.uint16)
    rgb = (rng.random((36, 44, 3)) * 255).astype(np.uint8)
    fl = rng.random((40, 40)).astype(np.float32)
    seeds = [("gray.png", "image", ".png", _encode(".png", gray)),
             ("gray16.png", "image", ".png", _encode(".png", gray16)),
             ("rgb.png", "image", ".png", _encode(".png", rgb)),
             ("gray.jpg", "image", ".jpg", _encode(".jpg", gray, (cv2.IMWRITE_JPEG_QUALITY, 80))),
             ("rgb_progressive.jpg", "image", ".jpg", _encode(".jpg", rgb, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))),
             ("gray16.tif", "image", ".tif", _encode(".tif", gray16)),
             ("float.tif", "image", ".tif", _encode(".tif", fl)),
             ("gray.bmp", "image", ".bmp", _encode(".bmp", gray)),
             ("dx.dcm", "dicom", ".dcm", _dicom_bytes("DX", seed=seed)),
             ("dx_jpeg.dcm", "dicom", ".dcm", _dicom_bytes("DX", jpeg=True, seed=seed)),
             ("ct.dcm", "dicom", ".dcm", _dicom_bytes("CT", seed=seed)),
             ("ct.nii", "nifti", ".nii", _nifti_bytes(False, seed)),
             ("ct.nii.gz", "nifti", ".nii.gz", _nifti_bytes(True, seed))]
    return seeds


def dev_pack_seeds(data_root, per_folder=2):
    """Real files from the dev pack: the first PNGs of each image folder and every DICOM sample."""
    seeds = []
    for folder in ("xray-cls", "ct-cls", "xray-qc"):
        images = os.path.join(data_root, folder, "images")
        if os.path.isdir(images):
            for name in sorted(os.listdir(images))[:per_folder]:
                with open(os.path.join(images, name), "rb") as fh:
                    seeds.append((f"{folder}/{name}", "image", ".png", fh.read()))
    dicoms = os.path.join(data_root, "dicom")
    if os.path.isdir(dicoms):
        for name in sorted(os.listdir(dicoms)):
            if name.endswith(".dcm"):
                with open(os.path.join(dicoms, name), "rb") as fh:
                    seeds.append((f"dicom/{name}", "dicom", ".dcm", fh.read()))
    return seeds


# ------------------------------------------------------------------------------------------- mutations

def _offset(rng, n, header_bias=0.7):
    if n == 0:
        return 0
    if rng.random() < header_bias:
        return int(rng.integers(0, min(n, 512)))
    return int(rng.integers(0, n))


def _flip_bits(rng, data, _):
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        if b:
            i = _offset(rng, len(b))
            b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _set_bytes(rng, data, _):
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if b:
            b[_offset(rng, len(b))] = int(rng.choice([0, 0xFF, 0x7F, 0x80, int(rng.integers(0, 256))]))
    return bytes(b)


def _set_int(rng, data, _):
    width = int(rng.choice([2, 4]))
    if len(data) < width:
        return data
    value = int(rng.choice(INTERESTING_16 if width == 2 else INTERESTING_32))
    order = "big" if rng.random() < 0.5 else "little"
    i = min(_offset(rng, len(data)), len(data) - width)
    return data[:i] + value.to_bytes(width, order) + data[i + width:]


def _truncate(rng, data, _):
    cut = int(rng.integers(0, 64)) if rng.random() < 0.3 else int(rng.integers(0, max(1, len(data))))
    return data[:cut]


def _insert(rng, data, _):
    i = _offset(rng, len(data), 0.5)
    return data[:i] + rng.integers(0, 256, int(rng.integers(1, 64))).astype(np.uint8).tobytes() + data[i:]


def _delete(rng, data, _):
    if not data:
        return data
    i = _offset(rng, len(data), 0.5)
    return data[:i] + data[i + int(rng.integers(1, 128)):]


def _duplicate(rng, data, _):
    if not data:
        return data
    i = _offset(rng, len(data), 0.5)
    chunk = data[i:i + int(rng.integers(1, 256))]
    return data[:i] + chunk * int(rng.integers(2, 5)) + data[i:]


def _splice(rng, data, seeds):
    other = seeds[int(rng.integers(0, len(seeds)))][3]
    i, j = _offset(rng, len(data), 0.5), _offset(rng, len(other), 0.5)
    return data[:i] + other[j:]


def _magic_noise(rng, data, _):
    magic = MAGICS[int(rng.integers(0, len(MAGICS)))]
    return magic + rng.integers(0, 256, int(rng.integers(0, 200))).astype(np.uint8).tobytes()


MUTATIONS = {"flip_bits": _flip_bits, "set_bytes": _set_bytes, "set_int": _set_int, "truncate": _truncate,
             "insert": _insert, "delete": _delete, "duplicate": _duplicate, "splice": _splice,
             "magic_noise": _magic_noise}
# Draw weights of the mutations (the cheap, local ones most often).
WEIGHTS = {"flip_bits": 4, "set_bytes": 3, "set_int": 4, "truncate": 2, "insert": 1, "delete": 1, "duplicate": 1,
           "splice": 1, "magic_noise": 0.5}


def fix_png_crcs(data):
    """Recompute every PNG chunk CRC, so that a mutation reaches the decoder instead of libpng's CRC check."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        end = i + 8 + length
        if end + 4 > len(data):
            break
        body = data[i + 4:end]
        out += data[i:end] + zlib.crc32(body).to_bytes(4, "big")
        i = end + 4
    return bytes(out + data[i:])


def mutate(rng, data, seeds):
    """(mutated bytes, names of the mutations applied): one to three stacked mutations; PNG CRCs are
    recomputed afterwards half of the time."""
    names = list(MUTATIONS)
    p = np.array([WEIGHTS[n] for n in names], float)
    applied = [names[int(i)] for i in rng.choice(len(names), size=int(rng.integers(1, 4)), p=p / p.sum())]
    for name in applied:
        data = MUTATIONS[name](rng, data, seeds)
    if data.startswith(b"\x89PNG") and rng.random() < 0.5:
        data = fix_png_crcs(data)
        applied.append("fix_png_crcs")
    return data, applied


# ---------------------------------------------------------------------------------------------- running

def _call(fn, path):
    """("ok" | "typed" | "untyped", exception class name or None, traceback text for untyped)."""
    try:
        result = fn(path)
        if hasattr(result, "__next__"):
            for _ in result:
                pass
        return "ok", None, None
    except LungedgeError as exc:
        return "typed", type(exc).__name__, None
    except Exception as exc:  # the fuzz target: anything untyped is a bug
        return "untyped", type(exc).__name__, traceback.format_exc(limit=6)


class FdCapture:
    """Points descriptor 2 at a file for the whole run; ``grew()`` tells whether anything was written since."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "stderr.txt")
        self.fh = open(self.path, "w+b")
        self.saved = None
        self.size = 0

    def start(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(self.fh.fileno(), 2)
        return os.fdopen(os.dup(self.saved), "w")  # a stream to the real terminal, for progress

    def grew(self):
        size = os.fstat(self.fh.fileno()).st_size
        grown, self.size = size > self.size, size
        return grown

    def stop(self):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.fh.seek(0)
        text = self.fh.read().decode("utf-8", "replace")
        self.fh.close()
        return text


def run_fuzz(n, seed=0, data_root=None, out=None, progress=True, save_failures=20):
    """Run ``n`` mutated inputs through the readers; returns the summary dict (written to ``out`` if given)."""
    from tqdm import tqdm

    seeds = synthetic_seeds(seed) + (dev_pack_seeds(data_root) if data_root else [])
    rng = np.random.default_rng(seed)
    work = tempfile.mkdtemp(prefix="lungedge-fuzz-")
    counts = {"read_any": {"ok": 0, "typed": 0, "untyped": 0}, "format_reader": {"ok": 0, "typed": 0, "untyped": 0},
              "series": {"ok": 0, "typed": 0, "untyped": 0}}
    typed_classes, untyped, per_seed, leaks = {}, [], {}, []
    capture = FdCapture(work)
    terminal = capture.start()
    started = time.perf_counter()
    try:
        for k in tqdm(range(n), unit="input", file=terminal, disable=not progress, mininterval=2.0):
            name, fmt, ext, data = seeds[int(rng.integers(0, len(seeds)))]
            mutated, applied = mutate(rng, data, seeds)
            roll = rng.random()
            if roll < 0.1:
                others = [e for exts in EXTENSIONS.values() for e in exts if e != ext]
                ext = others[int(rng.integers(0, len(others)))]
            elif roll < 0.15:
                ext = ""
            path = os.path.join(work, f"input{ext}")
            with open(path, "wb") as fh:
                fh.write(mutated)
            calls = [("read_any", read_any), ("format_reader", READERS[fmt])]
            if fmt == "nifti":
                calls.append(("series", iter_slices))
            elif name.endswith("ct.dcm") and rng.random() < 0.2:
                folder = os.path.join(work, "series")
                shutil.rmtree(folder, ignore_errors=True)
                os.makedirs(folder)
                shutil.copy(path, os.path.join(folder, "a.dcm"))
                with open(os.path.join(folder, "b.dcm"), "wb") as fh:
                    fh.write(mutate(rng, data, seeds)[0])
                calls.append(("series", lambda _p, f=folder: iter_slices(f)))
            seed_counts = per_seed.setdefault(name, {"inputs": 0, "ok": 0, "typed": 0, "untyped": 0})
            seed_counts["inputs"] += 1
            for target, fn in calls:
                outcome, cls, tb = _call(fn, path)
                counts[target][outcome] += 1
                seed_counts[outcome] += 1
                if outcome == "typed":
                    typed_classes[cls] = typed_classes.get(cls, 0) + 1
                elif outcome == "untyped":
                    entry = {"index": k, "seed": name, "target": target, "extension": ext, "mutations": applied,
                             "exception": cls, "traceback": tb}
                    if out and len(untyped) < save_failures:
                        os.makedirs(os.path.join(out, "failures"), exist_ok=True)
                        entry["saved_as"] = f"failures/{k:07d}{ext}"
                        shutil.copy(path, os.path.join(out, entry["saved_as"]))
                    untyped.append(entry)
            if capture.grew():
                leaks.append({"index": k, "seed": name, "mutations": applied})
    finally:
        seconds = time.perf_counter() - started
        leaked_text = capture.stop()
        terminal.close()
        shutil.rmtree(work, ignore_errors=True)
    from lungedge.benchmarks.environment import cpu_model, library_versions

    calls_total = sum(sum(c.values()) for c in counts.values())
    summary = {"inputs": n, "reader_calls": calls_total, "seed": seed, "seeds": len(seeds),
               "dev_pack_seeds": bool(data_root), "seconds": round(seconds, 1), "counts": counts,
               "typed_error_classes": typed_classes, "untyped_exceptions": len(untyped),
               "untyped_classes": sorted({u["exception"] for u in untyped}), "untyped_examples": untyped[:save_failures],
               "stderr_leaks": len(leaks), "stderr_leak_examples": leaks[:10], "stderr_text": leaked_text[:2000],
               "per_seed": per_seed, "cpu": cpu_model(), "libraries": library_versions(),
               "command": "python -m lungedge.benchmarks.fuzz_readers " + " ".join(sys.argv[1:])}
    if out:
        from lungedge.benchmarks.report import write_json_and_markdown

        write_json_and_markdown(out, summary, markdown_report(summary))
    return summary


def markdown_report(s):
    """Short markdown report of a fuzz summary."""
    lines = ["# Reader fuzzing", "",
             f"Command: `{s['command']}`", "",
             f"CPU: {s['cpu']}; {s['seconds']} s for {s['inputs']} inputs ({s['reader_calls']} reader calls), "
             f"{s['seeds']} seed files" + (" (synthetic and dev pack)" if s["dev_pack_seeds"] else " (synthetic)"), "",
             f"**Untyped exceptions: {s['untyped_exceptions']}**"
             + (f" ({', '.join(s['untyped_classes'])})" if s["untyped_classes"] else "")
             + f"; **inputs that printed to stderr: {s['stderr_leaks']}**", "",
             "| target | ok | typed LungedgeError | untyped |", "|---|---|---|---|"]
    for target, c in s["counts"].items():
        lines.append(f"| {target} | {c['ok']} | {c['typed']} | {c['untyped']} |")
    lines += ["", "Typed errors by class: " + ", ".join(f"{k} {v}" for k, v in sorted(s["typed_error_classes"].items())),
              "", "| seed | inputs | ok | typed | untyped |", "|---|---|---|---|---|"]
    for name, c in sorted(s["per_seed"].items()):
        lines.append(f"| {name} | {c['inputs']} | {c['ok']} | {c['typed']} | {c['untyped']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lungedge.benchmarks.fuzz_readers", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100000, help="mutated inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="dev pack root (adds real PNG and DICOM seeds)")
    p.add_argument("--out", default=None, help="folder for results.json, report.md and saved failing inputs")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    s = run_fuzz(a.n, seed=a.seed, data_root=a.data, out=a.out, progress=not a.no_progress)
    print(f"{s['inputs']} inputs, {s['reader_calls']} reader calls in {s['seconds']} s: "
          f"{s['untyped_exceptions']} untyped exceptions {s['untyped_classes']}, {s['stderr_leaks']} stderr leaks")
    return 0 if s["untyped_exceptions"] == 0 and s["stderr_leaks"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
