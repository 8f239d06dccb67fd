"""Results as DICOM, in a new series of the source study: a TID 1500 SR, a SEG of the masks, an overlay SC.

Built with highdicom, which copies the patient and study modules from the source images. UIDs are derived from
the source SOP Instance UIDs and the bundles' manifest hashes, so processing the same input twice (after a
crash, say) gives the very same objects, never a second copy in the PACS.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lungedge.runtime.errors import InputError

MANUFACTURER = "lungedge"
# Local codes (a "99" scheme designator is the standard's way to say "private") for what no public code says.
LOCAL_SCHEME = "99LUNGEDGE"
# Finding codes for the labels the bundles use; any other label gets a local code.
LABEL_CODES = {
    "covid": ("840539006", "SCT", "COVID-19"),  # SNOMED CT synonym of its 66-character FSN
    "pneumonia": ("233604007", "SCT", "Pneumonia"),
    "normal": ("17621005", "SCT", "Normal"),
    "lung": ("39607008", "SCT", "Lung structure"),
    "lesion": ("52988006", "SCT", "Lesion"),
}
PRESENT = ("52101004", "SCT", "Present")
ABSENT = ("2667000", "SCT", "Absent")
PROCEDURES = {"xray": ("399208008", "SCT", "Plain chest X-ray"),
              "ct": ("169069000", "SCT", "Computed tomography of chest")}
AGE = re.compile(r"^[0-9]{3}[DWMY]$")
SERIES_NUMBER = 9901  # the results series; the SR, SEG and SC each take their own instance number


@dataclass(frozen=True)
class ModelInfo:
    """What produced a result: bundle name, artifact, backend, precision and the manifest's sha256."""

    bundle: str
    artifact: str
    backend: str
    precision: str
    manifest_sha256: str
    role: str = "classifier"

    @classmethod
    def from_predictor(cls, predictor, role="classifier"):
        from lungedge.runtime.bundle import MANIFEST, sha256_file

        info = predictor.info
        path = predictor.bundle.root.rstrip("/") + "/" + MANIFEST
        return cls(bundle=info["name"], artifact=info["artifact"], backend=info["backend"],
                   precision=info["precision"], manifest_sha256=sha256_file(path), role=role)


@dataclass(frozen=True)
class DicomResults:
    """The written objects (pydicom datasets) of one input: SR always, SEG and SC when there is a mask/image."""

    sr: object
    seg: Optional[object]
    sc: Optional[object]

    def all(self):
        return [ds for ds in (self.sr, self.seg, self.sc) if ds is not None]


def derived_uid(*parts):
    """A 2.25 UID from the sha256 of ``parts``: the same parts always give the same UID."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def _silence():
    """highdicom warns about odd source values by quoting them (patient names included): keep that out of logs."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom(\.|$)")
    logging.getLogger("highdicom").propagate = False


def _tidy(ds, source):
    """Fix what a faithful copy of the source's modules would make invalid, and fill type 2C elements."""
    if "PatientAge" in ds and not AGE.match(str(ds.PatientAge or "")):
        del ds.PatientAge  # type 3; an invalid copied value (e.g. "62") would fail validation
    is_image = ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.34"
    if is_image and "FrameOfReferenceUID" not in ds and "PatientOrientation" not in ds:
        ds.PatientOrientation = source.get("PatientOrientation", "") or ""
    is_sc = str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.7")
    if is_sc and "Laterality" not in ds and "ImageLaterality" not in ds:
        ds.Laterality = source.get("Laterality", "") or ""
    return ds


def _code(triple):
    from highdicom.sr import CodedConcept

    value, scheme, meaning = triple
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def _local(value, meaning):
    return _code((value[:16], LOCAL_SCHEME, meaning))


def _label_code(label):
    return _code(LABEL_CODES[label]) if label in LABEL_CODES else _local(label, label)


def _unit_one():
    from highdicom.sr import CodedConcept

    return CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")


def quality_refusal(result):
    """The reasons quality control refused the input (``result["quality"]``), or None when it was assessed."""
    quality = result.get("quality") if isinstance(result, dict) else None
    if not isinstance(quality, dict) or str(quality.get("status", "")).lower() != "refuse":
        return None
    reasons = []
    for reason in quality.get("reasons") or ["refused by quality control"]:
        if isinstance(reason, dict):
            reason = reason.get("message") or reason.get("code") or str(reason)
        reasons.append(str(reason))
    return reasons


def _algorithm(model):
    from highdicom.sr import AlgorithmIdentification

    params = [f"role={model.role}", f"artifact={model.artifact}", f"backend={model.backend}",
              f"precision={model.precision}", f"manifest_sha256={model.manifest_sha256}"]
    return AlgorithmIdentification(name=model.bundle[:64], version=model.manifest_sha256[:64], parameters=params)


def _measure(value_code, meaning, value, model):
    from highdicom.sr import Measurement

    return Measurement(name=_local(value_code, meaning), value=float(value), unit=_unit_one(),
                       algorithm_id=_algorithm(model))


def _evaluation(name, value):
    from highdicom.sr import QualitativeEvaluation

    return QualitativeEvaluation(name=name, value=value)


def _group(label, uid, model, measurements, evaluations, finding=None):
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, TrackingIdentifier

    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=label[:64]),
        finding_type=finding, algorithm_id=_algorithm(model),
        measurements=measurements or None, qualitative_evaluations=evaluations or None)


def _not_assessed(reasons, uid, model):
    """A group that says the input was not assessed, each reason as a coded evaluation."""
    name = _local("assessment", "Assessment")
    evaluations = [_evaluation(name, _local("not-assessed", "Not assessed"))]
    for i, reason in enumerate(reasons):
        evaluations.append(_evaluation(_local("reason", "Reason not assessed"), _local(f"reason-{i + 1}", reason)))
    return [_group("not assessed", uid, model, [], evaluations)]


def xray_groups(result, uid, model):
    """TID 1501 groups of an X-ray classification: the finding present/absent, its probability, the threshold."""
    refused = quality_refusal(result)
    if refused is not None:
        return _not_assessed(refused, uid, model)
    label = result.get("positive_label") or result["label"]
    finding = _label_code(label)
    probability = result["probabilities"][label]
    present = result.get("positive") if result.get("positive") is not None else result["label"] == label
    measurements = [_measure("probability", "Probability of finding", probability, model)]
    if result.get("threshold") is not None:
        measurements.append(_measure("threshold", "Decision threshold", result["threshold"], model))
    evaluations = [_evaluation(finding, _code(PRESENT if present else ABSENT)),
                   _evaluation(_local("decided-label", "Decided label"), _label_code(result["label"]))]
    return [_group(label, uid, model, measurements, evaluations, finding=finding)]


def ct_groups(result, uid, model, lesion_model=None):
    """TID 1501 groups of a CT study: COVID finding and probability, severity grade, lesion/lung ratio.

    ``lesion_model`` (the lesion segmenter) is named for the ratio; ``model`` for the rest.
    """
    lesion_model = lesion_model or model
    refused = quality_refusal(result)
    if refused is not None:
        return _not_assessed(refused, uid, model)
    measurements, evaluations, finding = [], [], None
    if result.get("covid_probability") is not None:
        label = result.get("positive_label") or "covid"
        finding = _label_code(label)
        measurements.append(_measure("probability", "Probability of finding", result["covid_probability"], model))
        if result.get("threshold") is not None:
            measurements.append(_measure("threshold", "Decision threshold", result["threshold"], model))
        if result.get("positive") is not None:
            evaluations.append(_evaluation(finding, _code(PRESENT if result["positive"] else ABSENT)))
    if result.get("lesion_ratio") is not None:
        measurements.append(_measure("lesion-ratio", "Lesion to lung volume ratio", result["lesion_ratio"],
                                     lesion_model))
    if result.get("severity") is not None:
        evaluations.append(_evaluation(_local("ct-severity", "CT severity grade"),
                                       _local(result["severity"], f"Severity {result['severity']}")))
    if not measurements and not evaluations:
        raise InputError("the CT study result holds no probability, ratio or grade to report")
    return [_group("ct study", uid, model, measurements, evaluations, finding=finding)]


def _observer(model):
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObservationContext, ObserverContext
    from pydicom.sr.codedict import codes

    device = DeviceObserverIdentifyingAttributes(uid=derived_uid("device", model.bundle, model.manifest_sha256),
                                                 name="lungedge", manufacturer_name=MANUFACTURER,
                                                 model_name=model.bundle[:64])
    return ObservationContext(observer_device_context=ObserverContext(observer_type=codes.DCM.Device,
                                                                      observer_identifying_attributes=device))


def write_sr(sources, groups, modality, series_uid, key, model):
    """A Comprehensive 3D SR holding a TID 1500 Measurement Report over ``sources`` (headers are enough)."""
    from highdicom.sr import Comprehensive3DSR, MeasurementReport

    report = MeasurementReport(observation_context=_observer(model),
                               procedure_reported=_code(PROCEDURES[modality]), imaging_measurements=groups)
    _silence()
    sr = Comprehensive3DSR(evidence=list(sources), content=report[0], series_instance_uid=series_uid,
                             series_number=SERIES_NUMBER, sop_instance_uid=derived_uid("sr", key),
                             instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
                             is_verified=False, series_description="lungedge results")
    return _tidy(sr, sources[0])


def write_seg(sources, masks, labels, series_uid, key, model):
    """A binary SEG, one segment per label, ``masks`` (frames, H, W, segments) on the grid of ``sources``."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.seg import SegmentAlgorithmTypeValues, Segmentation, SegmentDescription
    from pydicom.sr.codedict import codes

    algorithm = AlgorithmIdentificationSequence(name=model.bundle[:64], family=codes.cid7162.ArtificialIntelligence,
                                                version=model.manifest_sha256[:64])
    descriptions = []
    for number, label in enumerate(labels, start=1):
        category = codes.SCT.Organ if label == "lung" else codes.SCT.MorphologicallyAbnormalStructure
        descriptions.append(SegmentDescription(segment_number=number, segment_label=label[:64],
                                               segmented_property_category=category,
                                               segmented_property_type=_label_code(label),
                                               algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
                                               algorithm_identification=algorithm))
    _silence()
    seg = Segmentation(source_images=list(sources), pixel_array=np.asarray(masks, dtype=bool),
                        segmentation_type="BINARY", segment_descriptions=descriptions,
                        series_instance_uid=series_uid, series_number=SERIES_NUMBER,
                        sop_instance_uid=derived_uid("seg", key), instance_number=2, manufacturer=MANUFACTURER,
                        manufacturer_model_name=model.bundle[:64], software_versions=_version(),
                        device_serial_number=model.manifest_sha256[:16], omit_empty_frames=False,
                        series_description="lungedge results")
    return _tidy(seg, sources[0])


def write_sc(source, overlay_rgb, series_uid, key):
    """A Secondary Capture of the overlay (RGB, 8 bit), any PACS viewer shows it."""
    from highdicom.sc import SCImage

    orientation = source.get("PatientOrientation")
    orientation = tuple(orientation) if orientation is not None and len(orientation) == 2 else ("L", "F")
    _silence()
    sc = SCImage.from_ref_dataset(ref_dataset=source, pixel_array=np.ascontiguousarray(overlay_rgb, np.uint8),
                                    photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
                                    series_instance_uid=series_uid, series_number=SERIES_NUMBER,
                                    sop_instance_uid=derived_uid("sc", key), instance_number=3,
                                    manufacturer=MANUFACTURER, patient_orientation=orientation,
                                    series_description="lungedge results")
    return _tidy(sc, source)


def _version():
    try:
        from importlib.metadata import version

        return version("lungedge")
    except Exception:  # an uninstalled tree
        return "unknown"


def _overlay(array, meta, result):
    """RGB overlay; a refused input shows the image with "not assessed" and no finding."""
    import cv2

    from lungedge.runtime import report

    if quality_refusal(result) is None:
        return report.render_overlay(array, meta, result)[:, :, ::-1]  # OpenCV's BGR -> RGB
    canvas = cv2.cvtColor(report.display_image(array, meta), cv2.COLOR_GRAY2RGB)
    scale = max(0.4, canvas.shape[1] / 700.0)
    for colour, width in (((0, 0, 0), int(3 * scale) + 1), ((255, 255, 0), max(1, int(scale)))):
        cv2.putText(canvas, "not assessed (quality control)", (int(8 * scale), int(28 * scale)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA)
    return canvas


def xray_results(source, array, meta, result, model, lung_model=None):
    """SR, SEG (when the result has a lung mask) and SC for one X-ray image ``source`` (pydicom dataset)."""
    key = (source.SOPInstanceUID, model.manifest_sha256, lung_model.manifest_sha256 if lung_model else "")
    series_uid = derived_uid("series", *key)
    sr = write_sr([source], xray_groups(result, derived_uid("track", *key), model), "xray", series_uid, key, model)
    seg = None
    mask = result.get("mask")
    if quality_refusal(result) is None and isinstance(mask, np.ndarray) and lung_model is not None:
        seg = write_seg([source], (mask > 0)[None, :, :, None], ["lung"], series_uid, key, lung_model)
    sc = write_sc(source, _overlay(array, meta, result), series_uid, key)
    return DicomResults(sr=sr, seg=seg, sc=sc)


def _ct_key(sources, model):
    if not sources:
        raise InputError("a CT study needs at least one slice")
    return (sources[0].SeriesInstanceUID, len(sources), sources[0].SOPInstanceUID, sources[-1].SOPInstanceUID,
            model.manifest_sha256)


def ct_sr(sources, result, model, lesion_model=None):
    """The SR of a CT series (``sources``: its headers in patient order)."""
    key = _ct_key(sources, model)
    groups = ct_groups(result, derived_uid("track", *key), model, lesion_model)
    return write_sr(sources, groups, "ct", derived_uid("series", *key), key, model)


def ct_seg_sc(sources, result, model, masks=None, key_slice=None, lesion_model=None):
    """(SEG of ``masks`` ({label: (slices, H, W)} in ``sources`` order) or None, SC of ``key_slice`` or None).

    ``key_slice``: (index, HU array, meta) of the slice to show.
    """
    key = _ct_key(sources, model)
    series_uid = derived_uid("series", *key)
    seg = sc = None
    if quality_refusal(result) is None and masks:
        labels = list(masks)
        stacked = np.stack([np.asarray(masks[label]) > 0 for label in labels], axis=-1)
        seg = write_seg(sources, stacked, labels, series_uid, key, lesion_model or model)
    if key_slice is not None:
        index, array, meta = key_slice
        shown = dict(result)
        if masks:
            label_map = np.zeros(np.shape(array), np.uint8)
            for value, label in enumerate(masks, start=1):
                label_map[np.asarray(masks[label][index]) > 0] = value
            shown.update(mask=label_map, task="segmentation",
                         areas={label: {"fraction": float(np.mean(np.asarray(masks[label][index]) > 0))}
                                for label in masks})
        sc = write_sc(sources[index], _overlay(array, meta, shown), series_uid, key)
    return seg, sc


def ct_results(sources, result, model, masks=None, key_slice=None, lesion_model=None):
    """SR, SEG and SC of a CT series (see ``ct_sr`` and ``ct_seg_sc``)."""
    sr = ct_sr(sources, result, model, lesion_model)
    seg, sc = ct_seg_sc(sources, result, model, masks, key_slice, lesion_model)
    return DicomResults(sr=sr, seg=seg, sc=sc)


__all__ = ["DicomResults", "ModelInfo", "ct_results", "ct_seg_sc", "ct_sr", "derived_uid", "quality_refusal",
           "xray_results"]
