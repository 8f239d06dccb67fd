"""Bundles the benchmark and the demo need: a trained baseline exported to an FP32 ONNX bundle, an INT8 variant.

The compress side owns bundle building (``compress.pipeline.export_baseline`` and ``compress.pipeline.compress``);
these functions call it when it is installed and otherwise build the same thing with the pieces that exist
(``compress.export.export_onnx``, ``runtime.bundle.write_manifest``, ONNX Runtime's static quantizer), so the
benchmark never depends on which of the two produced a bundle: it only reads manifests.
"""

import datetime
import json
import os
import subprocess

import numpy as np

from lungedge.runtime.bundle import artifact_entry, write_manifest


def git_commit(path=None):
    """HEAD commit of the repository holding ``path`` (this file by default), with ``-dirty`` when modified."""
    cwd = os.path.dirname(os.path.abspath(path or __file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _run_config(run_dir):
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _val_threshold(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("val", {}).get("threshold")


def baseline_manifest(run_dir, artifacts, name=None):
    """Manifest dict for a baseline run's export, ``artifacts`` already described with ``artifact_entry``."""
    from lungedge.models.tasks import task

    cfg = _run_config(run_dir)["config"]
    spec = task(cfg["task"])
    size = int(cfg["size"] or spec.default_size)
    classification = spec.kind == "classification"
    threshold = _val_threshold(run_dir)
    manifest = {
        "schema_version": 1,
        "name": name or f"{cfg['task']}-{cfg['arch']}-fp32",
        "task": spec.kind,
        "modality": spec.modality,
        "input": {"name": "image", "shape": [-1, 1, size, size], "dtype": "float32"},
        "output": {"name": "logits", "kind": "logits",
                   "shape": [-1, len(spec.labels)] if classification else [-1, 1, size, size]},
        "preprocessing": _run_config(run_dir).get("preprocessing") or spec.steps(size),
        "labels": list(spec.labels),
        "thresholds": ({spec.positive_label: float(threshold if threshold is not None else 0.5)} if classification
                       else {"mask": float(threshold if threshold is not None else 0.5)}),
        "artifacts": artifacts,
        "provenance": {"baseline": os.path.basename(os.path.normpath(run_dir)), "recipe": None, "calibration": None,
                       "git_commit": git_commit(), "created": _now(), "built_by": "lungedge.benchmarks.bundles"},
    }
    if classification:
        manifest["positive_label"] = spec.positive_label
    return manifest


def export_baseline_bundle(run_dir, out_dir, data_dir=None, threads=None, use_compress=True):
    """FP32 ONNX bundle of a trained baseline: ``compress.pipeline.export_baseline`` (verified export, gate,
    golden file) when installed and ``use_compress``, else a plain export with a manifest built here."""
    export_baseline = None
    if use_compress:
        try:
            from lungedge.compress.pipeline import export_baseline
        except ImportError:
            export_baseline = None
    if export_baseline is not None:
        return export_baseline(run_dir, out_dir, data_dir=data_dir, threads=threads, overwrite=True)
    from lungedge.compress.export import export_onnx
    from lungedge.models.train import load_model

    os.makedirs(out_dir, exist_ok=True)
    model, cfg = load_model(run_dir)
    export_onnx(model, os.path.join(out_dir, "model.onnx"), (cfg.size, cfg.size))
    arts = {"onnx-fp32": artifact_entry(out_dir, "model.onnx", "onnx", "fp32", "onnxruntime")}
    write_manifest(out_dir, baseline_manifest(run_dir, arts))
    return out_dir


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed real images, one image per call."""

    def __init__(self, tensors, input_name):
        self._items = iter([{input_name: t[None]} for t in tensors])

    def get_next(self):
        return next(self._items, None)


def add_int8_artifact(bundle_dir, calibration_tensors, key="onnx-int8", source="onnx-fp32"):
    """Quantize the bundle's FP32 ONNX to ONNX Runtime QDQ INT8 (U8S8, per-channel weights) on real images.

    A stand-in for the compress side's quantizer, used only when ``compress.pipeline`` is not installed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from lungedge.runtime.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    src = bundle.path_of(source)
    out_name = "model.int8.onnx"
    reader = _Calibration([np.asarray(t, np.float32) for t in calibration_tensors], manifest["input"]["name"])
    quantize_static(src, os.path.join(bundle_dir, out_name), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    artifacts = dict(manifest["artifacts"])
    artifacts[key] = artifact_entry(bundle_dir, out_name, "onnx", "int8", "onnxruntime", quant_format="QDQ",
                                    activations="uint8", weights="int8")
    manifest["artifacts"] = artifacts
    manifest["provenance"] = dict(manifest["provenance"], calibration={"images": len(calibration_tensors),
                                                                       "method": "minmax", "split": "train"})
    write_manifest(bundle_dir, manifest)
    return key
