"""qdq_check on hand-built QDQ graphs: one valid form per target, then one broken rule at a time."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lungedge.compress.errors import QuantizationError
from lungedge.compress.export import ort_session
from lungedge.compress.qdq_check import check_ort_qdq, check_tensorrt_qdq

RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)
W_SCALE = (np.abs(WEIGHT).reshape(4, -1).max(1) / 127).astype(np.float32)


ZERO_I8 = np.int8(0)
W_ZERO = np.zeros(4, np.int8)


def _model(act_zero=ZERO_I8, act_scale=0.05, w_scale=W_SCALE, w_zero=W_ZERO, w_axis=0, int8_weights=False,
           int32_bias=False, act_zero_point=True, opset=17, extra_nodes=()):
    """x -> Q/DQ -> Conv(W -> [Q] -> DQ, B) -> y."""
    inits = [numpy_helper.from_array(np.asarray(act_scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.asarray(w_scale, np.float32), "w_scale"),
             numpy_helper.from_array(np.asarray(w_zero), "w_zero")]
    x_in = ["x", "x_scale"] + (["x_zero"] if act_zero_point else [])
    if act_zero_point:
        inits.append(numpy_helper.from_array(np.asarray(act_zero), "x_zero"))
    act_axis = {"axis": 1} if np.size(act_scale) > 1 else {}
    nodes = [helper.make_node("QuantizeLinear", x_in, ["xq"], name="x_q", **act_axis),
             helper.make_node("DequantizeLinear", ["xq"] + x_in[1:], ["xd"], name="x_dq", **act_axis)]
    if int8_weights:
        q = np.clip(np.round(WEIGHT / W_SCALE[:, None, None, None]), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(q, "w_int8"))
        nodes.append(helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["wd"], name="w_dq",
                                      axis=w_axis))
    else:
        inits.append(numpy_helper.from_array(WEIGHT, "w"))
        nodes += [helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["wq"], name="w_q", axis=w_axis),
                  helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=w_axis)]
    if int32_bias:
        inits += [numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_int32"),
                  numpy_helper.from_array((0.05 * W_SCALE).astype(np.float32), "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zero")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_int32", "b_scale", "b_zero"], ["b"], name="b_dq", axis=0))
    else:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, 4).astype(np.float32), "b"))
    nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    nodes += list(extra_nodes)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_valid_tensorrt_form_passes_and_runs():
    model = _model()
    onnx.checker.check_model(model, full_check=True)
    report = check_tensorrt_qdq(model)
    assert report["quantize_nodes"] == 2 and report["dequantize_nodes"] == 2
    assert report["weighted_ops"] == report["quantized_weighted_ops"] == 1
    assert report["per_channel_weights"] == 1 and report["float_weighted_ops"] == []
    assert report["violations"] == []
    with pytest.raises(QuantizationError, match="uint8"):
        check_ort_qdq(model)  # int8 activations are not the U8S8 form


def test_valid_ort_form_passes(tmp_path):
    model = _model(act_zero=np.uint8(128), int8_weights=True, int32_bias=True)
    onnx.checker.check_model(model, full_check=True)
    path = str(tmp_path / "u8s8.onnx")
    onnx.save(model, path)
    ort_session(path).run(None, {"x": np.zeros((1, 2, 8, 8), np.float32)})
    report = check_ort_qdq(path)
    assert report["int8_weight_initializers"] == 1 and report["violations"] == []
    with pytest.raises(QuantizationError) as err:
        check_tensorrt_qdq(path)
    assert "signed int8 only" in str(err.value) and "INT32 bias" in str(err.value)


BROKEN = {
    "activation zero point 3": (dict(act_zero=np.int8(3)), "zero point not 0"),
    "uint8 activations": (dict(act_zero=np.uint8(0)), "signed int8 only"),
    "negative weight scale": (dict(w_scale=W_SCALE * np.array([1, -1, 1, 1], np.float32)), "<= 0"),
    "zero activation scale": (dict(act_scale=np.float32(0.0)), "<= 0"),
    "nan activation scale": (dict(act_scale=np.float32("nan")), "NaN"),
    "weight scales on axis 1": (dict(w_scale=W_SCALE[:2], w_zero=np.zeros(2, np.int8), w_axis=1), "needs axis 0"),
    "per-channel activation": (dict(act_scale=np.full(2, 0.05, np.float32), act_zero=np.zeros(2, np.int8)),
                               "per-channel scales on an activation"),
    "missing zero point": (dict(act_zero_point=False), "no zero point"),
    "int8 weight initializer": (dict(int8_weights=True), "int8 weight initializer"),
    "int32 bias": (dict(int32_bias=True), "INT32 bias"),
    "opset 12": (dict(opset=12), "opset 12"),
    "QOperator node": (dict(extra_nodes=[helper.make_node("QLinearConv", ["xq"], ["z"], name="qconv")]),
                       "QOperator"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_tensorrt_check_names_each_violation(case):
    kwargs, message = BROKEN[case]
    with pytest.raises(QuantizationError, match=message):
        check_tensorrt_qdq(_model(**kwargs))


def test_int8_weights_allowed_on_request():
    report = check_tensorrt_qdq(_model(int8_weights=True), allow_int8_weights=True)
    assert report["int8_weight_initializers"] == 1


def test_float_model_is_not_a_qdq_model():
    model = _model()
    conv = [n for n in model.graph.node if n.op_type == "Conv"][0]
    conv.input[0], conv.input[1] = "x", "w"
    del model.graph.node[:4]
    with pytest.raises(QuantizationError, match="no QuantizeLinear"):
        check_tensorrt_qdq(model)
