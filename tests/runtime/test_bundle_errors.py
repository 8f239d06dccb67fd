"""Damaged or foreign bundles are refused with BundleError before anything runs."""

import json
import os

import pytest
from tinymodels import classifier_model, write_bundle

from lungedge.runtime import cli
from lungedge.runtime.bundle import MANIFEST, artifact_entry
from lungedge.runtime.errors import BundleError
from lungedge.runtime.predictor import Predictor


def _edit_manifest(bundle, change):
    path = os.path.join(bundle, MANIFEST)
    with open(path) as fh:
        manifest = json.load(fh)
    change(manifest)
    with open(path, "w") as fh:
        json.dump(manifest, fh)


def test_flipped_byte_fails_sha256(xray_cls_bundle):
    path = os.path.join(xray_cls_bundle, "model.onnx")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(BundleError, match="fails its sha256 check"):
        Predictor.from_bundle(xray_cls_bundle)


def test_truncated_model_fails_sha256(xray_cls_bundle):
    path = os.path.join(xray_cls_bundle, "model.onnx")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 3])
    with pytest.raises(BundleError, match="changed or truncated"):
        Predictor.from_bundle(xray_cls_bundle)


def test_tampered_golden_fails_sha256(xray_cls_bundle):
    with open(os.path.join(xray_cls_bundle, "golden.npz"), "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="'golden'"):
        Predictor.from_bundle(xray_cls_bundle)


def test_missing_model_file(xray_cls_bundle):
    os.remove(os.path.join(xray_cls_bundle, "model.onnx"))
    with pytest.raises(BundleError, match="missing"):
        Predictor.from_bundle(xray_cls_bundle)


def test_unknown_preprocessing_step(xray_cls_bundle):
    _edit_manifest(xray_cls_bundle, lambda m: m["preprocessing"].insert(0, {"op": "equalize_histogram"}))
    with pytest.raises(BundleError, match="unknown preprocessing step 'equalize_histogram'"):
        Predictor.from_bundle(xray_cls_bundle)


def test_newer_schema(xray_cls_bundle):
    _edit_manifest(xray_cls_bundle, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="newer than this lungedge understands.*upgrade lungedge"):
        Predictor.from_bundle(xray_cls_bundle)


def test_model_that_onnxruntime_cannot_load(tmp_path):
    bundle = write_bundle(tmp_path / "b", classifier_model(3), "classification", "xray", ["a", "b", "c"], {})
    open(os.path.join(bundle, "model.onnx"), "wb").write(b"garbage, consistently hashed")
    _edit_manifest(bundle, lambda m: m["artifacts"].update(
        {"onnx-fp32": artifact_entry(bundle, "model.onnx", "onnx", "fp32", "onnxruntime")}))
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        Predictor.from_bundle(bundle)


def test_cli_reports_bundle_error(xray_cls_bundle, tmp_path, capsys):
    _edit_manifest(xray_cls_bundle, lambda m: m.update(schema_version=2))
    assert cli.main(["infer", str(tmp_path / "x.png"), "--bundle", xray_cls_bundle]) == 2
    assert "newer than this lungedge understands" in capsys.readouterr().err
    assert cli.main(["selftest", xray_cls_bundle]) == 1
