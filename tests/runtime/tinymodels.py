"""Tiny ONNX models built with onnx.helper (no torch), bundles written around them, synthetic images."""

import os

import numpy as np

from lungedge.runtime.bundle import artifact_entry, write_manifest
from lungedge.runtime.preprocess import ct_steps, xray_steps

SIZE = 32  # network input side: small and fast


def _model(nodes, initializers, out_shape, opset=13):
    """A float32 model with input "image" (N, 1, SIZE, SIZE) and output "logits"; dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"] + list(out_shape))
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), name=k) for k, v in initializers.items()]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lungedge-tests")
    model.ir_version = 7  # readable by every onnxruntime the tests run on
    return model


def classifier_model(classes, seed=0):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: logits (N, classes)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
             helper.make_node("Flatten", ["g1"], ["f1"], axis=1),
             helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1)]
    inits = {"w1": rng.normal(0, 0.5, (4, 1, 3, 3)), "b1": rng.normal(0, 0.1, (4,)),
             "w2": rng.normal(0, 1.0, (classes, 4)), "b2": rng.normal(0, 0.1, (classes,))}
    return _model(nodes, inits, [classes])


def classifier_with_features(classes, seed=0):
    """``classifier_model`` exporting its pooled vector (N, 4) as a second output "features", as compress does."""
    from onnx import TensorProto, helper

    model = classifier_model(classes, seed)
    model.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4]))
    model.graph.node[3].output[0] = "features"  # Flatten -> features, read by Gemm and returned
    model.graph.node[4].input[0] = "features"
    return model


def segmenter_model(channels=1, cut=0.0, with_sigmoid=True):
    """Bright-pixel detector: Conv 1x1 (+Sigmoid for one channel) on the standardised input x.

    One channel: sigmoid(8 * (x - cut)), so probability >= 0.5 where x >= cut (x = 0: scaled value 0.5);
    without the Sigmoid node it returns the logit 8 * (x - cut).
    Several channels: logit c = c * x - c * (c - 1) / 2, so argmax is 0 for x < 0, then c for c - 1 <= x < c.
    """
    from onnx import helper

    if channels == 1:
        nodes = [helper.make_node("Conv", ["image", "w", "b"], ["z" if with_sigmoid else "logits"], kernel_shape=[1, 1])]
        if with_sigmoid:
            nodes.append(helper.make_node("Sigmoid", ["z"], ["logits"]))
        inits = {"w": np.full((1, 1, 1, 1), 8.0), "b": np.full(1, -8.0 * cut)}
    else:
        w = np.arange(channels, dtype=float).reshape(channels, 1, 1, 1)
        b = np.array([-c * (c - 1) / 2.0 for c in range(channels)])
        nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"], kernel_shape=[1, 1])]
        inits = {"w": w, "b": b}
    return _model(nodes, inits, [channels, SIZE, SIZE])


def write_bundle(root, model, task, modality, labels, thresholds, positive_label=None, kind="logits",
                 golden=None, steps=None, quality=None):
    """Write model.onnx and a schema-1 manifest into ``root``; returns ``root`` as str.

    Quality control is switched off unless ``quality`` is given: the phantoms here (two-level squares, uniform
    noise) are the kind of image it refuses, and these bundles test the other mechanics; tests/runtime/
    test_quality.py runs bundles with it on.
    """
    import onnx

    root = str(root)
    os.makedirs(root, exist_ok=True)
    onnx.save(model, os.path.join(root, "model.onnx"))
    out_shape = [d.dim_value or -1 for d in model.graph.output[0].type.tensor_type.shape.dim]
    manifest = {
        "schema_version": 1, "name": os.path.basename(root), "task": task, "modality": modality,
        "input": {"name": "image", "shape": [-1, 1, SIZE, SIZE], "dtype": "float32", "value_range": [-2.0, 2.0]},
        "output": {"name": "logits", "kind": kind, "shape": out_shape},
        "preprocessing": steps if steps is not None else (xray_steps(SIZE) if modality == "xray" else ct_steps(SIZE)),
        "labels": labels, "thresholds": thresholds,
        "artifacts": {"onnx-fp32": artifact_entry(root, "model.onnx", "onnx", "fp32", "onnxruntime")},
        "provenance": {"note": "tiny test model"},
    }
    manifest["quality"] = {"enabled": False} if quality is None else quality
    if positive_label:
        manifest["positive_label"] = positive_label
    if golden is not None:
        manifest["golden"] = golden(root)
    write_manifest(root, manifest)
    return root


def golden_writer(count=3, tolerance=1e-4, shift=0.0):
    """Callable(root) writing golden.npz from the fp32 model via onnxruntime; ``shift`` spoils the outputs."""
    def write(root):
        import onnxruntime as ort

        rng = np.random.default_rng(1)
        inputs = rng.normal(0, 1, (count, 1, SIZE, SIZE)).astype(np.float32)
        session = ort.InferenceSession(os.path.join(root, "model.onnx"), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"image": inputs})[0] + np.float32(shift)
        np.savez(os.path.join(root, "golden.npz"), inputs=inputs, outputs=outputs)
        entry = artifact_entry(root, "golden.npz", "npz", "fp32", "none")
        return {"path": "golden.npz", "sha256": entry["sha256"],
                "tolerances": {"fp32": tolerance, "fp16": 1e-2, "int8": 5e-2}}
    return write


def square_image(h=96, w=128, box=(20, 32, 60, 92), low=20, high=220, dtype=np.uint8):
    """Dark image with one bright rectangle (y0, x0, y1, x1); the default maps exactly onto a 32-pixel net."""
    img = np.full((h, w), low, dtype)
    y0, x0, y1, x1 = box
    img[y0:y1, x0:x1] = high
    return img


def chest_like(h=160, w=144, seed=0):
    """A smooth 8-bit frontal-film look-alike (bright mediastinum, two dark lung fields, blurred grain) that
    passes the pixel stage of quality control, unlike ``square_image`` (two levels) or uniform noise."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 60 + 120 * np.exp(-((x - w / 2) ** 2 / (2 * (w / 3) ** 2)))
    for cx in (w * 0.3, w * 0.7):
        img -= 70 * np.exp(-(((x - cx) / (w * 0.14)) ** 2 + ((y - h * 0.5) / (h * 0.28)) ** 2))
    img += cv2.GaussianBlur(rng.normal(0, 25, (h, w)).astype(np.float32), (0, 0), 2)
    return np.clip(img, 0, 255).astype(np.uint8)


def ct_phantom(slices=1, lesion_rows=(30, 48)):
    """HU phantom (slices, 96, 96): outside air, a 40 HU body wall, -850 HU lungs, a 200 HU lesion block.

    Sides are multiples of 3 so the 96 -> 32 letterbox and back is exact: lung 66x66 pixels, lesion 18x30.
    """
    vol = np.full((slices, 96, 96), -1000.0, np.float32)
    vol[:, 6:90, 6:90] = 40.0
    vol[:, 15:81, 15:81] = -850.0
    vol[:, lesion_rows[0]:lesion_rows[1], 30:60] = 200.0
    return vol


def write_ct_series(folder, source, count=4):
    """Copies of a CT DICOM slice with positions 2.5 mm apart, written in scrambled file order.

    Slice k (in patient order) has HU k * 100 in its first row's first 8 pixels; InstanceNumber runs backwards
    so that only ImagePositionPatient gives the right order.
    """
    import pydicom

    os.makedirs(str(folder), exist_ok=True)
    names = np.random.default_rng(7).permutation(count)
    for k in range(count):
        ds = pydicom.dcmread(source)
        arr = ds.pixel_array.copy()
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        arr[0, :8] = int(round((k * 100 - intercept) / slope))
        ds.PixelData = arr.astype(arr.dtype).tobytes()
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 2.5 * k]
        ds.InstanceNumber = count - k
        ds.save_as(os.path.join(str(folder), f"slice_{names[k]:03d}.dcm"))
    return str(folder)


XRAY_LABELS = ["covid", "normal", "pneumonia"]


def xray_classifier_bundle(root, golden=None, quality=None):
    """The tiny 3-class X-ray classifier bundle with golden data (``golden`` overrides the golden writer)."""
    return write_bundle(root, classifier_model(3), "classification", "xray", XRAY_LABELS, {"covid": 0.4},
                        positive_label="covid", golden=golden or golden_writer(), quality=quality)
