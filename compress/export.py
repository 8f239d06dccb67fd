"""ONNX export (opset >= 17, dynamic batch), checked with onnx.checker and shape inference, verified vs torch."""

import warnings

import numpy as np
import onnx
import torch

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Max |torch - ONNX Runtime| on the logits relative to max(1, max |torch logit|), per precision.
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": None}


def export_onnx(model, path, size, opset=17):
    """Export ``model`` (eval mode) for (N, 1, H, W) float32 input with a dynamic batch; returns the path."""
    model = model.eval()
    example = torch.zeros(2, 1, size[0], size[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          dynamo=False)
    check_onnx(path)
    return path


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
