"""TensorRT engine build from ONNX (TensorRT 8.5 to 10.x; 11 where the API allows), with its device fingerprint.

FP32 and FP16 engines build from the FP32 ONNX (FP16 by the builder flag); INT8 engines build from the QDQ model of
``quantize_onnx(flavour="tensorrt")`` by explicit quantization: no calibrator (TensorRT's implicit calibration is
deprecated since 10.1 and gone in 11). The plan file is written exactly as TensorRT serialised it (never with
metadata in front); what the runtime needs to match it to a device goes into the returned fingerprint, which the
caller records in the bundle manifest's artifact entry.

Version gating is in pure functions (``network_flags``, ``builder_flags``) so it is tested without TensorRT:
EXPLICIT_BATCH only before TensorRT 10 (ignored there, gone later); FP16/INT8 builder flags only before TensorRT 11,
which builds strongly typed (the precision is what the ONNX types say: the QDQ model or ``convert_fp16``'s).
"""

import dataclasses
import os
import shlex
from dataclasses import dataclass

from lungedge.compress.errors import CompressError, ConfigError, EngineBuildError, config_from_dict
from lungedge.runtime.enums import Precision
from lungedge.runtime.errors import BackendUnavailable

PRECISIONS = Precision.values()


@dataclass(frozen=True)
class EngineConfig:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024
    dla_core: int = None  # None: GPU only; n: build for DLA core n (Jetson), layers DLA cannot run go to the GPU
    gpu_fallback: bool = True
    timing_cache: str = None  # path of a timing cache file, read if present and written back after the build

    def __post_init__(self):
        object.__setattr__(self, "precision", Precision.parse(self.precision, "engine precision", ConfigError))
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.workspace_mib < 1:
            raise ConfigError(f"workspace_mib must be >= 1, got {self.workspace_mib}")
        if self.dla_core is not None:
            if int(self.dla_core) < 0:
                raise ConfigError(f"dla_core must be None or >= 0, got {self.dla_core}")
            if self.precision == Precision.FP32:
                raise ConfigError("DLA runs FP16 and INT8 only; use precision 'fp16' or 'int8' with dla_core")

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)

    def to_dict(self):
        return dataclasses.asdict(self)


def parse_version(text):
    """(major, minor, patch) of a TensorRT version string such as '10.3.0.26'."""
    parts = [int(p) for p in str(text).split(".")[:3] if p.isdigit()]
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts + [0] * (3 - len(parts)))


def network_flags(trt_version):
    """NetworkDefinitionCreationFlag names to set: EXPLICIT_BATCH before TensorRT 10 (implicit batch was default)."""
    return ["EXPLICIT_BATCH"] if parse_version(trt_version)[0] < 10 else []


def builder_flags(trt_version, precision, dla_core=None, gpu_fallback=True):
    """BuilderFlag names to set for ``precision`` on this TensorRT version.

    INT8 (explicit quantization from Q/DQ) also allows FP16 so the layers left in float run in half precision, as
    trtexec's ``--int8 --fp16``. TensorRT 11 has no precision flags (the network is strongly typed) and no DLA.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"engine precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    major = parse_version(trt_version)[0]
    if dla_core is not None and major >= 11:
        raise BackendUnavailable(f"TensorRT {trt_version} has no DLA support (the 10.x releases of JetPack have it); "
                                 "build for the GPU (dla_core None)")
    flags = []
    if major < 11:
        flags += {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
    if dla_core is not None and gpu_fallback:
        flags.append("GPU_FALLBACK")
    return flags


def profile_shapes(config, input_hw):
    """(min, opt, max) input shapes (N, 1, H, W) of the optimization profile."""
    h, w = (int(v) for v in input_hw)
    return tuple((b, 1, h, w) for b in (config.min_batch, config.opt_batch, config.max_batch))


def trtexec_command(onnx_path, engine_path, config, input_name="image", input_hw=(256, 256), trt_version="10.0"):
    """The trtexec command line that builds the same engine (for docs and on-device builds)."""
    lo, opt, hi = ("x".join(str(d) for d in s) for s in profile_shapes(config, input_hw))
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", f"--minShapes={input_name}:{lo}",
            f"--optShapes={input_name}:{opt}", f"--maxShapes={input_name}:{hi}",
            f"--memPoolSize=workspace:{int(config.workspace_mib)}"]
    flags = builder_flags(trt_version, config.precision, config.dla_core, config.gpu_fallback)
    args += [f"--{f.lower()}" for f in flags if f in ("FP16", "INT8")]
    if config.dla_core is not None:
        args.append(f"--useDLACore={int(config.dla_core)}")
        if "GPU_FALLBACK" in flags:
            args.append("--allowGPUFallback")
    if config.timing_cache:
        args.append(f"--timingCacheFile={config.timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed: engines build on the target device (JetPack ships it; "
                                 "on x86 GPUs `pip install tensorrt`), or use trtexec_command() there") from None
    return tensorrt


def device_info(index=0):
    """(name, 'major.minor') of CUDA device ``index``, read as the runtime's TensorRT backend reads it.

    pycuda first (what the runtime uses), else cuda-python; both imported lazily, no ``pycuda.autoinit``.
    """
    try:
        import pycuda.driver as cuda
    except ImportError:
        cuda = None
    if cuda is not None:
        try:
            cuda.init()
        except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types for a missing driver
            raise BackendUnavailable(f"CUDA is not usable here: {exc}") from None
        if index >= cuda.Device.count():
            raise BackendUnavailable(f"no CUDA device {index}: this machine has {cuda.Device.count()}")
        dev = cuda.Device(index)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError:
        raise BackendUnavailable("the engine fingerprint needs pycuda (Jetson: JetPack's CUDA) or cuda-python "
                                 "to name the GPU") from None
    err, props = cudart.cudaGetDeviceProperties(index)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA device {index} not available (cudaGetDeviceProperties error {int(err)})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00")[0].strip(), f"{props.major}.{props.minor}"


def _has_qdq(onnx_path):
    import onnx

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for n in onnx.load(onnx_path, load_external_data=False).graph.node)


def _has_fp16(onnx_path):
    import onnx

    return any(i.data_type == onnx.TensorProto.FLOAT16
               for i in onnx.load(onnx_path, load_external_data=False).graph.initializer)


def _check_model_for(config, onnx_path, trt_version):
    """Refuse model/precision pairs that would silently build something else than asked."""
    if config.precision == Precision.INT8 and not _has_qdq(onnx_path):
        raise EngineBuildError("precision 'int8' builds from a QDQ model (quantize_onnx with flavour 'tensorrt'); "
                               f"{os.path.basename(onnx_path)} has no Q/DQ nodes")
    if config.precision != Precision.INT8 and _has_qdq(onnx_path):
        raise EngineBuildError(f"{os.path.basename(onnx_path)} is a QDQ model: build it with precision 'int8'")
    if parse_version(trt_version)[0] >= 11 and config.precision == Precision.FP16 and not _has_fp16(onnx_path):
        raise EngineBuildError("TensorRT 11 builds the precision the ONNX types say: convert with convert_fp16() "
                               "for an FP16 engine")


def _read_timing_cache(trt_config, path):
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as fh:
            data = fh.read()
    cache = trt_config.create_timing_cache(data)
    if not trt_config.set_timing_cache(cache, False):  # a cache from another GPU or version: start afresh
        cache = trt_config.create_timing_cache(b"")
        trt_config.set_timing_cache(cache, False)


def _write_atomically(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def build_engine(onnx_path, engine_path, config, input_name="image", input_hw=None):
    """Build a TensorRT plan from ``onnx_path`` into ``engine_path``; returns the fingerprint dict.

    ``input_hw``: (H, W) of the network input; read from the ONNX model when None (it must then be static).
    """
    trt = import_tensorrt()
    version = trt.__version__
    device_name, capability = device_info()
    _check_model_for(config, onnx_path, version)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in network_flags(version):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {version} cannot parse {os.path.basename(onnx_path)}: {errors}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [input_name]:
        raise EngineBuildError(f"network inputs are {[t.name for t in inputs]}, expected [{input_name!r}]")
    if input_hw is None:
        input_hw = tuple(inputs[0].shape)[2:]
        if len(input_hw) != 2 or min(input_hw) < 1:
            raise EngineBuildError(f"input shape {tuple(inputs[0].shape)} has dynamic H/W: pass input_hw")
    trt_config = builder.create_builder_config()
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_mib) << 20)
    for name in builder_flags(version, config.precision, config.dla_core, config.gpu_fallback):
        trt_config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *profile_shapes(config, input_hw))
    trt_config.add_optimization_profile(profile)
    if config.dla_core is not None:
        if config.dla_core >= builder.num_DLA_cores:
            raise BackendUnavailable(f"DLA core {config.dla_core} requested; this device has "
                                     f"{builder.num_DLA_cores} DLA core(s)")
        trt_config.default_device_type = trt.DeviceType.DLA
        trt_config.DLA_core = int(config.dla_core)
    if config.timing_cache:
        _read_timing_cache(trt_config, config.timing_cache)
    plan = builder.build_serialized_network(network, trt_config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {version} failed to build {os.path.basename(onnx_path)} at "
                               f"{config.precision}; the warnings above name the layer")
    _write_atomically(engine_path, bytes(plan))
    if config.timing_cache:
        _write_atomically(config.timing_cache, bytes(trt_config.get_timing_cache().serialize()))
    return {"trt_version": version, "device_name": device_name, "compute_capability": capability,
            "precision": config.precision, "dla_core": config.dla_core, "min_batch": config.min_batch,
            "opt_batch": config.opt_batch, "max_batch": config.max_batch, "input_name": input_name,
            "input_hw": [int(v) for v in input_hw],
            "builder_flags": builder_flags(version, config.precision, config.dla_core, config.gpu_fallback)}


# --- the engine stage: a plan added to a finished bundle, on the target ------------------------------------


def engine_source(manifest, precision, trt_major):
    """Artifact key an engine of ``precision`` builds from: the TensorRT QDQ model for INT8, else FP32 ONNX
    (the FP16 ONNX on TensorRT 11+, which builds the precision the ONNX types say)."""
    arts = manifest["artifacts"]
    if precision == Precision.INT8:
        keys = [k for k, a in arts.items() if a["backend"] == "tensorrt-source" and a["precision"] == Precision.INT8]
        if not keys:
            raise CompressError("an INT8 engine builds from the TensorRT QDQ model (artifact onnx-int8-trt); this "
                                "bundle has none: compress with a recipe quantizing flavour 'tensorrt'")
        return keys[0]
    if precision == Precision.FP16 and trt_major >= 11:
        if "onnx-fp16" not in arts:
            raise CompressError("TensorRT 11+ builds FP16 from an FP16 ONNX model; compress with fp16: true")
        return "onnx-fp16"
    return "onnx-fp32"


def build_engine_into_bundle(bundle_dir, precision, dla_core=None, timing_cache=None, max_batch=8, workspace_mib=1024):
    """Build a TensorRT plan from the bundle's matching ONNX artifact and add it (with its fingerprint)."""
    from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest

    trt = import_tensorrt()
    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    source = engine_source(manifest, precision, parse_version(trt.__version__)[0])
    config = EngineConfig(precision=precision, dla_core=dla_core, timing_cache=timing_cache,
                          max_batch=max_batch, opt_batch=1, workspace_mib=workspace_mib)
    key = f"trt-{precision}" + (f"-dla{dla_core}" if dla_core is not None else "")
    filename = f"model-{precision}" + (f"-dla{dla_core}" if dla_core is not None else "") + ".plan"
    fingerprint = build_engine(bundle.path_of(source), os.path.join(bundle.root, filename), config,
                               input_hw=bundle.input_size)
    extra = {k: v for k, v in fingerprint.items() if k != "precision"}
    extra.update(source=source, engine_config=dataclasses.asdict(config))
    if "threshold" in manifest["artifacts"][source]:
        extra["threshold"] = manifest["artifacts"][source]["threshold"]
    manifest["artifacts"][key] = artifact_entry(bundle.root, filename, "plan", precision, "tensorrt", **extra)
    write_manifest(bundle.root, manifest)
    return key
