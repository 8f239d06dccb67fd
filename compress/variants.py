"""An INT8 artifact added to an existing bundle: ONNX Runtime QDQ, calibrated on real training images.

The demo's fallback (when the demo recipe's gate refuses every variant) and the bench's test fixtures use it;
it is the compress quantizer (``quantize.quantize_onnx``, ``calibration.CalibrationReader``) on a bundle that
already exists, without the distillation, pruning and gate of ``pipeline.compress``.
"""

import os

from lungedge.compress.calibration import CalibrationReader
from lungedge.compress.quantize import QuantConfig, quantize_onnx
from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest
from lungedge.runtime.enums import ArtifactKey, BackendName, Precision


def add_int8_artifact(bundle_dir, images, key=ArtifactKey.ONNX_INT8, source=ArtifactKey.ONNX_FP32,
                      config=None):
    """Quantize the bundle's ``source`` ONNX to QDQ INT8 (``config``, default ``ort_cpu`` min-max over all
    ``images``: training Records or paths, at least ``calibration.MIN_IMAGES``) and record it as ``key``."""
    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    reader = CalibrationReader(list(images), manifest["preprocessing"], input_name=manifest["input"]["name"])
    config = config or QuantConfig(flavour="ort_cpu", calibration_method="minmax", num_images=reader.count)
    out_name = "model.int8.onnx" if key == ArtifactKey.ONNX_INT8 else f"model.{key}.onnx"
    report = quantize_onnx(bundle.path_of(source), os.path.join(bundle_dir, out_name), reader, config)
    artifacts = dict(manifest["artifacts"])
    qdq = {k: v for k, v in report["qdq"].items() if not isinstance(v, (list, dict))}
    artifacts[str(key)] = artifact_entry(bundle_dir, out_name, "onnx", Precision.INT8.value,
                                         BackendName.ONNXRUNTIME.value, flavour=str(config.flavour), qdq=qdq)
    manifest["artifacts"] = artifacts
    manifest["provenance"] = dict(manifest["provenance"],
                                  calibration=dict(report["calibration"], method=str(config.calibration_method)))
    write_manifest(bundle_dir, manifest)
    return str(key)
