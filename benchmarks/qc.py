"""``lungedge bench qc``: how often quality control refuses out-of-scope inputs and accepts in-scope ones.

    lungedge bench qc --data ../shared/data [--xray-bundle B] [--ct-bundle B] [--out docs/benchmarks/qc]

Out-of-scope categories: lateral films (xray-qc; as the PNG files, and wrapped as DX DICOM whose
ViewPosition says LL, as a lateral film's header would), CT slices (ct-cls test) sent to the X-ray bundle,
X-rays (xray-cls test) sent to the CT bundle, natural images (scikit-image's ``skimage.data``, written as
PNG), and synthetic cases made from xray-cls test images: uniform noise, constant, inverted polarity,
rotated 90 degrees, heavily cropped (the central 30% of each side); CT bundles also get inverted and rotated
copies of ct-cls test slices. In-distribution: the test split of
xray-cls per source and of ct-cls. Every input goes through the reader, as a user's file would.

Without bundles only the header and pixel stages run (``QualityControl`` with the default limits of the
modality); with bundles the whole path runs (``Predictor``: header, pixels, then the model's OOD scores; with
``--xray-lung-bundle``, ``XrayPipeline``: the lung-field check of the classifier's bands between the two).
With an X-ray bundle the cost of quality control is timed too: batch-1 end-to-end latency (read, checks,
preprocess, inference) with and without it, interleaved over the same files.
"""

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

from lungedge.runtime.errors import LungedgeError
from lungedge.runtime.io import read_any
from lungedge.runtime.quality import QualityControl

# Refusal targets of the issue (fraction refused), and the acceptance target of in-distribution images.
REFUSAL_TARGETS = {"lateral": 0.95, "ct_slices": 0.99, "xray_to_ct": 0.99, "natural": 0.99, "noise": 0.99}
ACCEPT_TARGET = 0.97
CROP_KEEP = 0.3


def _rows(folder, split=None):
    with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if split is None or r["split"] == split]


def _write_png(path, array):
    if not cv2.imwrite(path, array):
        raise OSError(f"cannot write {path}")
    return path


def natural_images(folder):
    """skimage.data images shipped with scikit-image (no download), written as PNG; [(name, path)]."""
    import skimage.data as skd

    out = []
    for name in sorted(skd.__all__):
        if name in ("lfw_subset", "lbp_frontal_face_cascade_filename", "stereo_motorcycle") or name.startswith("_"):
            continue  # 25-px faces (below the readers' minimum side), a file name, a tuple
        try:
            # binary_blobs draws random blobs: seeded, so every run judges the same picture.
            image = getattr(skd, name)(**({"rng": 0} if name == "binary_blobs" else {}))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # needs pooch and a network (under pytest skimage raises a Skipped exception)
            continue
        image = np.asarray(image)
        if image.ndim not in (2, 3) or min(image.shape[:2]) < 32:
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.dtype != np.uint8:
            image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
        out.append((name, _write_png(os.path.join(folder, f"natural_{name}.png"), image)))
    return out


def synthetic_cases(sources, folder, seed=0):
    """{kind: [(name, path)]} from 8-bit X-ray files: noise, constant, inverted, rotated 90, cropped."""
    rng = np.random.default_rng(seed)
    cases = {k: [] for k in ("noise", "constant", "inverted", "rotated_90", "cropped")}
    for src in sources:
        image = cv2.imread(src, cv2.IMREAD_GRAYSCALE)
        stem = os.path.splitext(os.path.basename(src))[0]
        h, w = image.shape
        y0, x0 = int(h * (1 - CROP_KEEP) / 2), int(w * (1 - CROP_KEEP) / 2)
        made = {"noise": rng.integers(0, 256, image.shape).astype(np.uint8),
                "constant": np.full_like(image, int(image.mean())),
                "inverted": 255 - image,
                "rotated_90": np.ascontiguousarray(np.rot90(image)),
                "cropped": image[y0:h - y0, x0:w - x0]}
        for kind, array in made.items():
            cases[kind].append((stem, _write_png(os.path.join(folder, f"{kind}_{stem}.png"), array)))
    return cases


def lateral_dicoms(sources, folder):
    """The lateral films wrapped as DX DICOM with ViewPosition LL and BodyPartExamined CHEST."""
    from lungedge.benchmarks.fuzz_readers import _dicom_bytes

    out = []
    for src in sources:
        stem = os.path.splitext(os.path.basename(src))[0]
        data = _dicom_bytes("DX", pixels=cv2.imread(src, cv2.IMREAD_GRAYSCALE), view="LL")
        path = os.path.join(folder, f"lateral_{stem}.dcm")
        with open(path, "wb") as fh:
            fh.write(data)
        out.append((stem, path))
    return out


class Judge:
    """Outcome of one file: "accept", "warn", "refuse" (not assessed) or "error", with the reasons."""

    def __init__(self, modality, bundle=None, threads=None, lung_bundle=None):
        self.modality = modality
        self.predictor = self.runner = None
        self.qc = QualityControl({}, modality)
        if bundle:
            from lungedge.runtime.predictor import Predictor

            self.predictor = Predictor.from_bundle(bundle, threads=threads)
            if self.predictor.modality != modality or self.predictor.task != "classification":
                raise LungedgeError(f"{bundle}: expected a {modality} classification bundle")
            self.runner = _xray_runner(self.predictor, lung_bundle, threads)

    def __call__(self, path):
        try:
            if self.predictor is not None:
                quality = self.runner.predict(path)["quality"]
                return quality["status"], [r["reason"] for r in quality["reasons"] if r["status"] == quality["status"]]
            array, meta = read_any(path)
            a = self.qc.assess(array, meta)
            return a.status, [f.reason for f in a.findings if f.status == a.status]
        except LungedgeError as exc:
            return "error", [type(exc).__name__ + ": " + str(exc)[:80]]


def _tally(judge, items):
    counts = {"n": 0, "accept": 0, "warn": 0, "refuse": 0, "error": 0, "reasons": {}}
    for _, path in items:
        status, reasons = judge(path)
        counts["n"] += 1
        counts[status] += 1
        if status in ("refuse", "error"):
            for reason in reasons[:1] if status == "error" else reasons:
                counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1
    counts["refused_rate"] = counts["refuse"] / counts["n"] if counts["n"] else None
    counts["accepted_rate"] = (counts["accept"] + counts["warn"]) / counts["n"] if counts["n"] else None
    return counts


def _judged(row, successes):
    """``row`` with its rate's 95 % Wilson interval (``interval``), whether the point estimate reaches the target
    (``meets_target``; None without a target) and the verdict on the interval (``verdict``: met / unproven /
    missed, as ``lungedge.metrics.rate_verdict``; None without a target)."""
    from lungedge.metrics import proportion_interval, rate_verdict

    n, target = row["n"], row["target"]
    row["interval"] = list(proportion_interval(successes, n)) if n else None
    row["meets_target"] = None if target is None or not n else successes / n >= target
    row["verdict"] = None if target is None or not n else rate_verdict(successes, n, target)
    return row


def _xray_runner(predictor, lung_bundle, threads):
    """What ``predict(path)`` goes through: the X-ray pipeline with its lung crop when a lung bundle is given (a
    classifier trained on lung crops needs it), else the predictor itself."""
    if not lung_bundle:
        return predictor
    from lungedge.runtime.pipelines import XrayPipeline
    from lungedge.runtime.predictor import Predictor

    return XrayPipeline(predictor, Predictor.from_bundle(lung_bundle, threads=threads))


def cost(bundle, paths, rounds=3, threads=None, lung_bundle=None):
    """Median batch-1 end-to-end latency (ms) per file with and without quality control, interleaved."""
    from lungedge.runtime.predictor import Predictor

    on_predictor = Predictor.from_bundle(bundle, threads=threads)
    off_predictor = Predictor.from_bundle(bundle, threads=threads)
    off_predictor.quality = QualityControl({"enabled": False}, off_predictor.modality)
    off_predictor.ood, off_predictor.ood_note = None, "timing without quality control"
    on = _xray_runner(on_predictor, lung_bundle, threads)
    off = _xray_runner(off_predictor, lung_bundle, threads)
    if getattr(off, "lung_check", None) is not None:  # the lung-field check is quality control too
        off.lung_check, off.lung_check_note = None, "timing without quality control"
    times = {"with_qc": [], "without_qc": []}
    for path in paths[:5]:  # warm-up
        on.predict(path)
        off.predict(path)
    for _ in range(rounds):
        for path in paths:
            for name, predictor in (("with_qc", on), ("without_qc", off)):
                start = time.perf_counter()
                predictor.predict(path)
                times[name].append((time.perf_counter() - start) * 1000.0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    # The checks alone, on already-read images (what the overhead consists of besides the feature output).
    arrays = [read_any(p) for p in paths]
    start = time.perf_counter()
    for array, meta in arrays:
        on_predictor.assess(array, meta)
    checks = (time.perf_counter() - start) * 1000.0 / len(arrays)
    return {"images": len(paths), "rounds": rounds, "median_ms": med, "pixel_header_checks_ms": checks,
            "overhead": med["with_qc"] / med["without_qc"] - 1.0, "artifact": on_predictor.artifact_key,
            "lung_bundle": lung_bundle,
            "threads": threads}


def run_qc_bench(data, xray_bundle=None, ct_bundle=None, out=None, max_per_category=0, threads=None,
                 cost_images=60, seed=0, command=None, xray_lung_bundle=None, modalities=("xray", "ct")):
    """All categories through the checks of each of ``modalities``; returns the results dict (and writes it to
    ``out``)."""
    from tqdm import tqdm

    unknown = set(modalities) - {"xray", "ct"}
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: ['ct', 'xray']")
    work = tempfile.mkdtemp(prefix="lungedge-qc-")
    try:
        xray_dir, ct_dir, qc_dir = (os.path.join(data, d) for d in ("xray-cls", "ct-cls", "xray-qc"))
        cap = (lambda items: items[:max_per_category]) if max_per_category else (lambda items: items)
        xray_test = _rows(xray_dir, "test")
        xray_by_source = {}
        for r in xray_test:
            xray_by_source.setdefault(r["source"], []).append((r["file"], os.path.join(xray_dir, r["file"])))
        ct_test = [(r["file"], os.path.join(ct_dir, r["file"])) for r in _rows(ct_dir, "test")]
        laterals = [(r["file"], os.path.join(qc_dir, r["file"])) for r in _rows(qc_dir)]
        all_xray = [item for items in xray_by_source.values() for item in items]
        synth_sources = [p for _, p in all_xray[::max(1, len(all_xray) // 60)]][:60]
        synthetic = synthetic_cases(synth_sources, work, seed)
        ct_synthetic = synthetic_cases([p for _, p in ct_test[::max(1, len(ct_test) // 60)]][:60], work, seed)
        natural = natural_images(work)
        plan = {"xray": {"bundle": xray_bundle,
                         "in_distribution": {f"xray-cls test: {s}": cap(v) for s, v in sorted(xray_by_source.items())},
                         "out_of_scope": {"lateral films (PNG)": ("lateral", laterals),
                                          "lateral films (DICOM, ViewPosition LL)":
                                              ("lateral", lateral_dicoms([p for _, p in laterals], work)),
                                          "CT slices (ct-cls test)": ("ct_slices", cap(ct_test)),
                                          "natural images (skimage.data)": ("natural", natural),
                                          **{f"synthetic: {k}": ("noise" if k == "noise" else None, v)
                                             for k, v in synthetic.items()}}},
                "ct": {"bundle": ct_bundle,
                       "in_distribution": {"ct-cls test": cap(ct_test)},
                       "out_of_scope": {"X-rays (xray-cls test)": ("xray_to_ct", cap(all_xray)),
                                        "natural images (skimage.data)": ("natural", natural),
                                        "synthetic: noise": ("noise", synthetic["noise"]),
                                        **{f"synthetic: {k} (CT slices)": (None, ct_synthetic[k])
                                           for k in ("inverted", "rotated_90")}}}}
        results = {"data": os.path.abspath(data), "rows": [], "cost": None}
        for modality, part in plan.items():
            if modality not in modalities:
                continue
            lung_bundle = xray_lung_bundle if modality == "xray" else None
            judge = Judge(modality, part["bundle"], threads, lung_bundle)
            stages = _stages(part["bundle"], lung_bundle)
            for name, items in tqdm(part["in_distribution"].items(), desc=f"{modality} in-distribution",
                                    file=sys.stderr, leave=False):
                row = dict(_tally(judge, items), modality=modality, category=name, kind="in_distribution",
                           stages=stages, target=ACCEPT_TARGET)
                results["rows"].append(_judged(row, row["accept"] + row["warn"]))
            for name, (key, items) in tqdm(part["out_of_scope"].items(), desc=f"{modality} out of scope",
                                           file=sys.stderr, leave=False):
                target = REFUSAL_TARGETS.get(key)
                row = dict(_tally(judge, items), modality=modality, category=name, kind="out_of_scope",
                           stages=stages, target=target)
                results["rows"].append(_judged(row, row["refuse"]))
            results.setdefault("bundles", {})[modality] = _bundle_info(part["bundle"])
        if xray_bundle and cost_images and "xray" in modalities:
            paths = [p for _, p in all_xray[::max(1, len(all_xray) // cost_images)]][:cost_images]
            results["cost"] = cost(xray_bundle, paths, threads=threads, lung_bundle=xray_lung_bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from lungedge.benchmarks.environment import cpu_model, library_versions

    results.update(cpu=cpu_model(), cpus=os.cpu_count(), libraries=library_versions(), command=command)
    if out:
        from lungedge.benchmarks.report import write_json_and_markdown

        write_json_and_markdown(out, results, markdown_report(results))
    return results


def _manifest(path):
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _stages(bundle, lung_bundle):
    """The stages a bundle's inputs go through (the lung-field check needs its bands and the lung bundle)."""
    if not bundle:
        return "header + pixels (no bundle)"
    quality = _manifest(bundle).get("quality") or {}
    stages = ["header", "pixels"] + (["modality check"] if quality.get("modality_check") else [])
    stages += ["orientation check"] if quality.get("orientation_check") else []
    stages += (["lung fields"] if lung_bundle and quality.get("lung_fields") else []) + ["model OOD"]
    return " + ".join(stages)


def _bundle_info(path):
    if not path:
        return None
    m = _manifest(path)
    ood = (m.get("quality") or {}).get("ood") or {}
    lung_fields = (m.get("quality") or {}).get("lung_fields")
    modality_check = (m.get("quality") or {}).get("modality_check")
    orientation = (m.get("quality") or {}).get("orientation_check")
    return {"path": path, "name": m["name"], "ood_artifacts": sorted(ood),
            "modality_check": None if modality_check is None else
            {k: modality_check.get(k) for k in ("other_modality", "threshold", "acceptance", "val_accepted",
                                                "fitted_on", "calibrated_on")},
            "orientation_check": None if orientation is None else
            {"fitted_on": orientation.get("fitted_on"), "calibrated_on": orientation.get("calibrated_on"),
             "checks": {k: {f: c.get(f) for f in ("threshold", "val_accepted", "train_transformed_refused")}
                        for k, c in sorted(orientation["checks"].items())}},
            "acceptance": sorted({e.get("acceptance") for e in ood.values()}),
            "ood_calibration": {k: {f: e.get(f) for f in ("thresholds", "rule", "min_source_acceptance",
                                                          "val_accepted_by_source", "calibrated_on")}
                                for k, e in sorted(ood.items())},
            "lung_fields": None if lung_fields is None else
            {k: lung_fields.get(k) for k in ("segmenter", "acceptance", "accepted", "fitted_on", "bands")}}


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _rate(rate, row):
    interval = row.get("interval")
    return _pct(rate) + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _verdict(row):
    verdict = row.get("verdict")
    return "-" if verdict is None else (f"**{verdict}**" if verdict == "missed" else verdict)


def _reasons(row):
    return ", ".join(f"{k} {v}" for k, v in sorted(row["reasons"].items(), key=lambda kv: -kv[1])[:3])


def markdown_report(r):
    """The refusal and acceptance tables (and the cost) as markdown."""
    lines = ["# Input quality control: refusals and acceptance", "", f"Command: `{r['command']}`", "",
             f"CPU: {r['cpu']} ({r['cpus']} logical CPUs).", ""]
    for modality, info in r["bundles"].items():
        lines.append(f"- {modality}: " + (f"bundle `{info['name']}` ({info['path']}), OOD calibrated for "
                                          f"{', '.join(info['ood_artifacts']) or 'no artifact'} at "
                                          f"{info['acceptance']} validation acceptance per score"
                                          if info else "no bundle: header and pixel stages only"))
        for key, cal in ((info or {}).get("ood_calibration") or {}).items():
            scores = ", ".join(f"{k} <= {v:.4g}" for k, v in cal["thresholds"].items())
            if cal.get("rule"):
                by_source = ", ".join(f"{g} {v['accepted']}/{v['n']}" for g, v in cal["val_accepted_by_source"].items())
                floor = (f"rule {cal['rule']}, at least {_pct(cal['min_source_acceptance'])} of every validation "
                         f"source ({by_source})")
            else:
                floor = "pooled acceptance only, no floor per source"
            lines.append(f"  - OOD {key}: {scores}; {floor}")
        mc = (info or {}).get("modality_check")
        if mc:
            lines.append(f"  - modality check against {mc['other_modality']}: fitted on {mc['fitted_on']}; threshold "
                         f"{mc['threshold']:.4g} accepts {_pct(mc['val_accepted'])} of the {mc['calibrated_on']}")
        oc = (info or {}).get("orientation_check")
        if oc:
            checks = "; ".join(f"{k} below {c['threshold']:.3g} refused (accepts {_pct(c['val_accepted'])} of the "
                               f"validation images, refuses {_pct(c['train_transformed_refused'])} of the {k} "
                               "training copies)" for k, c in oc["checks"].items())
            lines.append(f"  - orientation check: fitted on {oc['fitted_on']}, {oc['calibrated_on']}: {checks}")
        lung = (info or {}).get("lung_fields")
        if lung:
            bands = ", ".join(f"{k} " + " / ".join(f"{side} {v:.3g}" for side, v in b.items())
                              for k, b in lung["bands"].items())
            lines.append(f"  - lung fields (segmenter `{lung['segmenter']}`): bands fitted on {lung['fitted_on']} "
                         f"at {lung['acceptance']} joint acceptance (accepted {_pct(lung['accepted'])} of them): "
                         f"{bands}")
    lines += ["", "Verdicts judge the 95 % Wilson interval of each rate: **met** when its bound reaches the target, "
              "**unproven** when only the point estimate does (too few images to show it), **missed** otherwise. "
              "The interval treats images as independent; several images of one patient make it too narrow.",
              "", "| sent to | category | stages | n | refused [95% CI] | warned | errors | target | verdict | "
              "top reasons |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["kind"] != "out_of_scope":
            continue
        target = f">= {_pct(row['target'])} refused" if row["target"] else "-"
        lines.append(f"| {row['modality']} | {row['category']} | {row['stages']} | {row['n']} | "
                     f"{_rate(row['refused_rate'], row)} | {row['warn']} | {row['error']} | {target} | "
                     f"{_verdict(row)} | {_reasons(row)} |")
    lines += ["", "| bundle modality | in-distribution subgroup | stages | n | accepted (incl. warned) [95% CI] | "
              "refused | target | verdict | top refusal reasons |", "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["kind"] != "in_distribution":
            continue
        lines.append(f"| {row['modality']} | {row['category']} | {row['stages']} | {row['n']} | "
                     f"{_rate(row['accepted_rate'], row)} | {row['refuse']} | >= {_pct(row['target'])} | "
                     f"{_verdict(row)} | {_reasons(row)} |")
    c = r.get("cost")
    if c:
        lines += ["", f"Cost (X-ray bundle, artifact {c['artifact']}, batch 1, read + checks + preprocess + "
                  f"inference, median over {c['images']} test files x {c['rounds']} interleaved rounds): "
                  f"{c['median_ms']['with_qc']:.2f} ms with quality control, {c['median_ms']['without_qc']:.2f} ms "
                  f"without: **{100 * c['overhead']:+.1f}%** (target <= +10%). Header and pixel checks alone: "
                  f"{c['pixel_header_checks_ms']:.2f} ms per image."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="lungedge bench qc", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dev pack root (holding xray-cls, ct-cls, xray-qc)")
    p.add_argument("--xray-bundle", help="X-ray classification bundle (else header and pixel stages only)")
    p.add_argument("--ct-bundle", help="CT classification bundle (else header and pixel stages only)")
    p.add_argument("--xray-lung-bundle", help="lung bundle: X-rays go through XrayPipeline's lung crop (needed by "
                                              "classifiers trained on lung crops)")
    p.add_argument("--out", help="folder for results.json and report.md")
    p.add_argument("--max-per-category", type=int, default=0, help="0: all files")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--cost-images", type=int, default=60, help="files timed for the cost (0: skip)")
    p.add_argument("--modalities", nargs="+", default=["xray", "ct"], choices=["xray", "ct"],
                   help="bundles' modalities to measure (default both)")
    a = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    r = run_qc_bench(a.data, a.xray_bundle, a.ct_bundle, a.out, a.max_per_category, a.threads, a.cost_images,
                     command="lungedge bench qc " + " ".join(argv), xray_lung_bundle=a.xray_lung_bundle,
                     modalities=tuple(a.modalities))
    print(markdown_report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
