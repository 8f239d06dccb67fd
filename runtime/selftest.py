"""Bundle self-test: run the golden inputs on a backend and compare with the recorded ONNX FP32 outputs.

The manifest's ``golden`` entry names an ``.npz`` with ``inputs`` (preprocessed NCHW float32) and ``outputs``
(the FP32 ONNX model's first output) plus a max-abs-diff tolerance per precision.
"""

import os

import numpy as np

from lungedge.runtime.backends import create_backend
from lungedge.runtime.bundle import Bundle
from lungedge.runtime.enums import BackendName
from lungedge.runtime.errors import BundleError


def load_golden(bundle):
    """(inputs, outputs, tolerances) from a loaded bundle's golden file."""
    golden = bundle.manifest.get("golden")
    if not golden:
        raise BundleError(f"bundle {bundle.manifest['name']!r} has no golden inputs; rebuild it with lungedge export")
    try:
        with np.load(os.path.join(bundle.root, golden["path"])) as data:
            inputs, outputs = data["inputs"].astype(np.float32), data["outputs"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"golden file {golden['path']!r} is unreadable or lacks inputs/outputs: {exc}") from None
    if inputs.ndim != 4 or inputs.shape[0] != outputs.shape[0]:
        raise BundleError(f"golden inputs {inputs.shape} and outputs {outputs.shape} do not pair up")
    return inputs, outputs, dict(golden.get("tolerances", {}))


def run_selftest(bundle_dir, backend="onnxruntime", precision=None, threads=None, inference_precision="f32"):
    """Run the golden inputs; returns a dict with ``passed``, ``max_abs_diff``, ``tolerance`` and what ran.

    On OpenVINO at ``inference_precision="bf16"`` the golden file must carry a "bf16" tolerance (the bundle's
    gate allowed BF16); the larger of it and the artifact's own tolerance applies.
    """
    bundle = Bundle.load(bundle_dir)
    inputs, expected, tolerances = load_golden(bundle)
    if backend == "auto":
        key, backend, inference_precision, measured_threads = bundle.cpu_default()
        threads = threads or measured_threads
    else:
        key = bundle.find_artifact(backend, precision)
    entry = bundle.manifest["artifacts"][key]
    if entry["precision"] not in tolerances:
        raise BundleError(f"golden tolerances {sorted(tolerances)} have none for precision {entry['precision']!r}")
    tolerance = float(tolerances[entry["precision"]])
    if backend == BackendName.TENSORRT:
        opts = {"entry": entry}
    elif backend == BackendName.OPENVINO:
        opts = {"threads": threads, "precision": inference_precision, "cache_dir": bundle.cache_dir("openvino")}
        if str(inference_precision).lower() == "bf16":
            if "bf16" not in tolerances:
                raise BundleError("the bundle's golden tolerances have no 'bf16' entry: BF16 was not gated for this "
                                  "bundle; self-test it at f32 or rebuild the bundle with a BF16 gate")
            tolerance = max(tolerance, float(tolerances["bf16"]))
    else:
        opts = {"threads": threads}
    engine = create_backend(backend, bundle.path_of(key), **opts)
    try:
        got = engine.run(inputs)
    finally:
        engine.close()
    report = {"bundle": bundle.manifest["name"], "artifact": key, "backend": backend,
              "precision": entry["precision"], "samples": int(inputs.shape[0]), "tolerance": tolerance}
    if backend == BackendName.OPENVINO:
        report["inference_precision"] = str(inference_precision).lower()
    if got.shape != expected.shape:
        report.update(passed=False, max_abs_diff=None,
                      reason=f"output shape {got.shape} differs from the golden {expected.shape}")
        return report
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    passed = bool(np.isfinite(diff) and diff <= tolerance)
    report.update(passed=passed, max_abs_diff=diff)
    if not passed:
        report["reason"] = f"max abs diff {diff:.3g} exceeds the {entry['precision']} tolerance {tolerance:.3g}"
    return report
