"""Pipelines: X-ray lung crop before classification; CT studies streamed slice by slice."""

import os

import numpy as np
import pytest
from tinymodels import ct_phantom, square_image, write_ct_series

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.pipelines import CtStudyPipeline, XrayPipeline, bounding_box
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.study import aggregate_study

HU_META = {"unit": "HU", "modality": "ct", "pixel_spacing": (0.5, 0.5), "slice_spacing": 2.0}


def test_bounding_box_with_margin():
    mask = np.zeros((100, 200), np.uint8)
    mask[20:60, 50:150] = 1
    assert bounding_box(mask, margin=0.0) == (50, 20, 150, 60)
    assert bounding_box(mask, margin=0.1) == (40, 16, 160, 64)
    assert bounding_box(mask, margin=1.0) == (0, 0, 200, 100)  # clipped to the image
    assert bounding_box(np.zeros((5, 5)), margin=0.1) is None


def test_xray_pipeline_crops_to_the_lungs(xray_cls_bundle, xray_lung_bundle, monkeypatch):
    classifier = Predictor.from_bundle(xray_cls_bundle, threads=1)
    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    seen = []
    real = classifier.predict_images
    monkeypatch.setattr(classifier, "predict_images",
                        lambda items, **kw: seen.extend(a.shape for a, _, _ in items) or real(items, **kw))
    result = XrayPipeline(classifier, lungs, margin=0.1).predict(square_image(box=(20, 32, 60, 92)))
    assert result["lung"]["crop_box"] == [26, 16, 98, 64]
    assert seen == [(48, 72)]
    assert result["image"]["shape"] == [96, 128] and result["mask"].shape == (96, 128)
    assert result["label"] in ("covid", "normal", "pneumonia")


def test_xray_pipeline_without_lungs_found(xray_cls_bundle, xray_lung_bundle, monkeypatch):
    classifier = Predictor.from_bundle(xray_cls_bundle, threads=1)
    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    real = lungs.predict_images

    def no_lungs(items, **kw):
        results = real(items, **kw)
        for result in results:
            result["mask"] = np.zeros_like(result["mask"])
        return results
    monkeypatch.setattr(lungs, "predict_images", no_lungs)
    image = square_image()
    result = XrayPipeline(classifier, lungs).predict(image)
    assert result["lung"]["crop_box"] is None and "no lung" in result["warnings"][0]
    assert result["probabilities"] == classifier.predict(image)["probabilities"]


def test_xray_pipeline_without_segmenter_is_the_classifier(xray_cls_bundle):
    classifier = Predictor.from_bundle(xray_cls_bundle, threads=1)
    image = square_image()
    assert XrayPipeline(classifier).predict(image)["probabilities"] == classifier.predict(image)["probabilities"]


def test_pipelines_check_bundle_roles(xray_cls_bundle, ct_cls_bundle, ct_lesion_bundle):
    xray = Predictor.from_bundle(xray_cls_bundle, threads=1)
    ct = Predictor.from_bundle(ct_cls_bundle, threads=1)
    lesion = Predictor.from_bundle(ct_lesion_bundle, threads=1)
    with pytest.raises(BundleError, match="xray classification"):
        XrayPipeline(ct)
    with pytest.raises(BundleError, match="ct classification"):
        CtStudyPipeline(classifier=xray)
    with pytest.raises(BundleError, match="needs a classifier"):
        CtStudyPipeline()
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        CtStudyPipeline(classifier=ct, lesion_segmenter=lesion, rule="median")


def test_ct_study_lesion_ratio_and_severity(ct_lesion_bundle):
    lesion = Predictor.from_bundle(ct_lesion_bundle, threads=1)
    volume = ct_phantom(slices=5)
    study = CtStudyPipeline(lesion_segmenter=lesion, batch_size=2).run(volume, meta=HU_META)
    assert study["slices"] == 5 and len(study["per_slice"]) == 5
    assert all(r["lesion_pixels"] == 18 * 30 and r["lung_pixels"] == 66 * 66 for r in study["per_slice"])
    assert study["lung_area_source"] == "hu_threshold"
    assert study["lesion_ratio"] == pytest.approx(540 / 4356) and study["severity"] == "CT-1"
    assert study["per_slice"][0]["lesion_mm2"] == pytest.approx(540 * 0.25)
    assert study["lesion_volume_ml"] == pytest.approx(5 * 540 * 0.5 * 0.5 * 2.0 / 1000)
    assert study["covid_probability"] is None and "mask" not in str(study.keys())


def test_ct_study_keeps_its_masks_on_request(ct_lesion_bundle):
    lesion = Predictor.from_bundle(ct_lesion_bundle, threads=1)
    volume = ct_phantom(slices=3)
    study = CtStudyPipeline(lesion_segmenter=lesion, batch_size=2, keep_masks=True).run(volume, meta=HU_META)
    masks = study["masks"]
    assert masks["lesion"].shape == masks["lung"].shape == (3, 96, 96) and masks["lesion"].dtype == np.uint8
    expected = np.zeros((96, 96), bool)
    expected[30:48, 30:60] = True  # the phantom's lesion block
    assert all(np.array_equal(m > 0, expected) for m in masks["lesion"])
    assert [int(m.sum()) for m in masks["lung"]] == [r["lung_pixels"] for r in study["per_slice"]]
    assert "masks" not in CtStudyPipeline(lesion_segmenter=lesion).run(volume, meta=HU_META)


def test_ct_study_severity_grows_with_lesion(ct_lesion_bundle):
    lesion = Predictor.from_bundle(ct_lesion_bundle, threads=1)
    volume = ct_phantom(slices=2, lesion_rows=(15, 81))  # lesion fills 30 of the 66 lung columns on every row
    study = CtStudyPipeline(lesion_segmenter=lesion).run(volume, meta=HU_META)
    assert study["lesion_ratio"] == pytest.approx(30 / 66) and study["severity"] == "CT-2"


def test_ct_study_without_hu_has_unknown_lung(ct_lesion_bundle):
    lesion = Predictor.from_bundle(ct_lesion_bundle, threads=1)
    volume = np.clip((ct_phantom(slices=2) + 1000) / 5, 0, 255).astype(np.uint8)  # rendered display slices
    study = CtStudyPipeline(lesion_segmenter=lesion).run(volume)
    assert study["lung_pixels"] is None and study["severity"] is None and study["lesion_ratio"] is None


def test_ct_study_with_lung_segmenter(ct_lesion_bundle, tmp_path):
    from tinymodels import segmenter_model, write_bundle

    # A crude "lung" segmenter that marks every pixel of the phantom: only the plumbing is under test.
    lungs = Predictor.from_bundle(write_bundle(tmp_path / "ct-lung", segmenter_model(1, cut=-1.9), "segmentation",
                                               "ct", ["background", "lung"], {"mask": 0.5}, kind="probabilities"),
                                  threads=1)
    study = CtStudyPipeline(lesion_segmenter=Predictor.from_bundle(ct_lesion_bundle, threads=1),
                            lung_segmenter=lungs).run(ct_phantom(slices=1), meta=HU_META)
    assert study["lung_area_source"] == "segmenter" and study["lung_pixels"] == 96 * 96
    assert study["lesion_ratio"] == pytest.approx(540 / (96 * 96))


def test_ct_study_classifier_aggregation(ct_cls_bundle):
    classifier = Predictor.from_bundle(ct_cls_bundle, threads=1)
    volume = ct_phantom(slices=6)
    volume[3:] += 300.0
    per_slice = [classifier.predict(s, meta=HU_META)["probabilities"]["covid"] for s in volume]
    for rule, params in (("mean", {}), ("max", {}), ("consecutive", {"n": 2})):
        study = CtStudyPipeline(classifier=classifier, rule=rule, rule_params=params, batch_size=4).run(
            volume, meta=HU_META)
        assert [r["covid_probability"] for r in study["per_slice"]] == pytest.approx(per_slice)
        assert study["covid_probability"] == pytest.approx(aggregate_study(per_slice, rule, **params))
        assert study["positive"] == (study["covid_probability"] >= 0.5) and study["rule"]["name"] == rule
    rate = CtStudyPipeline(classifier=classifier, rule="positive_rate").run(volume, meta=HU_META)
    assert rate["rule"]["threshold"] == 0.5 and rate["positive"] is None


def test_ct_study_batches_do_not_change_results(ct_cls_bundle, ct_lesion_bundle):
    kw = {"classifier": Predictor.from_bundle(ct_cls_bundle, threads=1),
          "lesion_segmenter": Predictor.from_bundle(ct_lesion_bundle, threads=1)}
    volume = ct_phantom(slices=5)
    one = CtStudyPipeline(batch_size=1, **kw).run(volume, meta=HU_META)
    many = CtStudyPipeline(batch_size=3, **kw).run(volume, meta=HU_META)
    for a, b in zip(one["per_slice"], many["per_slice"]):
        assert a["lesion_pixels"] == b["lesion_pixels"]
        assert a["covid_probability"] == pytest.approx(b["covid_probability"], abs=1e-6)


def test_ct_study_streams_a_dicom_series(ct_cls_bundle, dicom_dir, tmp_path, monkeypatch):
    folder = write_ct_series(tmp_path / "series", os.path.join(dicom_dir, "ct_small_thorax_128.dcm"), count=5)
    classifier = Predictor.from_bundle(ct_cls_bundle, threads=1)
    batches = []
    real = classifier.predict_images
    monkeypatch.setattr(classifier, "predict_images", lambda items: batches.append(len(items)) or real(items))
    study = CtStudyPipeline(classifier=classifier, batch_size=2).run(folder)
    assert batches == [2, 2, 1] and study["slices"] == 5 and study["input"] == {"file": "series"}
    assert study["volume"]["unit"] == "HU" and study["volume"]["slice_spacing"] == pytest.approx(2.5)


def test_ct_study_reads_nifti(ct_lesion_bundle, tmp_path):
    import nibabel as nib

    volume = ct_phantom(slices=3)  # (slices, rows, cols) -> stored as (x, y, z) in RAS
    data = np.transpose(volume[:, ::-1, ::-1], (2, 1, 0)).astype(np.int16)
    path = str(tmp_path / "study.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), path)
    study = CtStudyPipeline(lesion_segmenter=Predictor.from_bundle(ct_lesion_bundle, threads=1)).run(path)
    assert study["slices"] == 3 and study["severity"] == "CT-1"
    assert study["lesion_volume_ml"] == pytest.approx(3 * 540 * 0.25 * 2.0 / 1000)


def test_ct_study_refuses_xray_input(ct_cls_bundle, dicom_dir):
    pipeline = CtStudyPipeline(classifier=Predictor.from_bundle(ct_cls_bundle, threads=1))
    with pytest.raises(InputError, match="wrong modality"):
        pipeline.run(os.path.join(dicom_dir, "cxr_pa_cr_monochrome2.dcm"))


def _crop_trained(xray_cls_bundle, lungs, margin=0.1):
    """Mark the tiny classifier as trained on lung crops by ``lungs`` (what lungedge compress records)."""
    from lungedge.runtime.bundle import Bundle, write_manifest
    from lungedge.runtime.pipelines import LungCrop

    manifest = dict(Bundle.load(xray_cls_bundle).manifest, input_crop=LungCrop(lungs, margin).spec)
    write_manifest(xray_cls_bundle, manifest)
    return Predictor.from_bundle(xray_cls_bundle, threads=1)


def test_lung_crop_is_the_pipelines_crop(xray_lung_bundle):
    from lungedge.runtime.pipelines import LungCrop

    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    crop, meta, info = LungCrop(lungs, 0.1)(square_image(box=(20, 32, 60, 92)), {"shape": [96, 128]})
    assert info["crop_box"] == [26, 16, 98, 64] and crop.shape == (48, 72) and meta["shape"] == [48, 72]
    spec = LungCrop(lungs, 0.1).spec
    assert spec["kind"] == "lung_box" and len(spec["segmenter_manifest_sha256"]) == 64


def test_crop_trained_classifier_needs_its_own_segmenter(xray_cls_bundle, xray_lung_bundle, tmp_path):
    from tinymodels import segmenter_model, write_bundle

    lungs = Predictor.from_bundle(xray_lung_bundle, threads=1)
    classifier = _crop_trained(xray_cls_bundle, lungs)
    with pytest.raises(BundleError, match="lung crops"):
        XrayPipeline(classifier)
    with pytest.raises(BundleError, match="lung crops"):
        classifier.predict(square_image())
    other = Predictor.from_bundle(write_bundle(tmp_path / "other-lungs", segmenter_model(1, cut=0.5), "segmentation",
                                               "xray", ["background", "lung"], {"mask": 0.5},
                                               kind="probabilities"), threads=1)
    with pytest.raises(BundleError, match="same lung bundle"):
        XrayPipeline(classifier, other)
    with pytest.raises(BundleError, match="margin"):
        XrayPipeline(classifier, lungs, margin=0.3)
    pipeline = XrayPipeline(classifier, lungs)  # the trained margin is taken from the manifest
    assert pipeline.margin == 0.1
    assert pipeline.predict(square_image(box=(20, 32, 60, 92)))["lung"]["crop_box"] == [26, 16, 98, 64]
