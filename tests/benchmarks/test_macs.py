"""ONNX MAC counter against compress.prune.count_macs (torch-pruning) and on quantized graphs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from lungedge.benchmarks.macs import count_onnx_macs  # noqa: E402
from lungedge.compress.export import export_onnx  # noqa: E402
from lungedge.compress.prune import count_macs  # noqa: E402
from lungedge.models.registry import build  # noqa: E402


class DenseOnly(torch.nn.Module):
    """Convolutions (one grouped, one strided) and a linear layer, no bias and no elementwise ops: both counters
    then count exactly the same multiply-accumulates."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b = torch.nn.Conv2d(8, 16, 3, stride=2, groups=4, bias=False)
        self.c = torch.nn.Conv2d(16, 4, 1, bias=False)
        self.fc = torch.nn.Linear(4 * 15 * 11, 5, bias=False)

    def forward(self, x):
        return self.fc(self.c(self.b(self.a(x))).flatten(1))


def test_exact_on_dense_operators(tmp_path):
    model = DenseOnly().eval()
    path = export_onnx(model, str(tmp_path / "dense.onnx"), (32, 24))
    macs, params = count_macs(model, torch.zeros(1, 1, 32, 24))
    got = count_onnx_macs(path)
    assert got["macs"] == macs
    assert got["params"] == params
    assert got["unresolved"] == []
    assert set(got["by_op"]) == {"Conv", "MatMul"}  # a bias-free Linear exports as MatMul


@pytest.mark.parametrize("arch,classes,size", [("student_s", 3, 64), ("resnet18", 2, 64), ("unet_student", 1, 48)])
def test_registry_models_match_torch_pruning(tmp_path, arch, classes, size):
    """torch-pruning adds elementwise work (BN, ReLU, pooling, bias) to the dense MACs, a few per cent here."""
    model = build(arch, classes).eval()
    path = export_onnx(model, str(tmp_path / f"{arch}.onnx"), (size, size))
    macs, params = count_macs(model, torch.zeros(1, 1, size, size))
    got = count_onnx_macs(path)
    assert got["unresolved"] == []
    assert 0.95 * macs <= got["macs"] <= macs
    # BatchNorm folded into the convolutions on export: the ONNX graph holds slightly fewer parameters.
    assert 0.98 * params <= got["params"] <= params


def test_batch_scales_linearly(tmp_path):
    path = export_onnx(build("student_s", 3).eval(), str(tmp_path / "s.onnx"), (48, 48))
    assert count_onnx_macs(path, batch=4)["macs"] == 4 * count_onnx_macs(path)["macs"]


def test_int8_qdq_graph_has_the_same_macs_and_parameters(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = export_onnx(build("student_s", 3).eval(), str(tmp_path / "fp32.onnx"), (48, 48))

    class Ramp(CalibrationDataReader):  # structure test only: any data in range fixes the scales
        def __init__(self):
            self.items = iter([{"image": np.linspace(-2, 2, 48 * 48, dtype=np.float32).reshape(1, 1, 48, 48) * k}
                               for k in (0.5, 1.0)])

        def get_next(self):
            return next(self.items, None)

    int8 = str(tmp_path / "int8.onnx")
    quantize_static(fp32, int8, Ramp(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    a, b = count_onnx_macs(fp32), count_onnx_macs(int8)
    assert b["macs"] == a["macs"] and b["unresolved"] == []
    assert b["params"] == a["params"]  # int8 weights and int32 biases count; scales and zero points do not


def test_qlinearconv_operator_format():
    """ONNX Runtime's QOperator INT8 form (QLinearConv, QLinearMatMul), built by hand with dynamic batch."""
    from onnx import TensorProto, helper

    def init(name, dtype, dims, values):
        return helper.make_tensor(name, dtype, dims, values)

    inits = [init("xs", TensorProto.FLOAT, [], [0.1]), init("xz", TensorProto.UINT8, [], [128]),
             init("w", TensorProto.INT8, [4, 1, 3, 3], [1] * 36), init("ws", TensorProto.FLOAT, [4], [0.1] * 4),
             init("wz", TensorProto.INT8, [4], [0] * 4), init("ys", TensorProto.FLOAT, [], [0.2]),
             init("yz", TensorProto.UINT8, [], [128]), init("b", TensorProto.INT32, [4], [0] * 4),
             init("shape", TensorProto.INT64, [2], [-1, 144]),
             init("m", TensorProto.INT8, [144, 5], [1] * 720), init("ms", TensorProto.FLOAT, [], [0.1]),
             init("mz", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"]),
             helper.make_node("Reshape", ["y", "shape"], ["f"]),
             helper.make_node("QLinearMatMul", ["f", "ys", "yz", "m", "ms", "mz", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = count_onnx_macs(model)
    assert got["by_op"] == {"QLinearConv": 4 * 6 * 6 * 9, "QLinearMatMul": 144 * 5}
    assert got["params"] == 36 + 4 + 720  # weights, int32 bias, matmul weights; not scales, zero points, shape
