"""Stand-in bundles for latency work where the trained bundles are not at hand: same architectures, untrained.

    python tools/standin_bundles.py --data ../shared/data/xray-cls --out bundles/standin [--size 128]

Writes training-run folders holding untrained registry models (DenseNet-121 baseline, student_m) and exports them:
``<out>/xray-cls-densenet121-baseline`` (FP32 ONNX) and ``<out>/xray-cls-student_m`` (FP32 + ONNX Runtime QDQ
INT8 from the compress side's quantizer, calibrated on 32 real train images through the runtime's preprocessing, and a golden file so that
``lungedge selftest`` and the bedside service accept it). Latency and memory do not depend on
the weights' values, so these time like the real models of the same shape (the real compressed student is also
pruned, so it is smaller and faster than this unpruned one); accuracy numbers from them mean nothing.
"""

import argparse
import dataclasses
import json
import os
import sys


def make_run(out_dir, task_name, arch, size, data_dir, seed=0):
    """A training-run folder (config.json + best.pt) with an untrained registry model."""
    import torch

    from lungedge.models.registry import build
    from lungedge.models.train import TrainConfig
    from lungedge.runtime.tasks import task

    spec = task(task_name)
    torch.manual_seed(seed)
    model = build(arch, spec.num_outputs).eval()
    os.makedirs(out_dir, exist_ok=True)
    cfg = TrainConfig(task=task_name, data=data_dir, arch=arch, size=size, epochs=1)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as fh:
        json.dump({"config": dataclasses.asdict(cfg), "task": dataclasses.asdict(spec),
                   "preprocessing": spec.steps(size), "note": "untrained stand-in for latency measurements"}, fh)
    torch.save({"model": model.state_dict()}, os.path.join(out_dir, "best.pt"))
    return out_dir


def add_int8(bundle_dir, records, steps):
    """INT8 QDQ artifact from the compress side's own quantizer (ORT CPU flavour, minmax, per channel) on real
    train images: the same pre-processing and QDQ rules as ``lungedge compress``, without its accuracy gate."""
    from lungedge.compress.calibration import CalibrationReader
    from lungedge.compress.quantize import QuantConfig, quantize_onnx
    from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest

    bundle = Bundle.load(bundle_dir)
    reader = CalibrationReader(records, steps, input_name=bundle.manifest["input"]["name"], batch_size=8)
    out = os.path.join(bundle_dir, "model.int8.onnx")
    report = quantize_onnx(bundle.path_of("onnx-fp32"), out, reader, QuantConfig(num_images=len(records)))
    artifacts = dict(bundle.manifest["artifacts"])
    artifacts["onnx-int8"] = artifact_entry(bundle_dir, "model.int8.onnx", "onnx", "int8", "onnxruntime",
                                            flavour="ort_cpu")
    write_manifest(bundle_dir, dict(bundle.manifest, artifacts=artifacts,
                                    provenance=dict(bundle.manifest["provenance"], calibration=report["calibration"])))


def add_golden(bundle_dir, tensors):
    """golden.npz from the FP32 artifact on ONNX Runtime (what ``lungedge selftest`` and the service check)."""
    import numpy as np

    from lungedge.runtime.backends import create_backend
    from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest

    bundle = Bundle.load(bundle_dir)
    inputs = np.stack(tensors).astype(np.float32)
    with create_backend("onnxruntime", bundle.path_of("onnx-fp32"), threads=1) as backend:
        outputs = backend.run(inputs)
    np.savez_compressed(os.path.join(bundle_dir, "golden.npz"), inputs=inputs, outputs=outputs)
    entry = artifact_entry(bundle_dir, "golden.npz", "npz", "fp32", "none")
    scale = max(1.0, float(np.abs(outputs).max()))
    manifest = dict(bundle.manifest, golden={"path": "golden.npz", "sha256": entry["sha256"],
                                             "tolerances": {"fp32": 1e-2 * scale, "fp16": 5e-2 * scale,
                                                            "int8": 0.5 * scale}})
    write_manifest(bundle_dir, manifest)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--task", default="xray-cls")
    p.add_argument("--baseline-arch", default="densenet121")
    p.add_argument("--student-arch", default="student_m")
    a = p.parse_args(argv)

    from lungedge.benchmarks.bundles import export_baseline_bundle
    from lungedge.runtime.bundle import Bundle
    from lungedge.runtime.datasets import read_manifest_csv, select
    from lungedge.runtime.io import read_any
    from lungedge.runtime.preprocess import preprocess

    runs = os.path.join(a.out, "runs")
    base_run = make_run(os.path.join(runs, f"{a.task}-{a.baseline_arch}"), a.task, a.baseline_arch, a.size, a.data)
    student_run = make_run(os.path.join(runs, f"{a.task}-{a.student_arch}"), a.task, a.student_arch, a.size, a.data)
    base = export_baseline_bundle(base_run, os.path.join(a.out, f"{a.task}-{a.baseline_arch}-baseline"),
                                  use_compress=False)
    student = export_baseline_bundle(student_run, os.path.join(a.out, f"{a.task}-{a.student_arch}"),
                                     use_compress=False)
    steps = Bundle.load(student).manifest["preprocessing"]
    records = select(read_manifest_csv(a.data), split="train")[:32]
    tensors = [preprocess(*read_any(r.image), steps)[0] for r in records]
    add_int8(student, records, steps)
    add_golden(student, tensors[:4])
    print(json.dumps({"baseline_run": base_run, "baseline_bundle": base, "student_bundle": student}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
