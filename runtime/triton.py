"""Triton export: a bundle's models as a Triton Inference Server model repository (no torch, no TensorRT).

One Triton model per artifact::

    REPO/<model>/config.pbtxt               platform onnxruntime_onnx (ONNX) or tensorrt_plan (engine)
    REPO/<model>/1/model.onnx | model.plan  the artifact, byte for byte (its sha256 was checked on load)
    REPO/<model>/labels.txt                 classification bundles: the labels, for Triton's label_filename
    REPO/<model>/lungedge_manifest.json     the bundle manifest: Triton ignores it; clients read it to
                                            preprocess exactly as the bundle says (lungedge.runtime.preprocess)

Input and output names, element types and shapes come from the ONNX graph (with ``onnx`` when installed, else
an ONNX Runtime session); with ``max_batch_size`` > 0 the batch dimension is left out of ``dims`` as Triton
requires. A TensorRT plan cannot be read without TensorRT on the GPU it was built for, so a plan's tensors
are taken from the ONNX model it was built from (its manifest entry's ``source``, else the fp32 ONNX artifact)
and checked against the manifest. ONNX artifacts meant only as TensorRT build input (backend "tensorrt", e.g. the TensorRT-flavour
QDQ model) are not exported. A plan only loads in a Triton whose TensorRT version and GPU match the engine's
fingerprint, recorded in the manifest and repeated in the export report.
"""

import argparse
import json
import os
import re
import shutil
import sys

from lungedge.runtime.bundle import MANIFEST, Bundle
from lungedge.runtime.enums import BackendName, Precision, TaskKind
from lungedge.runtime.errors import BundleError, ConfigError, LungedgeError

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# ONNX TensorProto element types and ONNX Runtime type strings -> Triton data types.
ONNX_ELEM_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                   6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                   12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8",
             "tensor(uint16)": "TYPE_UINT16", "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32",
             "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL", "tensor(float16)": "TYPE_FP16",
             "tensor(double)": "TYPE_FP64", "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64",
             "tensor(bfloat16)": "TYPE_BF16"}
MANIFEST_COPY = "lungedge_manifest.json"
LABELS_FILE = "labels.txt"


def _onnx_module():
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def onnx_tensors(path):
    """([(name, triton type, shape)], [...]) of an ONNX model's inputs and outputs; -1 for a dynamic dim."""
    onnx = _onnx_module()
    if onnx is not None:
        model = onnx.load(path, load_external_data=False)
        weights = {init.name for init in model.graph.initializer}

        def describe(value):
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            return value.name, _triton_type(ONNX_ELEM_TYPES.get(t.elem_type), t.elem_type, path), dims
        return ([describe(v) for v in model.graph.input if v.name not in weights],
                [describe(v) for v in model.graph.output])
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def describe_ort(arg):
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
        return arg.name, _triton_type(ORT_TYPES.get(arg.type), arg.type, path), dims
    return [describe_ort(a) for a in session.get_inputs()], [describe_ort(a) for a in session.get_outputs()]


def _triton_type(triton, found, path):
    if triton is None:
        raise BundleError(f"{path}: tensor element type {found} has no Triton data type")
    return triton


def external_data_files(path):
    """Relative paths of the external-data files an ONNX model refers to (needs ``onnx``; [] without it)."""
    onnx = _onnx_module()
    if onnx is None:
        return []
    model = onnx.load(path, load_external_data=False)
    files = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in init.external_data if e.key == "location")
    return sorted(files)


def model_name(bundle_name, key):
    """A Triton model (directory) name from the bundle name and artifact key."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{bundle_name}-{key}")


def preferred_batch_sizes(max_batch):
    """Powers of two above 1 up to ``max_batch``, and ``max_batch`` itself."""
    sizes, n = [], 2
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max_batch] if max_batch > 1 else []


def _q(text):
    """A protobuf text-format string literal (names here are printable ASCII; anything else is refused)."""
    if not all(32 <= ord(c) < 127 for c in text):
        raise BundleError(f"name {text!r} has characters Triton's config cannot take; rename the tensor")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(name, dtype, dims, label_file=None):
    lines = ["  {", f"    name: {_q(name)}", f"    data_type: {dtype}",
             f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]"]
    if label_file:
        lines.append(f"    label_filename: {_q(label_file)}")
    return lines + ["  }"]


def config_pbtxt(name, platform, max_batch, inputs, outputs, instance_count, kind, labels_output=None,
                 queue_delay_us=100):
    """The model's config.pbtxt text; ``inputs``/``outputs`` hold (name, triton type, dims without batch)."""
    lines = [f"name: {_q(name)}", f"platform: {_q(platform)}", f"max_batch_size: {int(max_batch)}", "input ["]
    for i, (tname, dtype, dims) in enumerate(inputs):
        lines += _tensor_block(tname, dtype, dims)
        lines[-1] += "," if i < len(inputs) - 1 else ""
    lines += ["]", "output ["]
    for i, (tname, dtype, dims) in enumerate(outputs):
        lines += _tensor_block(tname, dtype, dims, LABELS_FILE if tname == labels_output else None)
        lines[-1] += "," if i < len(outputs) - 1 else ""
    lines.append("]")
    if max_batch > 0:
        lines += ["dynamic_batching {",
                  f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred_batch_sizes(max_batch))} ]"
                  if max_batch > 1 else "", f"  max_queue_delay_microseconds: {int(queue_delay_us)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {int(instance_count)}", f"    kind: {kind}", "  }", "]"]
    return "\n".join(line for line in lines if line) + "\n"


def _plan_tensors(bundle, key):
    """A plan's tensors: from the ONNX model it was built from (its ``source``, else the fp32 ONNX artifact),
    checked against the manifest."""
    m = bundle.manifest
    arts = m["artifacts"]
    sources = [k for k in (arts[key].get("source"),) if k in arts and arts[k]["format"].startswith("onnx")] or \
              [k for k, a in arts.items() if a["format"] == "onnx" and a["precision"] == Precision.FP32]
    if not sources:
        raise BundleError(f"cannot describe engine {key!r}: the bundle has no ONNX artifact to read its tensor "
                          "names and types from")
    inputs, outputs = onnx_tensors(bundle.path_of(sources[0]))
    expected = (m["input"]["name"], m["output"]["name"])
    if (inputs[0][0], outputs[0][0]) != expected:
        raise BundleError(f"engine {key!r}: the ONNX model's tensors {inputs[0][0]!r} -> {outputs[0][0]!r} differ "
                          f"from the manifest's {expected[0]!r} -> {expected[1]!r}")
    return inputs, outputs


def _batch_layout(key, inputs, outputs, max_batch):
    """(max_batch_size, inputs, outputs, note): batch dim dropped, or 0, full dims and a note for a fixed batch."""
    if all(t[2] and t[2][0] == -1 for t in inputs + outputs):
        strip = [(n, d, dims[1:]) for n, d, dims in inputs], [(n, d, dims[1:]) for n, d, dims in outputs]
        return max_batch, strip[0], strip[1], None
    return 0, inputs, outputs, (f"{key}: the model has a fixed batch dimension, so max_batch_size is 0 and "
                                "Triton will not batch requests")


def plan_artifacts(manifest, platforms):
    """[(key, platform key)] of the artifacts to export, and [(key, why not)] of those left out."""
    chosen, skipped = [], []
    for key, art in sorted(manifest["artifacts"].items()):
        is_onnx = art["format"].startswith("onnx")
        if is_onnx and art["backend"] == BackendName.ONNXRUNTIME:
            kind = "onnxruntime"
        elif not is_onnx and art["backend"] == BackendName.TENSORRT:
            kind = "tensorrt"
        else:
            skipped.append((key, f"{art['format']} for {art['backend']} is a build input, not a servable model"))
            continue
        if kind in platforms:
            chosen.append((key, kind))
        else:
            skipped.append((key, f"platform {kind!r} not requested"))
    return chosen, skipped


def export_triton(bundle_dir, repo_dir, max_batch=8, instance_count=1, platforms=("onnxruntime", "tensorrt"),
                  onnx_device="gpu", overwrite=False):
    """Write one Triton model per servable artifact of ``bundle_dir`` into ``repo_dir``; returns a report dict."""
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ConfigError(f"unknown platform(s) {unknown}; choose from {sorted(PLATFORMS)}")
    if max_batch < 0 or instance_count < 1 or onnx_device not in INSTANCE_KINDS:
        raise ConfigError("max_batch must be >= 0, instance_count >= 1, onnx_device 'gpu' or 'cpu'")
    bundle = Bundle.load(bundle_dir)  # verifies every artifact's sha256 before anything is copied
    m = bundle.manifest
    chosen, skipped = plan_artifacts(m, platforms)
    if not chosen:
        raise BundleError(f"bundle {m['name']!r} has no artifact for platform(s) {list(platforms)}: "
                          + "; ".join(f"{k}: {why}" for k, why in skipped))
    os.makedirs(repo_dir, exist_ok=True)
    models = []
    for key, kind in chosen:
        name = model_name(m["name"], key)
        final = os.path.join(repo_dir, name)
        if os.path.exists(final) and not overwrite:
            raise FileExistsError(f"{final} exists; remove it or export with overwrite")
        models.append(_write_model(bundle, key, kind, name, repo_dir, max_batch, instance_count, onnx_device))
    return {"repository": os.path.abspath(repo_dir), "bundle": m["name"], "models": models,
            "skipped": [{"artifact": k, "reason": why} for k, why in skipped]}


def _write_model(bundle, key, kind, name, repo_dir, max_batch, instance_count, onnx_device):
    m, art = bundle.manifest, bundle.manifest["artifacts"][key]
    source = bundle.path_of(key)
    inputs, outputs = onnx_tensors(source) if kind == BackendName.ONNXRUNTIME else _plan_tensors(bundle, key)
    batch, inputs, outputs, note = _batch_layout(key, inputs, outputs, max_batch)
    notes = [note] if note else []
    if kind == BackendName.TENSORRT and art.get("max_batch") and batch > int(art["max_batch"]):
        batch = int(art["max_batch"])
        notes.append(f"{key}: max_batch_size lowered to the engine's profile maximum {batch}")
    labels_output = None
    if m["task"] == TaskKind.CLASSIFICATION and outputs[0][2] == ([len(m["labels"])] if batch else [1, len(m["labels"])]):
        labels_output = outputs[0][0]
    kind_name = INSTANCE_KINDS["gpu" if kind == BackendName.TENSORRT else onnx_device]
    tmp = os.path.join(repo_dir, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "1"))
    shutil.copyfile(source, os.path.join(tmp, "1", MODEL_FILES[kind]))
    if kind == BackendName.ONNXRUNTIME:
        for rel in external_data_files(source):
            target = os.path.join(tmp, "1", rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(os.path.dirname(source), rel), target)
    with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as fh:
        fh.write(config_pbtxt(name, PLATFORMS[kind], batch, inputs, outputs, instance_count, kind_name,
                              labels_output))
    if labels_output:
        with open(os.path.join(tmp, LABELS_FILE), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{label}\n" for label in m["labels"]))
    shutil.copyfile(os.path.join(bundle.root, MANIFEST), os.path.join(tmp, MANIFEST_COPY))
    final = os.path.join(repo_dir, name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    entry = {"name": name, "artifact": key, "platform": PLATFORMS[kind], "max_batch_size": batch,
             "inputs": [list(t) for t in inputs], "outputs": [list(t) for t in outputs], "kind": kind_name,
             "notes": notes}
    if kind == BackendName.TENSORRT:
        entry["engine_fingerprint"] = {k: art.get(k) for k in ("trt_version", "compute_capability", "device_name")}
        notes.append(f"{key}: loads only in a Triton with TensorRT {art.get('trt_version')} on a "
                     f"{art.get('device_name')} (compute capability {art.get('compute_capability')})")
    return entry


def build_parser():
    parser = argparse.ArgumentParser(prog="lungedge export triton",
                                     description="Write a bundle's models as a Triton model repository.")
    parser.add_argument("bundle")
    parser.add_argument("--out", required=True, help="model repository folder (created if missing)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1, help="instance_group count per model")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS), default=None,
                        help="export only this platform (repeatable; default: both)")
    parser.add_argument("--onnx-device", choices=sorted(INSTANCE_KINDS), default="gpu",
                        help="instance kind of the ONNX Runtime models (TensorRT plans are always GPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace models already in the repository")
    return parser


def main(argv=None):
    """``lungedge export triton BUNDLE --out REPO``; argv may start with "export", "triton" or both."""
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] in ("export", "triton", "export-triton"):
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        result = export_triton(args.bundle, args.out, max_batch=args.max_batch, instance_count=args.instances,
                               platforms=tuple(args.platform or PLATFORMS), onnx_device=args.onnx_device,
                               overwrite=args.overwrite)
    except (LungedgeError, OSError, ValueError) as exc:
        print(f"lungedge export triton: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    for model in result["models"]:
        for note in model["notes"]:
            print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
