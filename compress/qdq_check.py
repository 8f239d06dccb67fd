"""Static checks of a QDQ ONNX model against what its target runtime accepts, before any device sees it.

TensorRT (explicit quantization; rules of its ONNX parser and developer guide): int8 Q/DQ only, zero points present
and all 0, scales positive and finite, per-channel scales only on weights and along the output-channel axis (0 for
Conv and for PyTorch's Gemm), a scalar scale on every activation, no INT32 bias Q/DQ, no QOperator ops
(QLinearConv, ConvInteger...), opset >= 13, and (by default) float weights behind a QuantizeLinear as TensorRT 8.x
requires. ONNX Runtime CPU (U8S8): uint8 activations, int8 symmetric weights, positive finite scales.

Each check returns a report (Q/DQ counts, weighted ops left in float, per-channel weights) and raises
QuantizationError listing the violations.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from lungedge.compress.errors import QuantizationError

WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QOPERATOR_OP_TYPES = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm",
                      "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearMul", "QLinearConcat")
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")
MAX_LISTED = 12


def _load(model_or_path):
    return model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(model_or_path)


def _constants(graph):
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _opset(model):
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _output_channel_axis(consumer):
    """Axis of a weighted op's weight (input 1) that indexes output channels."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    return 1  # MatMul weight (K, N)


def analyze(model_or_path):
    """Describe every Q/DQ node (role, dtype, scale, zero point, axis) and every weighted op; no judgement."""
    model = _load(model_or_path)
    graph = model.graph
    consts = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    qdq = []
    for node in graph.node:
        if node.op_type not in QDQ_OP_TYPES:
            continue
        src = node.input[0]
        upstream = producer.get(src)
        from_weight = src in consts or (upstream is not None and upstream.op_type == "QuantizeLinear"
                                        and upstream.input[0] in consts)
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        stored = consts.get(src)
        dtype = zero.dtype if zero is not None else (stored.dtype if stored is not None and stored.dtype.kind in "iu"
                                                     else None)
        role = "activation"
        if from_weight:
            role = "bias" if dtype == np.int32 else "weight"
        targets = consumers.get(node.output[0], [])
        qdq.append({"name": node.name or node.output[0], "op": node.op_type, "role": role, "dtype": dtype,
                    "scale": scale, "zero_point": zero, "axis": _attr(node, "axis", 1), "int_initializer": (
                        node.op_type == "DequantizeLinear" and stored is not None and stored.dtype.kind in "iu"),
                    "consumers": [(c.op_type, i, c) for c, i in targets]})
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weighted = []
    for node in graph.node:
        if node.op_type in WEIGHTED_OP_TYPES:
            flags = [name in dq_outputs for name in node.input[:2]]
            weighted.append({"name": node.name or node.output[0], "op": node.op_type, "activation_quantized": flags[0],
                             "weight_quantized": len(flags) > 1 and flags[1]})
    return {"model": model, "qdq": qdq, "weighted": weighted,
            "qoperator_nodes": [n.name or n.op_type for n in graph.node if n.op_type in QOPERATOR_OP_TYPES]}


def _scale_problems(entry):
    scale = entry["scale"]
    if scale is None:
        return [f"{entry['name']}: scale is not a constant initializer"]
    out = []
    if not np.all(np.isfinite(scale)):
        out.append(f"{entry['name']}: scale has NaN or infinite values")
    elif not np.all(scale > 0):
        out.append(f"{entry['name']}: scale has values <= 0 (min {float(np.min(scale)):.3g}); TensorRT refuses them")
    zero = entry["zero_point"]
    if zero is not None and np.size(zero) != np.size(scale):
        out.append(f"{entry['name']}: scale has {np.size(scale)} values but the zero point {np.size(zero)}")
    return out


def _weight_axis_problems(entry):
    """Per-channel weight scales must run along the output-channel axis of the op that uses the weight."""
    n = np.size(entry["scale"]) if entry["scale"] is not None else 1
    if n == 1:
        return []
    out = []
    for op_type, index, consumer in entry["consumers"]:
        if op_type == "DequantizeLinear":  # Q of a weight: judged at its DQ
            continue
        if op_type in WEIGHTED_OP_TYPES and index == 1:
            want = _output_channel_axis(consumer)
            if entry["axis"] != want:
                out.append(f"{entry['name']}: per-channel weight scales on axis {entry['axis']}, {op_type} needs "
                           f"axis {want} (output channels)")
    return out


def _summary(info, flavour):
    qdq, weighted = info["qdq"], info["weighted"]
    weights = [e for e in qdq if e["role"] == "weight" and e["op"] == "DequantizeLinear"]
    return {
        "flavour": flavour,
        "opset": _opset(info["model"]),
        "quantize_nodes": sum(e["op"] == "QuantizeLinear" for e in qdq),
        "dequantize_nodes": sum(e["op"] == "DequantizeLinear" for e in qdq),
        "weighted_ops": len(weighted),
        "quantized_weighted_ops": sum(w["activation_quantized"] and w["weight_quantized"] for w in weighted),
        "float_weighted_ops": [w["name"] for w in weighted if not (w["activation_quantized"] or w["weight_quantized"])],
        "partially_quantized_ops": [w["name"] for w in weighted
                                    if w["activation_quantized"] != w["weight_quantized"]],
        "per_channel_weights": sum(np.size(e["scale"]) > 1 for e in weights if e["scale"] is not None),
        "int8_weight_initializers": sum(e["int_initializer"] for e in weights),
        "violations": [],
    }


def _raise_if(report, target, hint):
    problems = report["violations"]
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; ... {len(problems) - MAX_LISTED} more"
                                                     if len(problems) > MAX_LISTED else "")
        raise QuantizationError(f"{len(problems)} Q/DQ violation(s) for {target}: {listed}. {hint}")
    return report


def check_tensorrt_qdq(model_or_path, allow_int8_weights=False):
    """Check a QDQ model against TensorRT's explicit-quantization rules; returns the report or raises.

    ``allow_int8_weights`` accepts int8 weight initializers feeding a DequantizeLinear (TensorRT 10 and later);
    by default weights must be float behind a QuantizeLinear, which every TensorRT from 8.x on accepts.
    """
    info = analyze(model_or_path)
    report = _summary(info, "tensorrt")
    bad = report["violations"]
    if report["opset"] < 13:
        bad.append(f"opset {report['opset']} < 13: per-channel Q/DQ needs the axis attribute of opset 13")
    if report["quantize_nodes"] + report["dequantize_nodes"] == 0:
        bad.append("the model has no QuantizeLinear/DequantizeLinear nodes")
    bad.extend(f"{name}: QOperator node; TensorRT imports only QuantizeLinear/DequantizeLinear"
               for name in info["qoperator_nodes"])
    for e in info["qdq"]:
        bad.extend(_scale_problems(e))
        if e["role"] == "bias":
            bad.append(f"{e['name']}: INT32 bias Q/DQ; TensorRT has none (keep biases float)")
            continue
        if e["zero_point"] is None:
            bad.append(f"{e['name']}: no zero point (ONNX then means uint8); write an int8 zero point of 0")
        elif e["dtype"] != np.int8:
            bad.append(f"{e['name']}: {e['dtype']} Q/DQ; TensorRT quantizes to signed int8 only")
        elif np.any(e["zero_point"] != 0):
            bad.append(f"{e['name']}: zero point not 0; TensorRT quantization is symmetric")
        if e["role"] == "weight":
            bad.extend(_weight_axis_problems(e))
            if e["int_initializer"] and not allow_int8_weights:
                bad.append(f"{e['name']}: int8 weight initializer; TensorRT 8.x needs float weights behind a "
                           "QuantizeLinear")
        elif e["scale"] is not None and np.size(e["scale"]) != 1:
            bad.append(f"{e['name']}: per-channel scales on an activation; TensorRT takes one scale per activation")
    return _raise_if(report, "TensorRT", "Quantize with QuantConfig(flavour='tensorrt').")


def check_ort_qdq(model_or_path):
    """Check a QDQ model for ONNX Runtime CPU (U8S8): uint8 activations, symmetric int8 weights; report or raise."""
    info = analyze(model_or_path)
    report = _summary(info, "ort_cpu")
    bad = report["violations"]
    if report["quantize_nodes"] + report["dequantize_nodes"] == 0:
        bad.append("the model has no QuantizeLinear/DequantizeLinear nodes")
    for e in info["qdq"]:
        bad.extend(_scale_problems(e))
        if e["role"] == "bias":
            if e["dtype"] != np.int32:
                bad.append(f"{e['name']}: bias quantized to {e['dtype']}, expected int32")
            continue
        if e["role"] == "weight":
            if e["dtype"] != np.int8:
                bad.append(f"{e['name']}: weights quantized to {e['dtype']}, expected int8")
            elif e["zero_point"] is not None and np.any(e["zero_point"] != 0):
                bad.append(f"{e['name']}: weight zero point not 0; U8S8 kernels expect symmetric weights")
            bad.extend(_weight_axis_problems(e))
        else:
            if e["dtype"] != np.uint8:
                bad.append(f"{e['name']}: activation quantized to {e['dtype']}, expected uint8 (U8S8)")
            if e["scale"] is not None and np.size(e["scale"]) != 1:
                bad.append(f"{e['name']}: per-channel scales on an activation")
    return _raise_if(report, "ONNX Runtime CPU (U8S8)", "Quantize with QuantConfig(flavour='ort_cpu').")
