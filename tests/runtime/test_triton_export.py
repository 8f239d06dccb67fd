"""Triton export: config.pbtxt parsed by Triton's own ModelConfig protobuf, round trip against the ONNX model."""

import json
import os

import pytest
from tinymodels import SIZE, classifier_model, write_bundle, xray_classifier_bundle

from lungedge.runtime import triton
from lungedge.runtime.bundle import artifact_entry, sha256_file, write_manifest
from lungedge.runtime.errors import BundleError


def ci():
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def bundle(xray_cls_bundle):
    return xray_cls_bundle


@pytest.fixture(scope="module")
def model_config():
    """(text_format, ModelConfig) from tritonclient; skipped without it, except under CI=true."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        if ci():
            pytest.fail("tritonclient[grpc] is not installed; CI must install it (pip install 'tritonclient[grpc]')")
        pytest.skip("tritonclient[grpc] not installed (pip install 'tritonclient[grpc]')")
    return text_format, model_config_pb2


def parse(model_config, model_dir):
    text_format, pb = model_config
    with open(os.path.join(model_dir, "config.pbtxt")) as fh:
        return text_format.Parse(fh.read(), pb.ModelConfig())


def onnx_io(path):
    """Names, element types and shapes straight from the ONNX graph (the round trip's other end)."""
    import onnx

    graph = onnx.load(path).graph
    weights = {i.name for i in graph.initializer}

    def shape(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    return ([(v.name, v.type.tensor_type.elem_type, shape(v)) for v in graph.input if v.name not in weights],
            [(v.name, v.type.tensor_type.elem_type, shape(v)) for v in graph.output])


def add_plan(bundle, max_batch=None):
    """Record a (fake) TensorRT plan in the bundle, as lungedge engine build would after a device build."""
    with open(os.path.join(bundle, "manifest.json")) as fh:
        manifest = json.load(fh)
    with open(os.path.join(bundle, "engine-fp16.plan"), "wb") as fh:
        fh.write(b"not a real engine: Triton export never opens plans")
    extra = {"trt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin", "source": "onnx-fp32"}
    if max_batch:
        extra["max_batch"] = max_batch
    manifest["artifacts"]["trt-fp16"] = artifact_entry(bundle, "engine-fp16.plan", "plan", "fp16", "tensorrt",
                                                       **extra)
    write_manifest(bundle, manifest)
    return manifest


def test_onnx_model_round_trip(model_config, bundle, tmp_path):
    repo = str(tmp_path / "repo")
    report = triton.export_triton(bundle, repo, max_batch=8, instance_count=2)
    assert [m["name"] for m in report["models"]] == ["xray-cls-onnx-fp32"]
    model_dir = os.path.join(repo, "xray-cls-onnx-fp32")
    config = parse(model_config, model_dir)
    pb = model_config[1]

    assert config.name == "xray-cls-onnx-fp32" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    inputs, outputs = onnx_io(os.path.join(bundle, "model.onnx"))
    to_triton = {1: pb.TYPE_FP32}
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == \
        [(n, to_triton[e], dims[1:]) for n, e, dims in inputs] == [("image", pb.TYPE_FP32, [1, SIZE, SIZE])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == \
        [(n, to_triton[e], dims[1:]) for n, e, dims in outputs] == [("logits", pb.TYPE_FP32, [3])]

    assert config.output[0].label_filename == "labels.txt"
    with open(os.path.join(model_dir, "labels.txt")) as fh:
        assert fh.read().split() == ["covid", "normal", "pneumonia"]
    assert sha256_file(os.path.join(model_dir, "1", "model.onnx")) == sha256_file(os.path.join(bundle, "model.onnx"))
    with open(os.path.join(model_dir, "lungedge_manifest.json")) as fh, \
            open(os.path.join(bundle, "manifest.json")) as ref:
        assert json.load(fh) == json.load(ref)
    assert sorted(os.listdir(repo)) == ["xray-cls-onnx-fp32"]  # no temporary folders left


def test_tensors_read_through_onnxruntime_without_onnx(bundle, monkeypatch):
    with_onnx = triton.onnx_tensors(os.path.join(bundle, "model.onnx"))
    monkeypatch.setattr(triton, "_onnx_module", lambda: None)
    assert triton.onnx_tensors(os.path.join(bundle, "model.onnx")) == with_onnx
    assert with_onnx == ([("image", "TYPE_FP32", [-1, 1, SIZE, SIZE])], [("logits", "TYPE_FP32", [-1, 3])])


def test_plan_becomes_a_tensorrt_model(model_config, bundle, tmp_path):
    add_plan(bundle, max_batch=4)
    repo = str(tmp_path / "repo")
    report = triton.export_triton(bundle, repo, max_batch=8, onnx_device="cpu")
    by_platform = {m["platform"]: m for m in report["models"]}
    assert sorted(by_platform) == ["onnxruntime_onnx", "tensorrt_plan"]
    pb = model_config[1]

    plan = parse(model_config, os.path.join(repo, "xray-cls-trt-fp16"))
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4  # the engine profile's maximum
    assert plan.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert [(t.name, list(t.dims)) for t in plan.input] == [("image", [1, SIZE, SIZE])]
    assert [(t.name, list(t.dims)) for t in plan.output] == [("logits", [3])]
    assert os.path.isfile(os.path.join(repo, "xray-cls-trt-fp16", "1", "model.plan"))
    assert by_platform["tensorrt_plan"]["engine_fingerprint"]["trt_version"] == "10.3.0"

    onnx_model = parse(model_config, os.path.join(repo, "xray-cls-onnx-fp32"))
    assert onnx_model.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU

    only = triton.export_triton(bundle, str(tmp_path / "only-onnx"), platforms=("onnxruntime",))
    assert [m["platform"] for m in only["models"]] == ["onnxruntime_onnx"]
    assert only["skipped"] == [{"artifact": "trt-fp16", "reason": "platform 'tensorrt' not requested"}]


def test_fixed_batch_model_is_not_batched(model_config, tmp_path):
    from onnx import TensorProto, helper

    model = classifier_model(3)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, SIZE, SIZE]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3]))
    fixed = write_bundle(tmp_path / "fixed", model, "classification", "xray", ["covid", "normal", "pneumonia"],
                         {"covid": 0.4}, positive_label="covid")
    report = triton.export_triton(fixed, str(tmp_path / "repo"))
    config = parse(model_config, os.path.join(str(tmp_path / "repo"), "fixed-onnx-fp32"))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 1, SIZE, SIZE] and list(config.output[0].dims) == [1, 3]
    assert "fixed batch" in report["models"][0]["notes"][0]


def test_existing_model_is_not_overwritten_unless_asked(bundle, tmp_path):
    repo = str(tmp_path / "repo")
    triton.export_triton(bundle, repo)
    with pytest.raises(FileExistsError):
        triton.export_triton(bundle, repo)
    triton.export_triton(bundle, repo, overwrite=True)


def test_tampered_bundle_is_refused(bundle, tmp_path):
    with open(os.path.join(bundle, "model.onnx"), "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        triton.export_triton(bundle, str(tmp_path / "repo"))
    assert not os.path.exists(str(tmp_path / "repo"))


def test_cli(model_config, tmp_path, capsys):
    bundle = xray_classifier_bundle(tmp_path / "cli-bundle")
    repo = str(tmp_path / "repo")
    assert triton.main(["export", "triton", bundle, "--out", repo, "--max-batch", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["max_batch_size"] == 4
    assert parse(model_config, os.path.join(repo, "cli-bundle-onnx-fp32")).max_batch_size == 4
    assert triton.main(["export", "triton", str(tmp_path / "missing"), "--out", repo]) == 2
    assert "not a bundle" in capsys.readouterr().err
