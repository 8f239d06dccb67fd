"""ONNX export (opset >= 17, dynamic batch), checked with onnx.checker and shape inference, verified vs torch."""

import warnings

import numpy as np
import onnx
import torch

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Second output of classifiers: the pooled feature vector (the input of the last Linear layer), scored by the
# runtime's out-of-distribution check (lungedge.runtime.ood). Logits stay the first output.
FEATURE_NAME = "features"
# Max |torch - ONNX Runtime| on the logits relative to max(1, max |torch logit|), per precision.
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": None}


class WithFeatures(torch.nn.Module):
    """``model`` returning (logits, pooled features): the features are what enters its last Linear layer."""

    def __init__(self, model):
        super().__init__()
        heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not heads:
            raise ValueError(f"{type(model).__name__} has no Linear head to take pooled features from")
        self.model, self.head = model, heads[-1]

    def forward(self, x):
        seen = []
        handle = self.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return logits, torch.flatten(seen[-1], 1)


def export_onnx(model, path, size, opset=17, features=False):
    """Export ``model`` (eval mode) for (N, 1, H, W) float32 input with a dynamic batch; returns the path.

    features: also export the pooled feature vector as the second output ``FEATURE_NAME`` (classifiers).
    """
    model = model.eval()
    example = torch.zeros(2, 1, size[0], size[1])
    names = [OUTPUT_NAME, FEATURE_NAME] if features else [OUTPUT_NAME]
    module = WithFeatures(model).eval() if features else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), path, input_names=[INPUT_NAME], output_names=names,
                          opset_version=opset, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME] + names},
                          dynamo=False)
    _name_outputs(path, names)
    check_onnx(path)
    return path


def _name_outputs(path, names):
    """Give the graph outputs their intended names. The exporter keeps an internal tensor's name when the output
    is that very tensor (DenseNet's pooled features are already flat, so the flatten above is a no-op); an
    Identity node then carries it to the right name."""
    m = onnx.load(path)
    changed = False
    for out, name in zip(m.graph.output, names):
        if out.name != name:
            m.graph.node.append(onnx.helper.make_node("Identity", [out.name], [name], name=f"output_{name}"))
            out.name = name
            changed = True
    if changed:
        onnx.save(m, path)


def check_onnx(path):
    """onnx.checker plus strict shape inference; raises on an invalid graph."""
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    return m


def ort_session(path, threads=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify_onnx(model, path, inputs, precision="fp32", tolerance=None):
    """Compare ONNX Runtime to torch on real preprocessed ``inputs`` (N, 1, H, W); returns a report dict."""
    tol = TOLERANCES.get(precision) if tolerance is None else tolerance
    ref = model.eval()(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()
    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: inputs.astype(np.float32)})[0]
    diff = float(np.abs(got - ref).max())
    rel = diff / max(1.0, float(np.abs(ref).max()))
    report = {"precision": precision, "n_images": int(len(inputs)), "max_abs_diff": diff, "max_rel_diff": rel,
              "tolerance": tol}
    if ref.ndim == 2:
        report["label_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
    else:
        report["mask_agreement"] = float(((got > 0) == (ref > 0)).mean())
    report["passed"] = bool(tol is None or rel <= tol)
    return report
