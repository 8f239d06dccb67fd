"""Post-training INT8 quantization of an FP32 ONNX model into QDQ form, plus FP16 conversion for GPU targets.

Two flavours of the same QDQ graph, chosen by where the bundle will run:

``ort_cpu``   ONNX Runtime on a CPU: unsigned 8-bit activations (asymmetric, QUInt8) with signed symmetric 8-bit
              weights (QInt8, per channel), "U8S8", the form ORT's x86 and ARM kernels run fastest. Biases are
              int32; ReLUs fold into the activation ranges.
``tensorrt``  TensorRT explicit quantization: signed symmetric 8-bit activations and weights (zero points 0), one
              scale per output channel for weights (axis 0 for Conv) and a scalar scale per activation, float weights
              behind a QuantizeLinear (the form TensorRT 8.x requires), float biases (TensorRT has no INT32 Q/DQ),
              one Q/DQ pair per consumer. Q/DQ sit on the inputs of weighted ops, on the skip input of residual adds
              and around pools; none between a Conv and the Add or ReLU it fuses with (TensorRT's placement advice).

Both run ORT's ``quant_pre_process`` (shape inference and graph optimisation) first, calibrate on a
``CalibrationReader`` of real training images, leave the graph outputs in float, and are checked after writing
(``qdq_check``), so a model that breaks its target's rules never leaves this module. The ORT option names live in
``ort_arguments`` only.
"""

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass

import onnx

from lungedge.compress.calibration import CalibrationReader
from lungedge.compress.errors import CalibrationError, ConfigError, QuantizationError, config_from_dict
from lungedge.compress.qdq_check import check_ort_qdq, check_tensorrt_qdq
from lungedge.runtime.enums import StrEnum


class Flavour(StrEnum):
    ORT_CPU = "ort_cpu"
    TENSORRT = "tensorrt"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


# Ops that carry Q/DQ in the tensorrt flavour: weighted ops, the residual add, pools (TensorRT runs these in INT8).
TENSORRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool")
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantConfig:
    flavour: str = "ort_cpu"  # Flavour
    calibration_method: str = "minmax"  # CalibrationMethod
    per_channel: bool = True
    num_images: int = 128  # training images to calibrate on (the reader must have at least this many)
    percentile: float = 99.999  # for calibration_method "percentile"
    nodes_to_exclude: tuple = ()  # node names kept in float (the accuracy gate's back-off)
    reduce_range: bool = False  # 7-bit weights for x86 CPUs without VNNI (ort_cpu only)

    def __post_init__(self):
        object.__setattr__(self, "flavour", Flavour.parse(self.flavour, "flavour", ConfigError))
        object.__setattr__(self, "calibration_method",
                           CalibrationMethod.parse(self.calibration_method, "calibration_method", ConfigError))
        if isinstance(self.nodes_to_exclude, str):
            raise ConfigError("nodes_to_exclude must be a list of node names, not one string")
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if int(self.num_images) < 1:
            raise ConfigError(f"num_images must be >= 1, got {self.num_images}")
        if not 90.0 <= float(self.percentile) < 100.0:
            raise ConfigError(f"percentile must be in [90, 100), got {self.percentile}")
        if self.reduce_range and self.flavour == Flavour.TENSORRT:
            raise ConfigError("reduce_range is for ort_cpu on CPUs without VNNI; TensorRT uses the full int8 range")

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)

    def to_dict(self):
        """Plain data for a recipe file or the bundle manifest."""
        d = dataclasses.asdict(self)
        d["nodes_to_exclude"] = list(self.nodes_to_exclude)
        return d


def ort_arguments(config):
    """Keyword arguments of onnxruntime's ``quantize_static`` for ``config`` (all ORT option strings live here)."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType

    methods = {"minmax": OrtMethod.MinMax, "entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile}
    args = {"quant_format": QuantFormat.QDQ, "per_channel": config.per_channel, "reduce_range": config.reduce_range,
            "weight_type": QuantType.QInt8, "calibrate_method": methods[config.calibration_method],
            "nodes_to_exclude": list(config.nodes_to_exclude)}
    extra = {"WeightSymmetric": True}
    if config.calibration_method == CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = float(config.percentile)
    if config.flavour == Flavour.ORT_CPU:
        args["activation_type"] = QuantType.QUInt8
        extra["ActivationSymmetric"] = False
    else:
        args["activation_type"] = QuantType.QInt8
        args["op_types_to_quantize"] = list(TENSORRT_OP_TYPES)
        extra.update({
            "ActivationSymmetric": True,  # zero point 0: TensorRT's parser rejects anything else
            "AddQDQPairToWeight": True,  # float weight -> Q -> DQ; TensorRT 8.x takes no int8 weight initializers
            "QuantizeBias": False,  # TensorRT has no INT32 Q/DQ; it folds float biases itself
            "DedicatedQDQPair": True,  # one Q/DQ pair per consumer, as TensorRT's fusions expect
            "QDQKeepRemovableActivations": True,  # keep ReLU explicit; TensorRT fuses Conv+ReLU itself
            "ForceQuantizeNoInputCheck": True,  # pools get Q/DQ even where their input was not quantized
            # TensorRT: no Q/DQ on the outputs of weighted ops, nor between a residual Add and its ReLU.
            "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OP_TYPES) + ["Add"],
        })
    args["extra_options"] = extra
    return args


def _node_names(path):
    return {n.name for n in onnx.load(path, load_external_data=False).graph.node}


def _input_names(path):
    g = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return [i.name for i in g.input if i.name not in inits]


def _pre_process(src, dst):
    """ORT's quantization pre-processing; symbolic shape inference is skipped when it cannot handle the graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, dst)
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs; ONNX inference suffices
        quant_pre_process(src, dst, skip_symbolic_shape=True)


def _drop_qdq_pairs(graph, dqs):
    """Remove DequantizeLinear nodes ``dqs`` and their QuantizeLinear (once unused); the float tensor flows on."""
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    gone = set()
    for dq in dqs:
        inner, target = producer[dq.input[0]].input[0], dq.output[0]
        # A graph output keeps its name: the float tensor is renamed to it. Elsewhere consumers read the float one.
        old, new = (inner, target) if target in outputs else (target, inner)
        for node in graph.node:
            if id(node) != id(dq):
                node.input[:] = [new if name == old else name for name in node.input]
                node.output[:] = [new if name == old else name for name in node.output]
        stale = [v for v in graph.value_info if v.name == old]
        for v in stale:
            graph.value_info.remove(v)
        gone.add(id(dq))
    read = {name for n in graph.node if id(n) not in gone for name in n.input}
    gone |= {id(n) for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] not in read}
    kept = [n for n in graph.node if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _pair_source(name, producer):
    """(DequantizeLinear, producer of the tensor its QuantizeLinear reads) when ``name`` comes out of a Q/DQ pair."""
    dq = producer.get(name)
    q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return None, None
    return dq, producer.get(q.input[0])


def keep_outputs_float(model):
    """Remove the Q/DQ pairs that produce graph outputs, in place; returns the names of those outputs.

    A quantized output is clipped to its calibration range at 8-bit resolution: the logits the thresholds were
    fitted on would saturate on confident cases. The op before it writes the output in float instead.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    dqs = [dq for dq, _ in (_pair_source(o.name, producer) for o in model.graph.output) if dq is not None]
    _drop_qdq_pairs(model.graph, dqs)
    return [dq.output[0] for dq in dqs]


def fuse_ready_residual_adds(model):
    """Let each residual Add read one Conv/Gemm/MatMul output in float, in place; returns the pairs removed.

    ORT quantizes every input of an Add. TensorRT fuses Conv + Add (+ ReLU) into one INT8 kernel when the Add
    reads the Conv's output directly and only its skip input through Q/DQ; a pair between them splits the fusion.
    Where both inputs come from weighted ops (a downsampling block) the second keeps its pair as the skip input.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    dqs = []
    for add in (n for n in model.graph.node if n.op_type == "Add"):
        for name in add.input:
            dq, src = _pair_source(name, producer)
            if src is not None and src.op_type in WEIGHTED_OP_TYPES:
                dqs.append(dq)
                break
    _drop_qdq_pairs(model.graph, dqs)
    return len(dqs)


def strip_unused_opsets(path):
    """Drop opset imports of domains no node uses (ORT's optimiser adds its internal ones)."""
    model = onnx.load(path)
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, path)


def quantize_onnx(fp32_path, out_path, reader, config):
    """Quantize ``fp32_path`` to a QDQ model at ``out_path`` calibrated on ``reader``; returns a report dict.

    The written model is checked against its flavour's rules (QuantizationError on a violation).
    """
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if not isinstance(reader, CalibrationReader):
        raise CalibrationError(f"quantize_onnx needs a CalibrationReader over real training images, got "
                               f"{type(reader).__name__}; random or synthetic calibration data is refused")
    if reader.count < config.num_images:
        raise CalibrationError(f"the recipe asks for {config.num_images} calibration images but the reader has "
                               f"{reader.count}; add training images or lower num_images")
    inputs = _input_names(fp32_path)
    if inputs != [reader.input_name]:
        raise QuantizationError(f"model inputs are {inputs}; the calibration reader feeds {reader.input_name!r}")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="lungedge-quant-") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        _pre_process(fp32_path, pre)
        missing = sorted(set(config.nodes_to_exclude) - _node_names(pre))
        if missing:
            raise QuantizationError(f"nodes_to_exclude names {missing} that the model does not have; use node "
                                    "names of the exported FP32 graph")
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        reader.rewind()
        try:
            quantize_static(pre, out_path, reader, **ort_arguments(config))
        finally:
            reader.rewind()
    model = onnx.load(out_path)
    freed = keep_outputs_float(model)
    if config.flavour == Flavour.TENSORRT:
        fuse_ready_residual_adds(model)
    onnx.save(model, out_path)
    strip_unused_opsets(out_path)
    check = check_tensorrt_qdq(out_path) if config.flavour == Flavour.TENSORRT else check_ort_qdq(out_path)
    return {"path": out_path, "bytes": os.path.getsize(out_path), "precision": "int8", "format": "onnx",
            "quant_format": "qdq",
            "flavour": config.flavour, "config": config.to_dict(), "calibration": reader.describe(),
            "qdq": check, "float_outputs": freed, "onnxruntime_version": onnxruntime.__version__,
            "seconds": round(time.time() - start, 2)}


def sort_topologically(graph):
    """Reorder ``graph.node`` in place so every node follows the producers of its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not set(n.input) <= ready]
        done = [n for n in pending if set(n.input) <= ready]
        if not done:
            raise QuantizationError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(fp32_path, out_path):
    """FP16 copy of an FP32 ONNX model with float32 inputs and outputs (Cast nodes at the edges); returns a report.

    For ONNX Runtime CUDA or Triton. TensorRT builds FP16 itself from the FP32 model (``EngineConfig(precision=
    "fp16")``); TensorRT 11 and later build what the ONNX types say, so there this model is the FP16 input.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(fp32_path)
    half = convert_float_to_float16(model, keep_io_types=True)
    sort_topologically(half.graph)  # the converter appends its input Casts at the end
    onnx.checker.check_model(half)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    onnx.save(half, out_path)
    n_half = sum(1 for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    return {"path": out_path, "bytes": os.path.getsize(out_path), "precision": "fp16", "format": "onnx",
            "io_dtype": "float32", "fp16_initializers": n_half}
