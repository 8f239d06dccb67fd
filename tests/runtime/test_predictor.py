"""Predictor: classification decisions, segmentation masks on the original grid, modality, threads."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tinymodels import segmenter_model, square_image, write_bundle

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.predictor import Predictor, array_source, decide_label, softmax

LABELS = ("covid", "normal", "pneumonia")


@pytest.mark.parametrize("probs,positive,threshold,label", [
    ((0.30, 0.60, 0.10), "covid", 0.25, "covid"),      # positive reaches its threshold although not the argmax
    ((0.25, 0.60, 0.15), "covid", 0.25, "covid"),      # exactly at the threshold counts as positive
    ((0.24, 0.16, 0.60), "covid", 0.25, "pneumonia"),  # below: argmax of the rest
    ((0.50, 0.20, 0.30), "covid", 0.60, "pneumonia"),  # the positive is the argmax but below its threshold
    ((0.50, 0.20, 0.30), None, None, "covid"),         # no positive label: plain argmax
])
def test_decide_label(probs, positive, threshold, label):
    assert decide_label(dict(zip(LABELS, probs)), positive, threshold) == label


def test_softmax_is_stable():
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isfinite(p).all() and p[0] == pytest.approx(1.0)


def test_classification_result(xray_cls_bundle, write_png):
    predictor = Predictor.from_bundle(xray_cls_bundle, threads=1)
    path = write_png("chest.png", square_image())
    result = predictor.predict(path)
    assert result["input"] == {"file": "chest.png"} and result["task"] == "classification"
    assert set(result["probabilities"]) == set(LABELS)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["label"] == decide_label(result["probabilities"], "covid", 0.4)
    assert result["positive"] == (result["label"] == "covid") and result["threshold"] == 0.4
    assert result["bundle"]["backend"] == "onnxruntime" and result["bundle"]["precision"] == "fp32"
    assert result["image"]["shape"] == [96, 128] and "tmp" not in str(result)  # no directories, only the name


def test_array_input_identified_by_hash(xray_cls_bundle):
    a = square_image()
    result = Predictor.from_bundle(xray_cls_bundle, threads=1).predict(a)
    assert result["input"] == array_source(a) and len(result["input"]["sha256"]) == 64
    assert array_source(a.astype(np.uint16)) != array_source(a)


def test_segmentation_mask_back_on_original_grid(xray_lung_bundle):
    predictor = Predictor.from_bundle(xray_lung_bundle, threads=1)
    image = square_image(h=96, w=128, box=(20, 32, 60, 92))
    result = predictor.predict(image, meta={"pixel_spacing": (0.5, 0.25)})
    mask = result["mask"]
    assert mask.shape == (96, 128) and mask.dtype == np.uint8
    expected = np.zeros_like(mask)
    expected[20:60, 32:92] = 1
    np.testing.assert_array_equal(mask, expected)
    lung = result["areas"]["lung"]
    assert lung["pixels"] == 2400 and lung["fraction"] == pytest.approx(2400 / (96 * 128))
    assert lung["area_mm2"] == pytest.approx(2400 * 0.125)


def test_segmentation_without_spacing_has_no_mm2(xray_lung_bundle):
    result = Predictor.from_bundle(xray_lung_bundle, threads=1).predict(square_image())
    assert result["areas"]["lung"]["area_mm2"] is None


def test_one_channel_logits_get_a_sigmoid(tmp_path, xray_lung_bundle):
    logits = write_bundle(tmp_path / "logits", segmenter_model(1, with_sigmoid=False), "segmentation", "xray",
                          ["background", "lung"], {"mask": 0.5}, kind="logits")
    image = square_image()
    a = Predictor.from_bundle(logits, threads=1).predict(image)["mask"]
    b = Predictor.from_bundle(xray_lung_bundle, threads=1).predict(image)["mask"]
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 2400


def test_multichannel_segmentation_uses_argmax(tmp_path):
    bundle = write_bundle(tmp_path / "multi", segmenter_model(3), "segmentation", "xray",
                          ["background", "ggo", "consolidation"], {})
    image = np.zeros((64, 64), np.uint8)
    image[:, 20:42] = 160  # scaled 0.63 -> x = 0.51 -> class 1
    image[:, 42:] = 255    # scaled 1.0 -> x = 2 -> class 2
    result = Predictor.from_bundle(bundle, threads=1).predict(image)
    assert result["areas"]["ggo"]["pixels"] == 64 * 22
    assert result["areas"]["consolidation"]["pixels"] == 64 * 22
    assert (result["mask"][:, :20] == 0).all() and (result["mask"][:, 42:] == 2).all()


def test_wrong_modality_is_refused(xray_cls_bundle, dicom_dir):
    predictor = Predictor.from_bundle(xray_cls_bundle, threads=1)
    with pytest.raises(InputError, match="ct_small_thorax_128.dcm: wrong modality: the input is CT"):
        predictor.predict(os.path.join(dicom_dir, "ct_small_thorax_128.dcm"))


def test_ct_bundle_reads_ct_dicom(ct_cls_bundle, dicom_dir):
    result = Predictor.from_bundle(ct_cls_bundle, threads=1).predict(os.path.join(dicom_dir, "ct_small_thorax_128.dcm"))
    assert result["image"]["unit"] == "HU" and result["image"]["modality"] == "ct"
    assert result["label"] in ("covid", "non-covid")


def test_volume_needs_the_study_pipeline(ct_cls_bundle):
    with pytest.raises(InputError, match="volume of 3 slices or frames.*CtStudyPipeline"):
        Predictor.from_bundle(ct_cls_bundle, threads=1).predict(np.zeros((3, 64, 64), np.float32))


def test_labels_must_match_outputs(tmp_path):
    from tinymodels import classifier_model

    bundle = write_bundle(tmp_path / "b", classifier_model(2), "classification", "xray", ["a", "b", "c"], {})
    with pytest.raises(BundleError, match="outputs 2 classes but the manifest lists 3 labels"):
        Predictor.from_bundle(bundle, threads=1).predict(square_image())


def test_missing_artifact_for_precision(xray_cls_bundle):
    with pytest.raises(BundleError, match="no onnxruntime artifact at int8"):
        Predictor.from_bundle(xray_cls_bundle, precision="int8")


def test_eight_threads_match_single_thread(xray_cls_bundle, xray_lung_bundle):
    rng = np.random.default_rng(5)
    images = [(rng.random((64 + 8 * i, 80)) * 255).astype(np.uint8) for i in range(16)]
    for bundle in (xray_cls_bundle, xray_lung_bundle):
        predictor = Predictor.from_bundle(bundle, threads=1)
        serial = [predictor.predict(img) for img in images]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(predictor.predict, images))
        for a, b in zip(serial, parallel):
            assert a["input"] == b["input"]
            if "probabilities" in a:
                assert a["probabilities"] == b["probabilities"] and a["label"] == b["label"]
            else:
                np.testing.assert_array_equal(a["mask"], b["mask"])
