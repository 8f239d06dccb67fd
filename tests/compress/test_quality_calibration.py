"""Feature export as a second ONNX output and the per-artifact OOD calibration (tiny torch models, no data)."""

import csv

import numpy as np
import onnx
import pytest
import torch

from lungedge.compress.export import FEATURE_NAME, OUTPUT_NAME, WithFeatures, export_onnx
from lungedge.compress.quality import area_bands, calibrate_artifact
from lungedge.runtime.ood import energy, mahalanobis


class Tiny(torch.nn.Module):
    """Conv -> ReLU -> global average pool -> Linear(6 -> 3): the pooled vector is 6-dimensional."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_manifest_csv(folder, rows):
    """A dev-pack style manifest.csv of ``rows`` (dicts with the same keys) in ``folder``."""
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _images(n, seed, shift=0.0):
    return (np.random.default_rng(seed).normal(shift, 1.0, (n, 1, 16, 16))).astype(np.float32)


@pytest.fixture
def exported(tmp_path):
    model = Tiny().eval()
    path = str(tmp_path / "model.onnx")
    export_onnx(model, path, (16, 16), features=True)
    return model, path


def test_features_are_the_input_of_the_last_linear_layer(exported):
    model, path = exported
    assert [o.name for o in onnx.load(path).graph.output] == [OUTPUT_NAME, FEATURE_NAME]  # logits first
    import onnxruntime as ort

    x = _images(5, 1)
    logits, feats = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.no_grad():
        pooled = torch.relu(model.conv(torch.from_numpy(x))).mean(dim=(2, 3)).numpy()
        want = model(torch.from_numpy(x)).numpy()
    assert feats.shape == (5, 6) and np.allclose(feats, pooled, atol=1e-5) and np.allclose(logits, want, atol=1e-5)
    assert not model.fc._forward_pre_hooks  # the export leaves no hook behind
    with pytest.raises(ValueError, match="no Linear head"):
        WithFeatures(torch.nn.Conv2d(1, 1, 1))


def test_calibration_reproduces_its_acceptance(exported):
    _, path = exported
    train, val = _images(60, 2), _images(100, 3)
    labels = np.arange(60) % 3
    means, precision, entry = calibrate_artifact(path, train, labels, val, 3, acceptance=0.9, threads=1)
    assert means.shape == (3, 6) and precision.shape == (6, 6) and means.dtype == np.float32
    assert entry["feature_output"] == FEATURE_NAME and entry["acceptance"] == 0.9 and entry["feature_dim"] == 6
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits, feats = sess.run(None, {"image": val})
    d = mahalanobis(feats, means, precision)
    assert np.mean(d <= entry["thresholds"]["mahalanobis"]) == 0.9
    assert np.mean(energy(logits) <= entry["thresholds"]["energy"]) == 0.9
    both = np.mean((d <= entry["thresholds"]["mahalanobis"]) & (energy(logits) <= entry["thresholds"]["energy"]))
    assert entry["val_accepted_both"] == pytest.approx(both)
    # Far-off inputs score far above the in-distribution threshold.
    far = mahalanobis(sess.run(None, {"image": _images(20, 4, shift=6.0)})[1], means, precision)
    assert np.mean(far > entry["thresholds"]["mahalanobis"]) >= 0.9


def test_area_bands_from_training_masks():
    masks = np.zeros((200, 10, 10), np.uint8)
    for i in range(200):
        masks[i, :, :i % 10 + 1] = 1  # lung fractions 0.1 .. 1.0, twenty of each
    masks[:, 0, 0] = 255  # the 'ignore' value counts as neither
    bands = area_bands(masks, ["background", "lung"])
    low, high = np.quantile([(m == 1).mean() for m in masks], (0.005, 0.995))
    assert bands == {"lung": [round(low * 0.5, 6), round(min(1.0, high * 1.5), 6)]}
    multi = area_bands(np.stack([np.eye(4, dtype=np.uint8) * 2] * 3), ["background", "ggo", "consolidation"])
    assert multi == {"ggo": [0.0, 0.0], "consolidation": [0.125, 0.375]}


def test_feature_output_keeps_its_name_when_the_head_input_is_already_flat(tmp_path):
    """DenseNet flattens before its Linear head: the exported feature tensor must still be called 'features'."""
    import onnx
    import torch

    from lungedge.compress.export import FEATURE_NAME, OUTPUT_NAME, export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    path = export_onnx(model, str(tmp_path / "m.onnx"), (16, 16), features=True)
    assert [o.name for o in onnx.load(path).graph.output] == [OUTPUT_NAME, FEATURE_NAME]


def test_lung_field_bands_are_fitted_into_an_existing_bundle(tmp_path):
    """``python -m lungedge.compress.quality lung-fields`` on tiny bundles: bands from the train and val films
    only, the segmenter's manifest sha256 recorded, and the pipeline then checks with them."""
    import json
    import os
    import sys

    import cv2

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
    from tinymodels import classifier_model, segmenter_model, write_bundle

    from lungedge.compress.quality import main
    from lungedge.runtime.pipelines import XrayPipeline
    from lungedge.runtime.predictor import Predictor

    data = tmp_path / "films"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, split in enumerate(["train"] * 6 + ["val"] * 2 + ["test"]):
        film = np.full((96, 128), 30, np.uint8)
        film[0, 0] = 0
        gap = 20 + 2 * i if split != "test" else 0  # a test film of one field would widen the bands if used
        film[16:80, 16:64 - gap // 2] = 220
        film[16:80, 64 + gap // 2:112] = 220
        name = f"images/f{i}.png"
        cv2.imwrite(str(data / name), film)
        rows.append({"file": name, "label": "normal", "patient_id": f"p{i}", "split": split})
    write_manifest_csv(data, rows)
    lungs_root = write_bundle(tmp_path / "lungs", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                              {"mask": 0.5}, kind="probabilities")
    cls_root = write_bundle(tmp_path / "cls", classifier_model(3), "classification", "xray",
                            ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                            quality={"view": "frontal",
                                     "pixel": {"entropy_bits": {"min_refuse": None, "min_warn": None},
                                               "two_class_separability": {"max_refuse": None}}})  # flat phantoms
    assert main(["lung-fields", "--bundle", cls_root, "--lung-bundle", lungs_root, "--data", str(data),
                 "--threads", "1"]) == 0
    entry = json.load(open(os.path.join(cls_root, "manifest.json")))["quality"]["lung_fields"]
    lungs = Predictor.from_bundle(lungs_root, threads=1)
    assert entry["segmenter_manifest_sha256"] == lungs.bundle.manifest_sha256
    assert entry["fitted_on"] == "train+val splits, 8 images" and entry["acceptance"] == 0.99
    assert entry["bands"]["midline_fill"]["max"] == 0.0  # every fitting film has a gap between its fields
    result = XrayPipeline(Predictor.from_bundle(cls_root, threads=1), lungs).predict(str(data / "images/f8.png"))
    assert result["assessed"] is False
    assert "lung_fields_midline" in [r["reason"] for r in result["quality"]["reasons"]]


def test_compress_writes_lung_field_bands_for_crop_trained_xray_classifiers(tmp_path):
    """``quality_calibration`` at build time: a run with a lung crop gets bands from its train and val films."""
    import os
    import sys
    from types import SimpleNamespace

    import cv2

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
    from tinymodels import segmenter_model, write_bundle

    from lungedge.compress.quality import quality_calibration
    from lungedge.runtime.pipelines import LungCrop
    from lungedge.runtime.predictor import Predictor

    paths = []
    for i in range(4):
        film = np.full((96, 128), 30, np.uint8)
        film[0, 0] = 0
        film[16:80, 16:52 - i] = 220
        film[16:80, 76 + i:112] = 220
        paths.append(str(tmp_path / f"f{i}.png"))
        cv2.imwrite(paths[-1], film)
    lungs = Predictor.from_bundle(write_bundle(tmp_path / "lungs", segmenter_model(1), "segmentation", "xray",
                                               ["background", "lung"], {"mask": 0.5}, kind="probabilities"), threads=1)
    records = [SimpleNamespace(image=p) for p in paths]
    run = SimpleNamespace(spec=SimpleNamespace(kind="classification", modality="xray", labels=["a", "b"]),
                          train_ds=SimpleNamespace(records=records[:3]), val_ds=SimpleNamespace(records=records[3:]),
                          crop=LungCrop(lungs), threads=1, steps=[])
    quality = quality_calibration(run, str(tmp_path), artifacts={})
    orientation = quality["orientation_check"]  # every classifier gets one, from its own train and val images
    assert orientation["fitted_on"] == "train split, 3 images and their inverted and rotated copies"
    assert orientation["calibrated_on"] == "val split, 1 images" and set(orientation["checks"]) == {"inverted", "rotated"}
    entry = quality["lung_fields"]
    assert entry["fitted_on"] == "train+val splits, 4 images" and entry["segmenter"] == lungs.name
    assert set(entry["bands"]) == {"lung_fraction", "midline_fill", "field_separation", "field_overlap"}
    assert quality["ood"] == {} and quality["view"] == "frontal"
    run.crop = None  # a classifier of whole films has no lung masks to fit on
    assert "lung_fields" not in quality_calibration(run, str(tmp_path), artifacts={})


def _ood_refit_case(tmp_path):
    """A tiny classifier bundle with a feature output and a pooled OOD entry, and a dev-pack folder whose val
    split holds two sources (one of them brighter, so it scores higher than the other)."""
    import os
    import sys

    import cv2

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
    from tinymodels import chest_like, classifier_with_features, write_bundle

    from lungedge.compress.quality import artifact_outputs, split_images
    from lungedge.runtime.bundle import Bundle, artifact_entry, write_manifest

    data = tmp_path / "films"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(30):
        split, source = ("train", "a") if i < 12 else ("val", "a" if i < 24 else "b") if i < 28 else ("test", "b")
        film = chest_like(seed=i)
        if source == "b":
            film = (film // 2 + 100).astype(np.uint8)  # brighter, less contrast
        name = f"images/f{i}.png"
        cv2.imwrite(str(data / name), film)
        rows.append({"file": name, "label": "normal", "patient_id": f"p{i}", "split": split, "source": source})
    write_manifest_csv(data, rows)
    root = write_bundle(tmp_path / "cls", classifier_with_features(3), "classification", "xray",
                        ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                        quality={"view": "frontal"})
    manifest = dict(Bundle.load(root).manifest)
    train, _ = split_images(manifest, str(data), "train")
    _, features = artifact_outputs(os.path.join(root, "model.onnx"), train, threads=1)
    from lungedge.runtime.ood import fit_gaussians

    means, precision = fit_gaussians(features, np.arange(len(train)) % 3, 3)
    np.savez(os.path.join(root, "ood-onnx-fp32.npz"), means=means, precision=precision)
    manifest["quality"] = {"view": "frontal", "ood": {"onnx-fp32": dict(
        artifact_entry(root, "ood-onnx-fp32.npz", "npz", "fp32", "none"), feature_output="features",
        thresholds={"mahalanobis": 0.0, "energy": 0.0}, acceptance=0.5)}}
    write_manifest(root, manifest)
    return root, str(data)


def test_ood_refit_gives_every_validation_source_its_floor(tmp_path):
    """``python -m lungedge.compress.quality ood``: thresholds recalibrated on the val split with a floor per
    source, the rule and each source's acceptance recorded, the training split's Gaussians kept."""
    import json
    import os

    from lungedge.compress.quality import artifact_outputs, main, split_images
    from lungedge.runtime.bundle import Bundle
    from lungedge.runtime.ood import energy, mahalanobis

    root, data = _ood_refit_case(tmp_path)
    before = Bundle.load(root).manifest["quality"]["ood"]["onnx-fp32"]
    assert main(["ood", "--bundle", root, "--data", data, "--acceptance", "0.5", "--min-source-acceptance", "1.0",
                 "--threads", "1"]) == 0
    entry = json.load(open(os.path.join(root, "manifest.json")))["quality"]["ood"]["onnx-fp32"]
    assert entry["rule"] == "pooled_then_relax" and entry["min_source_acceptance"] == 1.0
    assert entry["val_accepted_by_source"] == {"a": {"accepted": 12, "n": 12, "rate": 1.0},
                                               "b": {"accepted": 4, "n": 4, "rate": 1.0}}
    assert entry["calibrated_on"] == "val split, 16 images" and entry["val_accepted_both"] == 1.0
    assert entry["sha256"] == before["sha256"] and entry["path"] == before["path"]  # Gaussians kept
    # A floor of 1.0 puts each threshold at the highest validation score (the test films are not read).
    val, _ = split_images(Bundle.load(root).manifest, data, "val")
    logits, features = artifact_outputs(os.path.join(root, "model.onnx"), val, threads=1)
    with np.load(os.path.join(root, "ood-onnx-fp32.npz")) as stats:
        dist = mahalanobis(features, stats["means"], stats["precision"])
    assert entry["thresholds"] == {"mahalanobis": pytest.approx(dist.max()),
                                   "energy": pytest.approx(energy(logits).max())}
    # The feature distance alone, pooled only (no floor): no rule, no per-source record.
    assert main(["ood", "--bundle", root, "--data", data, "--acceptance", "0.5", "--min-source-acceptance", "-1",
                 "--scores", "mahalanobis", "--threads", "1"]) == 0
    entry = json.load(open(os.path.join(root, "manifest.json")))["quality"]["ood"]["onnx-fp32"]
    assert set(entry["thresholds"]) == {"mahalanobis"} and "rule" not in entry
    assert entry["thresholds"]["mahalanobis"] == pytest.approx(np.sort(dist)[7])  # 8 of 16 at or below it
    with pytest.raises(ValueError, match="never on the test split"):
        main(["ood", "--bundle", root, "--data", data, "--split", "test"])


def test_modality_check_is_fitted_into_an_existing_bundle(tmp_path):
    """``python -m lungedge.compress.quality modality``: fitted on the train splits of both folders, its threshold
    from the bundle's validation split (never test), and the bundle then refuses the other modality's films."""
    import json
    import os
    import sys

    import cv2

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(here, "runtime"))
    from test_ct_like_histogram import ct_like_slice
    from tinymodels import chest_like, classifier_model, write_bundle

    from lungedge.compress.quality import main
    from lungedge.runtime.predictor import Predictor

    def pack(name, make):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        rows = []
        for i, split in enumerate(["train"] * 10 + ["val"] * 4 + ["test"] * 2):
            cv2.imwrite(str(root / f"images/{i}.png"), make(i))
            rows.append({"file": f"images/{i}.png", "label": "covid", "patient_id": f"p{i}", "split": split})
        write_manifest_csv(root, rows)
        return root

    ct = pack("ct", lambda i: ct_like_slice(96, seed=i))
    films = pack("films", lambda i: chest_like(seed=100 + i))
    bundle = write_bundle(tmp_path / "b", classifier_model(2), "classification", "ct", ["covid", "noncovid"],
                          {"covid": 0.5}, positive_label="covid", quality={"pixel": {}})
    assert main(["modality", "--bundle", bundle, "--data", str(ct), "--other", str(films)]) == 0
    entry = json.load(open(os.path.join(bundle, "manifest.json")))["quality"]["modality_check"]
    assert entry["fitted_on"] == "train splits of ct (10, ct) and films (10, xray)"
    assert entry["calibrated_on"] == "val split, 4 images" and entry["other_modality"] == "xray"
    predictor = Predictor.from_bundle(bundle, threads=1)
    film = predictor.predict(str(films / "images/15.png"))
    assert film["assessed"] is False and "other_modality" in [r["reason"] for r in film["quality"]["reasons"]]
    assert predictor.predict(str(ct / "images/15.png"))["quality"]["thresholds"]["modality_check"]["checked"]
    with pytest.raises(ValueError, match="never on the test split"):
        from lungedge.compress.quality import fit_modality

        fit_modality(bundle, str(ct), str(films), split="test")


def test_orientation_check_is_fitted_into_an_existing_bundle(tmp_path):
    """``python -m lungedge.compress.quality orientation``: fitted on the bundle's train split and its inverted and
    turned copies, thresholds from the validation split (never test); the bundle then refuses an inverted film,
    and a CT bundle checks polarity only."""
    import json
    import os
    import sys

    import cv2

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime"))
    from tinymodels import chest_like, classifier_model, write_bundle

    from lungedge.compress.quality import fit_orientation, main
    from lungedge.runtime.predictor import Predictor

    data = tmp_path / "films"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, split in enumerate(["train"] * 12 + ["val"] * 4 + ["test"] * 2):
        cv2.imwrite(str(data / f"images/{i}.png"), chest_like(seed=i))
        rows.append({"file": f"images/{i}.png", "label": "covid", "patient_id": f"p{i}", "split": split})
    write_manifest_csv(data, rows)
    bundle = write_bundle(tmp_path / "b", classifier_model(3), "classification", "xray",
                          ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                          quality={"view": "frontal", "pixel": {}})
    assert main(["orientation", "--bundle", bundle, "--data", str(data)]) == 0
    entry = json.load(open(os.path.join(bundle, "manifest.json")))["quality"]["orientation_check"]
    assert entry["fitted_on"] == "train split, 12 images and their inverted and rotated copies"
    assert entry["calibrated_on"] == "val split, 4 images" and set(entry["checks"]) == {"inverted", "rotated"}
    inverted = tmp_path / "inverted.png"
    cv2.imwrite(str(inverted), 255 - chest_like(seed=17))
    predictor = Predictor.from_bundle(bundle, threads=1)
    result = predictor.predict(str(inverted))
    assert result["assessed"] is False and "inverted_polarity" in [r["reason"] for r in result["quality"]["reasons"]]
    assert predictor.predict(str(data / "images/17.png"))["quality"]["thresholds"]["orientation_check"]["checked"]
    with pytest.raises(ValueError, match="never on the test split"):
        fit_orientation(bundle, str(data), split="test")
    ct = write_bundle(tmp_path / "ct", classifier_model(2), "classification", "ct", ["covid", "noncovid"],
                      {"covid": 0.5}, positive_label="covid", quality={"pixel": {}})
    assert set(fit_orientation(ct, str(data))["checks"]) == {"inverted"}
