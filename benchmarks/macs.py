"""Multiply-accumulates and parameters counted from an ONNX graph, so bundle-only and INT8 variants get them too.

MACs are those of the dense operators at batch 1: Conv (and its quantized forms ConvInteger, QLinearConv,
com.microsoft FusedConv), ConvTranspose, Gemm and MatMul (MatMulInteger, QLinearMatMul). Elementwise work
(BatchNormalization, activations, pooling, resizing, additions) is left out, as is a bias add: the usual
convention for CNN MACs. Counting needs the tensor shapes, so the graph's symbolic dimensions (the dynamic
batch) are fixed to 1 and ONNX shape inference run first. Parameters are the elements of the initializers,
less the scales and zero points of quantization and integer shape tensors.
"""

import numpy as np

# op type -> index of the weight input
CONV_WEIGHT = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_OPS = ("MatMul", "MatMulInteger", "QLinearMatMul")
# op type -> input indices holding quantization scales and zero points (not parameters)
QUANT_PARAM_INPUTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "DynamicQuantizeLinear": (),
    "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7), "ConvInteger": (2, 3),
    "MatMulInteger": (2, 3), "QLinearAdd": (1, 2, 4, 5, 6, 7), "QLinearMul": (1, 2, 4, 5, 6, 7),
    "QLinearGlobalAveragePool": (1, 2, 3, 4), "QLinearAveragePool": (1, 2, 3, 4), "QLinearConcat": None,
    "QLinearSigmoid": (1, 2, 3, 4), "QLinearLeakyRelu": (1, 2, 3, 4),
}
_INT_SHAPE_TYPES = ("int64",)


class MacCountError(ValueError):
    """The graph's shapes could not be inferred well enough to count its MACs."""


def _fix_batch(model, batch=1):
    """Copy of ``model`` with every symbolic or unknown input dimension set to ``batch``."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    # Old shapes recorded for intermediate values may still carry the symbolic batch; re-infer them.
    del model.graph.value_info[:]
    return model


def _shape_table(model):
    shapes = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = shape
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _known(shape):
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _node_macs(node, shapes):
    """MACs of one node, or None when its shapes are unknown (0 for operators that are not counted)."""
    op = node.op_type
    if op in CONV_WEIGHT:
        w = shapes.get(node.input[CONV_WEIGHT[op]])
        y = shapes.get(node.output[0])
        if not (_known(w) and _known(y)):
            return None
        return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not (_known(x) and _known(w)):
            return None
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not (_known(a) and _known(y)):
            return None
        trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return int(np.prod(y, dtype=np.int64) * k)
    if op in MATMUL_OPS:
        a = shapes.get(node.input[0])
        y = shapes.get(node.output[0])
        if not (_known(a) and _known(y)):
            return None
        return int(np.prod(y, dtype=np.int64) * a[-1])
    return 0


def _walk(graph):
    for node in graph.node:
        yield node
        for att in node.attribute:
            if att.g and att.g.node:
                yield from _walk(att.g)


def count_parameters(model):
    """Elements of the initializers that are weights (not quantization scales/zero points, not shape tensors)."""
    import onnx

    excluded = set()
    for node in _walk(model.graph):
        positions = QUANT_PARAM_INPUTS.get(node.op_type)
        if positions is None and node.op_type == "QLinearConcat":
            positions = [i for i in range(len(node.input)) if i % 3 != 2]  # y_scale, y_zp, then (x, s, zp)*
        for i in positions or ():
            if i < len(node.input):
                excluded.add(node.input[i])
    total = 0
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        if init.name in excluded or dtype in _INT_SHAPE_TYPES:
            continue
        total += int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
    return total


def count_onnx_macs(path_or_model, batch=1):
    """{"macs", "params", "by_op": {op: macs}, "unresolved": [node names]} of an ONNX model at ``batch``."""
    import onnx

    model = onnx.load(path_or_model) if isinstance(path_or_model, (str, bytes)) or hasattr(path_or_model, "__fspath__") \
        else path_or_model
    fixed = _fix_batch(model, batch)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        raise MacCountError(f"ONNX shape inference failed: {exc}") from None
    shapes = _shape_table(inferred)
    by_op, unresolved, total = {}, [], 0
    for node in _walk(inferred.graph):
        macs = _node_macs(node, shapes)
        if macs is None:
            unresolved.append(node.name or node.op_type)
            continue
        if macs:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
            total += macs
    return {"macs": int(total), "params": count_parameters(model), "by_op": by_op, "unresolved": unresolved,
            "batch": int(batch)}
