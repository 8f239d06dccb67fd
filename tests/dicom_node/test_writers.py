"""SR, SEG and SC written from the dev pack's real DICOM: dciodvfy finds no error, pydicom and highdicom read
them back, the SEG's frames equal the predicted masks, and the patient and study come from the source."""

import logging
import os

import numpy as np
import pydicom
import pytest
from dicom_samples import cr_instance, ct_series
from peers import dciodvfy_errors

from lungedge.runtime.dicom_node.process import Processor, encode
from lungedge.runtime.dicom_node.writers import quality_refusal, xray_results

hd = pytest.importorskip("highdicom")


def node_config(tmp_path, bundles, **extra):
    from lungedge.runtime.dicom_node.config import NodeConfig

    values = dict(state=str(tmp_path / "state"), xray_bundle=bundles["xray"], xray_lung_bundle=bundles["xray_lung"],
                  ct_bundle=bundles["ct"], ct_lesion_bundle=bundles["ct_lesion"], allowed_callers=("CART",))
    values.update(extra)
    return NodeConfig(**values)


@pytest.fixture
def processor(tmp_path, bundles):
    proc = Processor(node_config(tmp_path, bundles))
    yield proc
    proc.close()


def save(tmp_path, name, ds):
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(encode(ds))
    return path


def content_items(sr):
    """Every content item of an SR, depth first."""
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop(0)
        yield item
        stack = list(getattr(item, "ContentSequence", [])) + stack


def numbers(sr):
    return {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
            for i in content_items(sr) if i.ValueType == "NUM"}


def codes(sr):
    return {(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
            for i in content_items(sr) if i.ValueType == "CODE"}


def texts(sr):
    return [str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT"]


def test_xray_sr_seg_sc_from_the_dev_pack_cr_validate_and_read_back(tmp_path, processor, dev_cr, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    path = cr_instance(dev_cr, tmp_path / "cr.dcm")
    source = pydicom.dcmread(path)
    result, objects = processor.run_xray(path)
    assert objects.seg is not None and objects.sc is not None
    files = {name: save(tmp_path, name, ds) for name, ds in (("sr", objects.sr), ("seg", objects.seg),
                                                             ("sc", objects.sc))}
    for name, file in files.items():
        assert dciodvfy_errors(file) == [], name

    sr, seg, sc = (pydicom.dcmread(files[n]) for n in ("sr", "seg", "sc"))
    for ds in (sr, seg, sc):  # patient and study copied; results in one new series of the same study
        assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID == sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    values = numbers(sr)
    assert values["Probability of finding"] == pytest.approx(result["probabilities"]["covid"], abs=1e-6)
    assert values["Decision threshold"] == pytest.approx(0.4)
    presence = "Present" if result["positive"] else "Absent"
    assert ("COVID-19", presence) in codes(sr)
    report = hd.sr.srread(files["sr"])
    assert report.SOPInstanceUID == sr.SOPInstanceUID
    assert any("manifest_sha256=" in t for t in texts(sr))  # algorithm parameters name the manifest hash

    mask = result["mask"] > 0
    assert 0 < mask.sum() < mask.size
    # highdicom 0.28's segread wants a SliceThickness that a projection radiograph has not: read with pydicom.
    assert seg.NumberOfFrames == 1 and seg.SegmentSequence[0].SegmentLabel == "lung"
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_array_equal(seg.pixel_array > 0, mask)
    assert sc.Rows == source.Rows and sc.PhotometricInterpretation == "RGB"

    again = xray_results(pydicom.dcmread(path, stop_before_pixels=True), *processor_inputs(path), result,
                         processor.xray_model, processor.xray_lung_model)
    assert [d.SOPInstanceUID for d in again.all()] == [d.SOPInstanceUID for d in objects.all()]  # same input, same UIDs
    logged = caplog.text + "".join(capfd.readouterr())
    assert str(source.PatientID) not in logged and str(source.PatientName) not in logged


def processor_inputs(path):
    from lungedge.runtime.predictor import load_input

    array, meta, _ = load_input(path)
    return array, meta


def test_ct_series_sr_seg_sc_validate_and_seg_equals_masks(tmp_path, processor, dev_ct):
    folder = ct_series(dev_ct, tmp_path / "series", count=4)
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    early = []
    result, objects = processor.run_ct(paths, on_sr=lambda res, sr: early.append(sr))
    assert [sr.SOPInstanceUID for sr in early] == [objects.sr.SOPInstanceUID]  # the SR came first, once
    files = {name: save(tmp_path, name, ds) for name, ds in (("sr", objects.sr), ("seg", objects.seg),
                                                             ("sc", objects.sc))}
    for name, file in files.items():
        assert dciodvfy_errors(file) == [], name
    sr = pydicom.dcmread(files["sr"])
    assert ("CT severity grade", f"Severity {result['severity']}") in codes(sr)
    assert numbers(sr)["Lesion to lung volume ratio"] == pytest.approx(result["lesion_ratio"], abs=1e-6)
    assert numbers(sr)["Probability of finding"] == pytest.approx(result["covid_probability"], abs=1e-6)

    from lungedge.runtime.io.dicom import series_files

    ordered = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series_files(folder)]
    seg = hd.seg.segread(files["seg"])
    labels = {seg.get_segment_description(n).segment_label: n for n in (1, 2)}
    assert set(labels) == {"lesion", "lung"}
    for label, number in labels.items():
        frames = seg.get_pixels_by_source_instance(ordered, segment_numbers=[number])[..., 0] > 0
        np.testing.assert_array_equal(frames, result["masks"][label] > 0)
    assert result["masks"]["lesion"].sum() > 0
    algorithm = pydicom.dcmread(files["seg"]).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ct-lesion"  # the masks are the lesion segmenter's


def test_refused_input_gives_a_not_assessed_sr_with_its_reason(tmp_path, processor, dev_cr):
    path = cr_instance(dev_cr, tmp_path / "cr.dcm", small=True)
    result, _ = processor.run_xray(path)
    result["quality"] = {"status": "refuse", "reasons": ["image is a lateral view", {"code": "exposure",
                                                                                       "message": "underexposed"}]}
    assert quality_refusal(result) == ["image is a lateral view", "underexposed"]
    array, meta = processor_inputs(path)
    objects = xray_results(pydicom.dcmread(path, stop_before_pixels=True), array, meta, result,
                           processor.xray_model, processor.xray_lung_model)
    assert objects.seg is None  # nothing assessed, no mask published
    file = save(tmp_path, "sr", objects.sr)
    assert dciodvfy_errors(file) == []
    assert dciodvfy_errors(save(tmp_path, "sc", objects.sc)) == []
    for key in ("label", "probabilities", "positive", "mask"):  # a refusal may come without any prediction
        result.pop(key, None)
    bare = xray_results(pydicom.dcmread(path, stop_before_pixels=True), array, meta, result,
                        processor.xray_model, processor.xray_lung_model)
    assert bare.seg is None and bare.sc is not None
    found = codes(pydicom.dcmread(file))
    assert ("Assessment", "Not assessed") in found
    assert ("Reason not assessed", "image is a lateral view") in found and ("Reason not assessed", "underexposed") in found
    assert "Probability of finding" not in numbers(pydicom.dcmread(file))

    result["quality"] = {"status": "warn", "reasons": ["slightly rotated"]}
    assert quality_refusal(result) is None
