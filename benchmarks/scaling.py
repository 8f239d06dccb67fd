# Over 400 lines on purpose: the parent (series writing, subprocess per size, fit, report) and the child it runs.
"""CT study scaling: study latency and peak memory against the number of slices, with a fitted per-slice cost.

Studies of 10, 50, 100 and 300 slices are assembled from the real CT PNGs of the dev pack (cycled when there
are fewer), and each size runs in a fresh subprocess (so its ``VmHWM`` is that study's peak), ``repeats`` times
after a warm-up of two full batches (the steady state of a process that has served a study), through the runtime's ``CtStudyPipeline`` (classifier and/or lesion segmenter, slices
in batches). The fit is least squares of the median latency on the slice count:
``latency = intercept + per_slice * slices``.

Source ``dicom`` (the default): each study is first written to disk as a CT DICOM series (int16 HU, 512 x 512 by
default, slice positions 1 mm apart) and the pipeline gets the folder, as at the bedside: it streams the series
one file at a time, so latency is end to end from files and peak RSS should not grow with the study. Source
``png`` reads every PNG into one in-memory volume first (the older harness, which holds the whole study).

    lungedge bench scaling --segmenter CT_SEG_BUNDLE [--classifier CT_CLS_BUNDLE] --data DIR [DIR ...] --out DIR
                           [--source dicom|png] [--dicom-size 512]
"""

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from lungedge.runtime.enums import BackendName
from lungedge.runtime.errors import ConfigError

DEFAULT_SLICES = (10, 50, 100, 300)
TARGET_SLICES, TARGET_S = 300, 6.0
RSS_FLAT_TOLERANCE = 0.15  # peak RSS at every size within 15 % of the smallest study's
SOURCES = ("dicom", "png")
SCHEMA = "lungedge.bench-scaling/1"


def slice_files(data_dirs, n):
    """``n`` CT image paths from the dev-pack manifests of ``data_dirs`` (every split: timing only), cycled."""
    from lungedge.runtime.datasets import read_manifest_csv

    files = sorted({r.image for d in data_dirs for r in read_manifest_csv(d)})
    if not files:
        raise ValueError(f"no images in {list(data_dirs)}")
    return [files[i % len(files)] for i in range(n)]


def display_to_hu(display):
    """Invert the lung window the dev pack's CT PNGs were rendered with (0..255 over -1350..150 HU)."""
    from lungedge.runtime.preprocess import LUNG_WINDOW

    center, width = LUNG_WINDOW
    return np.asarray(display, np.float32) * np.float32(width / 255.0) + np.float32(center - width / 2.0)


def write_dicom_series(files, folder, size=512, spacing_mm=0.7, step_mm=1.0):
    """Write CT PNGs as one anonymous CT DICOM series (int16 HU, ``size`` x ``size``); returns ``folder``."""
    import cv2
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for k, path in enumerate(files):
        display = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if display is None:
            raise ValueError(f"cannot read {path}")
        if display.shape != (size, size):
            display = cv2.resize(display, (size, size), interpolation=cv2.INTER_LINEAR)
        stored = np.round(display_to_hu(display) + 1024.0).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = os.path.join(folder, f"slice_{k:04d}.dcm")
        ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "SCALING-BENCH", "Scaling^Bench"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * step_mm]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [spacing_mm, spacing_mm], step_mm
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = size, size, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = stored.tobytes()
        if hasattr(ds, "set_original_encoding"):
            ds.set_original_encoding(False, True)
        else:  # pydicom < 2.4
            ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(name, ds)
    return folder


def _open(path, backend, threads):
    from lungedge.runtime.predictor import Predictor

    return Predictor.from_bundle(path, backend=backend, threads=threads) if path else None


def child(spec):
    """One study size in this process: warm up, then time ``repeats`` studies; report times and VmHWM."""
    import cv2

    from lungedge.benchmarks.memory import peak_rss_kb

    classifier = _open(spec.get("classifier"), spec["backend"], spec.get("threads"))
    segmenter = _open(spec.get("segmenter"), spec["backend"], spec.get("threads"))
    try:
        from lungedge.runtime.pipelines import CtStudyPipeline

        pipeline = CtStudyPipeline(classifier=classifier, lesion_segmenter=segmenter, batch_size=spec["batch"])
        run_study = pipeline.run
        how = "runtime.pipelines.CtStudyPipeline"
    except ImportError:  # an older runtime: the bundles in batches, slice by slice
        def run_study(volume, meta):
            for start in range(0, len(volume), spec["batch"]):
                items = [(s, dict(meta), {"file": "slice"}) for s in volume[start:start + spec["batch"]]]
                for p in (classifier, segmenter):
                    if p is not None:
                        p.predict_images(items)
        how = "predictor batches"
    meta = {"unit": "display", "intensity_max": 255.0, "modality": "ct", "format": "image"}
    files = spec["files"]

    def read_volume(paths):
        return np.stack([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths]).astype(np.float32)

    # Warm-up on two full batches, from the same source as the studies: ONNX Runtime plans its memory on the
    # first run of a shape and allocates that plan on the second, so only then are sessions, caches and arenas
    # at the steady state of a process that has served a study. What the studies add on top of that is what
    # grows with the study; without it a 10-slice study (one batch) would look cheaper than any longer one.
    if spec.get("warmup_series"):
        pipeline.run(spec["warmup_series"])
    else:
        run_study(read_volume([files[i % len(files)] for i in range(2 * spec["batch"])]), meta)
    before_studies_kb = peak_rss_kb()
    read_s, pipeline_s, positive = [], [], None
    series = spec.get("series")
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        if series:  # streamed from disk inside the pipeline: reading is part of the pipeline time
            volume, t1 = series, t0
            result = pipeline.run(series)
        else:
            volume = read_volume(files)
            t1 = time.perf_counter()
            result = run_study(volume, meta)
        t2 = time.perf_counter()
        read_s.append(t1 - t0)
        pipeline_s.append(t2 - t1)
        if isinstance(result, dict):
            positive = result.get("positive")
        del volume, result
    return {"slices": len(files), "read_s": read_s if not series else None, "pipeline_s": pipeline_s,
            "total_s": [a + b for a, b in zip(read_s, pipeline_s)], "vmhwm_kb": peak_rss_kb(),
            "vmhwm_before_studies_kb": before_studies_kb, "how": how + (" on a DICOM series folder" if series else ""),
            "study_positive": positive, "torch_loaded": "torch" in sys.modules}


def fit_linear(n, seconds):
    """Least squares ``seconds = intercept + per_slice * n`` with R^2."""
    n, y = np.asarray(n, np.float64), np.asarray(seconds, np.float64)
    if n.size < 2:
        return {"intercept_s": float(y[0]) if y.size else None, "per_slice_s": None, "r2": None}
    per_slice, intercept = np.polyfit(n, y, 1)
    pred = intercept + per_slice * n
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"intercept_s": float(intercept), "per_slice_s": float(per_slice), "r2": r2}


def _summary(values):
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "all": v.tolist()}


def rss_flatness(points, tolerance=RSS_FLAT_TOLERANCE):
    """Peak RSS growth of every study size against the smallest: {"reference_slices", "max_growth", "flat"}."""
    ok = sorted((p for p in points if p.get("peak_rss_mb")), key=lambda p: p["slices"])
    if len(ok) < 2:
        return {"reference_slices": None, "max_growth": None, "tolerance": tolerance, "flat": None}
    ref = ok[0]["peak_rss_mb"]
    growth = {p["slices"]: p["peak_rss_mb"] / ref - 1.0 for p in ok[1:]}
    worst = max(growth.values())
    return {"reference_slices": ok[0]["slices"], "reference_mb": ref, "growth": growth, "max_growth": worst,
            "tolerance": tolerance, "flat": bool(worst <= tolerance)}


@dataclass(frozen=True)
class ScalingConfig:
    """One CT-study scaling run: which bundles, which slices, how many repeats, on what backend.

    source: "dicom" writes each study as a DICOM series and streams it through the pipeline; "png" reads the PNGs
    into an in-memory volume first."""

    segmenter: Optional[str] = None
    classifier: Optional[str] = None
    data_dirs: Tuple[str, ...] = ()
    slices: Tuple[int, ...] = DEFAULT_SLICES
    repeats: int = 3
    batch: int = 16
    threads: int = 0
    backend: str = "onnxruntime"
    source: str = "dicom"
    dicom_size: int = 512
    timeout: int = 1800

    def __post_init__(self):
        object.__setattr__(self, "data_dirs", tuple(self.data_dirs))
        object.__setattr__(self, "slices", tuple(int(n) for n in self.slices))
        if not self.segmenter and not self.classifier:
            raise ConfigError("give a CT lesion segmenter bundle, a CT classifier bundle, or both")
        if self.source not in SOURCES:
            raise ConfigError(f"source {self.source!r} is not one of {SOURCES}")


def run_scaling(config=None, out=None, progress=True, work_dir=None, **fields):
    """Study latency and peak RSS per slice count (one subprocess each), the linear fit and the 300-slice target.

    config: a ScalingConfig, or its fields as keywords. work_dir: where DICOM series are written (a temporary
    folder by default)."""
    import shutil
    import tempfile

    cfg = config or ScalingConfig(**fields)
    own_work = work_dir is None and cfg.source == "dicom"
    work_dir = tempfile.mkdtemp(prefix="lungedge-scaling-") if own_work else work_dir
    try:
        return _run_scaling(cfg, out, progress, work_dir)
    finally:
        if own_work:
            shutil.rmtree(work_dir, ignore_errors=True)


def _run_scaling(cfg, out, progress, work_dir):
    from lungedge.benchmarks.environment import describe

    segmenter, classifier, data_dirs, slices = cfg.segmenter, cfg.classifier, cfg.data_dirs, cfg.slices
    repeats, batch, backend, source, dicom_size, timeout = (cfg.repeats, cfg.batch, cfg.backend, cfg.source,
                                                             cfg.dicom_size, cfg.timeout)
    import shutil

    threads = cfg.threads or os.cpu_count() or 1
    points = []
    steps = list(slices)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="CT study scaling", unit="size")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    warmup = None
    if source == "dicom":
        warmup = write_dicom_series(slice_files(data_dirs, 2 * batch), os.path.join(work_dir, "warmup"), dicom_size)
    for n in steps:
        spec = {"segmenter": segmenter, "classifier": classifier, "backend": backend, "threads": threads,
                "batch": batch, "repeats": repeats, "files": [os.path.abspath(f) for f in slice_files(data_dirs, n)]}
        if source == "dicom":
            spec["series"] = write_dicom_series(spec["files"], os.path.join(work_dir, f"series-{n}"), dicom_size)
            spec["warmup_series"] = warmup
        cmd = [sys.executable, "-m", "lungedge.benchmarks.scaling", "--child", json.dumps(spec)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            points.append({"slices": n, "error": f"timed out after {timeout} s"})
            continue
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            points.append({"slices": n, "error": f"exit {done.returncode}: {tail}"})
            continue
        r = json.loads(lines[-1])
        median = float(np.median(r["total_s"]))
        points.append({"slices": n, "latency_s": _summary(r["total_s"]),
                       "read_s": _summary(r["read_s"]) if r.get("read_s") else None,
                       "pipeline_s": _summary(r["pipeline_s"]), "peak_rss_mb": r["vmhwm_kb"] / 1024.0,
                       "peak_rss_before_studies_mb": (r["vmhwm_before_studies_kb"] / 1024.0
                                                      if r.get("vmhwm_before_studies_kb") else None),
                       "ms_per_slice": 1000.0 * median / n, "how": r["how"], "torch_loaded": r["torch_loaded"]})
        if source == "dicom":
            shutil.rmtree(spec["series"], ignore_errors=True)
    if warmup:
        shutil.rmtree(warmup, ignore_errors=True)
    ok = [p for p in points if "error" not in p]
    fit = fit_linear([p["slices"] for p in ok], [p["latency_s"]["median"] for p in ok])
    at_target = next((p for p in ok if p["slices"] == TARGET_SLICES), None)
    results = {
        "schema": SCHEMA, "kind": "scaling",
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "bundles": {"segmenter": segmenter and os.path.abspath(segmenter),
                    "classifier": classifier and os.path.abspath(classifier)},
        "backend": backend, "threads": threads, "batch": batch, "repeats": repeats,
        "data_dirs": [os.path.abspath(d) for d in data_dirs], "points": points, "fit": fit,
        "source": source, "dicom_size": dicom_size if source == "dicom" else None,
        "rss_flatness": rss_flatness(points),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "target_slices": TARGET_SLICES, "target_s": TARGET_S,
        "target_latency_s": at_target["latency_s"]["median"] if at_target else None,
        "meets_target": (at_target["latency_s"]["median"] < TARGET_S) if at_target else None,
        "command": _command(dataclasses.replace(cfg, threads=threads), out),
        "environment": describe(threads),
    }
    if out:
        write_scaling(results, out)
    return results


def _command(cfg, out):
    """The ``lungedge bench scaling`` command that reproduces a run."""
    segmenter, classifier, data_dirs, slices, backend, source = (cfg.segmenter, cfg.classifier, cfg.data_dirs,
                                                                 cfg.slices, cfg.backend, cfg.source)
    repeats, batch, threads, dicom_size = cfg.repeats, cfg.batch, cfg.threads, cfg.dicom_size
    parts = ["lungedge", "bench", "scaling"]
    if segmenter:
        parts += ["--segmenter", segmenter]
    if classifier:
        parts += ["--classifier", classifier]
    parts += ["--data"] + list(data_dirs) + ["--slices"] + [str(s) for s in slices]
    parts += ["--repeats", str(repeats), "--batch", str(batch), "--threads", str(threads)]
    if backend != BackendName.ONNXRUNTIME:
        parts += ["--backend", backend]
    parts += ["--source", source] + (["--dicom-size", str(dicom_size)] if source == "dicom" else [])
    if out:
        parts += ["--out", out]
    return " ".join(parts)


def render_markdown(results, heading_level=1):
    from lungedge.benchmarks.report import fmt, md_table

    h = "#" * heading_level
    fit = results["fit"]
    rows = []
    for p in results["points"]:
        if "error" in p:
            rows.append([p["slices"], "error: " + p["error"], "", "", "", "", ""])
            continue
        rows.append([p["slices"], fmt(p["latency_s"]["median"], 2),
                     f"{fmt(p['latency_s']['min'], 2)} - {fmt(p['latency_s']['max'], 2)}",
                     fmt((p.get("read_s") or {}).get("median"), 2), fmt(p["pipeline_s"]["median"], 2),
                     fmt(p.get("ms_per_slice"), 1), fmt(p["peak_rss_mb"], 0)])
    per_slice = fit.get("per_slice_s")
    source = results.get("source", "png")
    how = (f"each study a {results.get('dicom_size')} x {results.get('dicom_size')} CT DICOM series on disk, streamed "
           "by the pipeline one file at a time (read s is part of pipeline s)" if source == "dicom" else
           "PNG slices read into one in-memory volume, then the pipeline")
    flat = results.get("rss_flatness") or {}
    flat_line = ""
    if flat.get("flat") is not None:
        flat_line = (f"Peak RSS: {fmt(flat['reference_mb'], 0)} MB at {flat['reference_slices']} slices, at most "
                     f"{100 * flat['max_growth']:+.1f} % above it at larger studies: flat within "
                     f"{100 * flat['tolerance']:.0f} % " + ("**met**" if flat["flat"] else "**missed**") + ".")
    lines = [f"{h} CT study scaling", "",
             f"Bundles: {results['bundles']}; {results['backend']}, {results['threads']} threads, slices in batches of "
             f"{results['batch']}, median of {results['repeats']} studies after a warm-up; one process per study size; "
             f"{how}." + (f" Load average {results['loadavg_before'][0]:.2f} before, {results['loadavg_after'][0]:.2f} "
                          f"after (other processes share these {results['environment'].get('logical_cpus')} CPUs)."
                          if results.get("loadavg_before") else ""),
             "", "```", results["command"], "```", "",
             md_table(["slices", "latency s (median)", "min - max", "read s", "pipeline s", "ms / slice",
                       "peak RSS MB"], rows), "", flat_line, "",
             f"Fit: {fmt(fit.get('intercept_s'), 3)} s + {fmt(per_slice * 1000 if per_slice else None, 2)} ms per slice "
             f"(R^2 {fmt(fit.get('r2'), 4)}).",
             f"Target: a {results['target_slices']}-slice study in under {results['target_s']:.0f} s: "
             + {True: "met", False: "missed", None: "not measured"}[results["meets_target"]]
             + (f" ({fmt(results['target_latency_s'], 2)} s)" if results["target_latency_s"] is not None else "") + ".",
             "", "![CT study scaling](scaling.png)" if heading_level == 1 else ""]
    return "\n".join(lines).rstrip() + "\n"


def write_scaling(results, out_dir):
    from lungedge.benchmarks import plots
    from lungedge.benchmarks.report import save_results

    os.makedirs(out_dir, exist_ok=True)
    save_results(results, os.path.join(out_dir, "results.json"))
    if any("error" not in p for p in results["points"]):
        plots.scaling(results, os.path.join(out_dir, "scaling.png"))
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(results))


def main(argv=None):
    p = argparse.ArgumentParser(prog="lungedge bench scaling", description="CT study latency and memory vs slices.")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--segmenter", help="CT lesion segmentation bundle")
    p.add_argument("--classifier", help="CT slice classification bundle")
    p.add_argument("--data", nargs="+", default=[], help="dev-pack folders with CT PNGs (ct-seg, ct-cls)")
    p.add_argument("--slices", nargs="+", type=int, default=list(DEFAULT_SLICES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backend", default="onnxruntime", choices=[*BackendName.values(), "auto"],
                   help="auto: each bundle's measured CPU default (manifest cpu_default)")
    p.add_argument("--source", default="dicom", choices=SOURCES,
                   help="dicom: write each study as a DICOM series and stream it from disk (default); "
                        "png: read the PNGs into an in-memory volume first")
    p.add_argument("--dicom-size", type=int, default=512, help="rows and columns of the written DICOM slices")
    p.add_argument("--out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if not a.data:
        p.error("--data is required")
    cfg = ScalingConfig(segmenter=a.segmenter, classifier=a.classifier, data_dirs=a.data, slices=a.slices,
                        repeats=a.repeats, batch=a.batch, threads=a.threads, backend=a.backend, source=a.source,
                        dicom_size=a.dicom_size)
    results = run_scaling(cfg, a.out, progress=not a.no_progress)
    print(render_markdown(results, heading_level=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
