"""INT8 QDQ quantization of a briefly trained student on real X-rays: graph structure and numbers, both flavours.

In the manner of onnxruntime's test_op_relu.py: count and inspect the Q/DQ nodes, then compare the INT8 outputs
with FP32 on real validation images. The student is trained for a few seconds so its logits are not near-tied.
"""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader

from lungedge.compress.calibration import CalibrationReader
from lungedge.compress.errors import CalibrationError, QuantizationError
from lungedge.compress.export import export_onnx, ort_session
from lungedge.compress.qdq_check import check_ort_qdq, check_tensorrt_qdq
from lungedge.compress.quantize import QuantConfig, convert_fp16, ort_arguments, quantize_onnx
from lungedge.models.data import TaskDataset
from lungedge.models.registry import build
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.tasks import task

SIZE = 64
N_CALIB = 32
_CACHE = {}


def _train_student(data_dir, out_dir):
    """student_s after 30 AdamW steps on real 64x64 training X-rays, exported to ONNX, and 64 val images."""
    spec = task("xray-cls")
    records = [r for r in read_manifest_csv(data_dir) if r.label in spec.labels]
    train = TaskDataset(select(records, split="train")[:320], spec, SIZE)
    val = TaskDataset(select(records, split="val")[:64], spec, SIZE)
    torch.manual_seed(0)
    model = build("student_s", len(spec.labels))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.targets)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    fp32 = export_onnx(model.eval(), str(out_dir / "fp32.onnx"), (SIZE, SIZE))
    reader = CalibrationReader(select(records, split="train"), spec.steps(SIZE), batch_size=8, limit=N_CALIB)
    reports = {flavour: quantize_onnx(fp32, str(out_dir / f"{flavour}.onnx"), reader,
                                      QuantConfig(flavour=flavour, num_images=N_CALIB))
               for flavour in ("ort_cpu", "tensorrt")}
    return {"fp32": fp32, "reader": reader, "val": val.images, "reports": reports, "dir": out_dir}


@pytest.fixture
def quantized(xray_cls_dir, tmp_path_factory):
    """Trained FP32 model and both INT8 flavours, built once per session (the data fixture still decides skip/fail)."""
    if xray_cls_dir not in _CACHE:
        _CACHE[xray_cls_dir] = _train_student(xray_cls_dir, tmp_path_factory.mktemp("quant"))
    return _CACHE[xray_cls_dir]


def _graph(path):
    graph = onnx.load(path).graph
    return graph, {i.name: numpy_helper.to_array(i) for i in graph.initializer}, {o: n for n in graph.node
                                                                                  for o in n.output}


def _qdq(graph, op):
    return [n for n in graph.node if n.op_type == op]


def test_config_validation_and_round_trip():
    cfg = QuantConfig.from_dict({"flavour": "tensorrt", "calibration_method": "entropy",
                                 "nodes_to_exclude": ["/head/Gemm"]})
    assert cfg.flavour == "tensorrt" and cfg.nodes_to_exclude == ("/head/Gemm",)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["nodes_to_exclude"] == ["/head/Gemm"] and {"tensorrt": 1}[cfg.flavour] == 1
    with pytest.raises(ValueError, match="unknown QuantConfig keys"):
        QuantConfig.from_dict({"flavor": "tensorrt"})
    with pytest.raises(ValueError, match="flavour"):
        QuantConfig(flavour="openvino")
    with pytest.raises(ValueError, match="calibration_method"):
        QuantConfig(calibration_method="kl")
    with pytest.raises(ValueError, match="reduce_range"):
        QuantConfig(flavour="tensorrt", reduce_range=True)
    with pytest.raises(ValueError, match="list of node names"):
        QuantConfig(nodes_to_exclude="/stem/Conv")


def test_ort_arguments_per_flavour():
    from onnxruntime.quantization import QuantFormat, QuantType

    cpu = ort_arguments(QuantConfig(flavour="ort_cpu"))
    assert cpu["quant_format"] == QuantFormat.QDQ and cpu["per_channel"]
    assert (cpu["activation_type"], cpu["weight_type"]) == (QuantType.QUInt8, QuantType.QInt8)
    trt = ort_arguments(QuantConfig(flavour="tensorrt", calibration_method="percentile", percentile=99.99))
    assert (trt["activation_type"], trt["weight_type"]) == (QuantType.QInt8, QuantType.QInt8)
    extra = trt["extra_options"]
    assert extra["ActivationSymmetric"] and extra["WeightSymmetric"] and not extra["QuantizeBias"]
    assert extra["AddQDQPairToWeight"] and extra["CalibPercentile"] == 99.99


def test_ort_cpu_graph_is_u8s8(quantized):
    path = quantized["reports"]["ort_cpu"]["path"]
    graph, inits, producer = _graph(path)
    qs, dqs = _qdq(graph, "QuantizeLinear"), _qdq(graph, "DequantizeLinear")
    assert len(qs) > 0 and len(dqs) > len(qs)  # weights are int8 initializers behind a DQ only
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(producer[n.input[0]].op_type == "DequantizeLinear" for n in convs)
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    assert all(inits[n.input[2]].dtype == np.uint8 for n in qs)  # activations: unsigned
    weight_dqs = [producer[n.input[1]] for n in convs]
    for dq in weight_dqs:
        assert inits[dq.input[0]].dtype == np.int8 and not inits[dq.input[2]].any()  # symmetric int8 weights
    assert graph.output[0].name == "logits" and producer["logits"].op_type == "Gemm"  # logits left in float
    report = check_ort_qdq(path)
    assert report["quantized_weighted_ops"] == report["weighted_ops"] == len(convs) + 1
    with pytest.raises(QuantizationError):
        check_tensorrt_qdq(path)


def test_tensorrt_graph_is_symmetric_int8_per_channel(quantized):
    path = quantized["reports"]["tensorrt"]["path"]
    model = onnx.load(path)
    graph, inits, producer = _graph(path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # no ORT-internal domains left behind
    qs, dqs = _qdq(graph, "QuantizeLinear"), _qdq(graph, "DequantizeLinear")
    assert len(qs) == len(dqs) > 0  # every weight too goes float -> Q -> DQ
    for node in qs + dqs:
        zero = inits[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any()
        assert np.all(inits[node.input[1]] > 0) and np.all(np.isfinite(inits[node.input[1]]))
    convs = [n for n in graph.node if n.op_type == "Conv"]
    for conv in convs:
        act, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear"
        assert np.size(inits[act.input[1]]) == 1  # one scale per activation
        w_q = producer[weight.input[0]]
        assert w_q.op_type == "QuantizeLinear" and inits[w_q.input[0]].dtype == np.float32
        out_channels = inits[w_q.input[0]].shape[0]
        assert inits[weight.input[1]].shape == (out_channels,)
        assert [a.i for a in weight.attribute if a.name == "axis"] == [0]
        assert len(conv.input) < 3 or conv.input[2] in inits  # float bias, no INT32 DQ
    # Residual adds read one Conv output directly (TensorRT fuses Conv + Add + ReLU) and the skip through Q/DQ.
    adds = [n for n in graph.node if n.op_type == "Add"]
    for add in adds:
        sources = [producer[name].op_type for name in add.input]
        assert "Conv" in sources and "DequantizeLinear" in sources, sources
        assert all(n.op_type != "QuantizeLinear" for n in graph.node if add.output[0] in n.input)
    report = check_tensorrt_qdq(path)
    assert report["per_channel_weights"] == len(convs) + 1 and report["float_weighted_ops"] == []
    with pytest.raises(QuantizationError):
        check_ort_qdq(path)


@pytest.mark.parametrize("flavour", ["ort_cpu", "tensorrt"])
def test_int8_close_to_fp32_on_real_images(quantized, flavour):
    x = quantized["val"]
    ref = ort_session(quantized["fp32"]).run(None, {"image": x})[0]
    got = ort_session(quantized["reports"][flavour]["path"]).run(None, {"image": x})[0]
    rel = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    assert rel < 0.1 and agreement >= 0.9, (rel, agreement)


def test_report_records_calibration_and_config(quantized):
    report = quantized["reports"]["tensorrt"]
    assert report["calibration"]["count"] == N_CALIB and report["calibration"]["split"] == "train"
    assert report["calibration"] == quantized["reader"].describe()
    assert report["config"]["flavour"] == "tensorrt" and report["precision"] == "int8"


def test_nodes_to_exclude_keep_a_conv_in_float(quantized):
    graph = onnx.load(quantized["fp32"]).graph
    first = next(n.name for n in graph.node if n.op_type == "Conv")
    for flavour in ("ort_cpu", "tensorrt"):
        report = quantize_onnx(quantized["fp32"], str(quantized["dir"] / f"skip-{flavour}.onnx"), quantized["reader"],
                               QuantConfig(flavour=flavour, num_images=N_CALIB, nodes_to_exclude=[first]))
        assert report["qdq"]["float_weighted_ops"] == [first]
    with pytest.raises(QuantizationError, match="does not have"):
        quantize_onnx(quantized["fp32"], str(quantized["dir"] / "bad.onnx"), quantized["reader"],
                      QuantConfig(num_images=N_CALIB, nodes_to_exclude=["no/such/node"]))


def test_synthetic_reader_and_short_calibration_are_refused(quantized):
    class RandomReader(CalibrationDataReader):
        def __init__(self):
            self.left = 32

        def get_next(self):
            self.left -= 1
            return {"image": np.random.rand(1, 1, SIZE, SIZE).astype(np.float32)} if self.left >= 0 else None

    out = str(quantized["dir"] / "never.onnx")
    with pytest.raises(CalibrationError, match="synthetic"):
        quantize_onnx(quantized["fp32"], out, RandomReader(), QuantConfig(num_images=16))
    with pytest.raises(CalibrationError, match="asks for 64"):
        quantize_onnx(quantized["fp32"], out, quantized["reader"], QuantConfig(num_images=64))


def test_fp16_copy_keeps_float32_io(quantized):
    out = str(quantized["dir"] / "fp16.onnx")
    report = convert_fp16(quantized["fp32"], out)
    model = onnx.load(out)
    io = list(model.graph.input) + list(model.graph.output)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)
    assert report["fp16_initializers"] > 0 and report["precision"] == "fp16"
    x = quantized["val"]
    ref = ort_session(quantized["fp32"]).run(None, {"image": x})[0]
    got = ort_session(out).run(None, {"image": x})[0]
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() / max(1.0, np.abs(ref).max()) < 5e-2
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
