"""Quantization sensitivity: which weighted nodes to keep in float when an INT8 variant fails the accuracy gate.

The back-off ladder (``BackoffConfig.quant_attempts``) keeps the first conv and the head in float first
(``io_nodes``), then the nodes whose activations lose most to their Q/DQ step on real calibration images
(``rank_sensitive_nodes``, scored by ``sqnr_db``).
"""

import math
import os

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that pass a tensor on without mixing channels: a quantized tensor after them still belongs to the conv.
PASS_THROUGH_OPS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool", "AveragePool", "Flatten", "Reshape")


def io_nodes(onnx_path):
    """Names of the first weighted node (the stem conv) and the last (the head), in graph order."""
    import onnx

    nodes = [n.name for n in onnx.load(onnx_path, load_external_data=False).graph.node if n.op_type in WEIGHTED_OPS]
    return list(dict.fromkeys(nodes[:1] + nodes[-1:]))


def _weighted_owner(graph):
    """tensor name -> weighted nodes whose quantization noise it carries (upstream producer, downstream users)."""
    producer = {o: n for n in graph.node for o in n.output}
    owners = {}
    for node in graph.node:
        for tensor in list(node.input) + list(node.output):
            owners.setdefault(tensor, set())
    for tensor in owners:
        node = producer.get(tensor)
        while node is not None and node.op_type in PASS_THROUGH_OPS and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in WEIGHTED_OPS:
            owners[tensor].add(node.name)
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and node.input:
            owners.setdefault(node.input[0], set()).add(node.name)
    return owners


def rank_sensitive_nodes(fp32_path, qdq_path, reader, n_images, work_dir):
    """Weighted nodes ordered by the quantization noise at their activations, noisiest (lowest SQNR) first.

    Runs the FP32 and the QDQ model with every intermediate tensor as an output on the first ``n_images`` images
    of the ``CalibrationReader`` (onnxruntime's ``qdq_loss_debug``) and scores each tensor by the SQNR of its own Q/DQ step. Returns
    ``{"nodes": [...], "ranking": [{"node", "sqnr_db"}, ...]}``, plus ``"error"`` (and no nodes) when the
    debugging tools cannot handle the graph, so that the back-off goes on without this level.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qd

    try:
        aug_float = os.path.join(work_dir, "sensitivity-float.onnx")
        aug_qdq = os.path.join(work_dir, "sensitivity-qdq.onnx")
        qd.modify_model_output_intermediate_tensors(fp32_path, aug_float)
        qd.modify_model_output_intermediate_tensors(qdq_path, aug_qdq)
        feed = reader.head(n_images)
        float_acts = qd.collect_activations(aug_float, feed)
        feed.rewind()
        qdq_acts = qd.collect_activations(aug_qdq, feed)
        matches = qd.create_activation_matching(qdq_acts, float_acts)
    except Exception as exc:  # noqa: BLE001 - a debugging aid must not stop the back-off
        return {"nodes": [], "ranking": [], "error": f"{type(exc).__name__}: {exc}"}
    graph = onnx.load(fp32_path, load_external_data=False).graph
    owners = _weighted_owner(graph)
    relu_out = {o for n in graph.node if n.op_type == "Relu" for o in n.output}
    score = {}
    for tensor, match in matches.items():
        if not match.get("pre_qdq") or not match.get("post_qdq"):
            continue
        pre = np.concatenate([np.ravel(a) for a in match["pre_qdq"]])
        post = np.concatenate([np.ravel(a) for a in match["post_qdq"]])
        if tensor in relu_out:  # ONNX Runtime drops the ReLU and lets the Q/DQ range clip: that is not noise
            pre = np.maximum(pre, 0)
        sqnr = sqnr_db(pre, post)
        for node in owners.get(tensor, ()):
            score[node] = min(score.get(node, np.inf), sqnr)
    ranking = sorted(({"node": n, "sqnr_db": round(s, 3)} for n, s in score.items() if np.isfinite(s)),
                     key=lambda r: r["sqnr_db"])
    return {"nodes": [r["node"] for r in ranking], "ranking": ranking}


def sqnr_db(signal, noisy):
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    signal, noisy = np.asarray(signal, np.float64), np.asarray(noisy, np.float64)
    noise = float(np.sum((signal - noisy) ** 2))
    power = float(np.sum(signal ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * math.log10(max(power, 1e-30) / noise)

