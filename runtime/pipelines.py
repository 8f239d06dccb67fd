"""Pipelines over Predictors: X-ray classification after an optional lung crop; CT studies slice by slice."""

import os

import numpy as np

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.io import iter_slices
from lungedge.runtime.predictor import array_meta, array_source, load_input
from lungedge.runtime.study import aggregate_study, lesion_ratio, lung_mask_from_hu, severity_grade

STUDY_SCHEMA = "lungedge.study/1"


def _require(predictor, role, task, modality):
    if predictor is not None and (predictor.task != task or predictor.modality != modality):
        raise BundleError(f"{role} must be a {modality} {task} bundle; {predictor.name!r} is "
                          f"{predictor.modality} {predictor.task}")


def bounding_box(mask, margin=0.05):
    """(x0, y0, x1, y1) around the nonzero pixels, grown by ``margin`` of its size per side; None if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    dy, dx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    return max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)


class XrayPipeline:
    """Chest X-ray classification; with a lung segmenter the image is first cropped to the lungs (plus margin)."""

    def __init__(self, classifier, lung_segmenter=None, margin=0.05):
        _require(classifier, "the classifier", "classification", "xray")
        _require(lung_segmenter, "the lung segmenter", "segmentation", "xray")
        self.classifier, self.lung_segmenter, self.margin = classifier, lung_segmenter, margin

    def predict(self, path_or_array, meta=None):
        """Classify one image (path or array); returns the classifier's result plus the lung crop."""
        array, meta, source = load_input(path_or_array, meta)
        return self.predict_image(array, meta, source)

    def predict_image(self, array, meta, source):
        if self.lung_segmenter is None:
            return self.classifier.predict_image(array, meta, source)
        lung = self.lung_segmenter.predict_image(array, meta, source)
        box = bounding_box(lung["mask"], self.margin)
        if box is None:
            result = self.classifier.predict_image(array, meta, source)
            result["warnings"] = ["lung segmenter found no lung; classified the whole image"]
        else:
            x0, y0, x1, y1 = box
            crop = array[y0:y1, x0:x1] if array.ndim == 2 else array[..., y0:y1, x0:x1]
            result = self.classifier.predict_image(crop, dict(meta, shape=[y1 - y0, x1 - x0]), source)
            result["image"]["shape"] = meta.get("shape")
        result.update(mask=lung["mask"], lung={"bundle": lung["bundle"], "areas": lung["areas"],
                                               "crop_box": list(box) if box else None})
        return result


class CtStudyPipeline:
    """A CT study (DICOM series folder, NIfTI, multi-frame DICOM or a (slices, H, W) array), slice by slice.

    Slices stream through in batches of ``batch_size``; only per-slice numbers are kept. The classifier gives
    per-slice COVID probabilities aggregated by ``rule`` (see lungedge.runtime.study); the lesion segmenter gives
    lesion areas; the lung area comes from ``lung_segmenter``, else from a HU threshold when the input is in HU,
    else it is unknown (and so is the severity grade). With ``keep_masks`` the result also holds ``masks``:
    {"lesion": (slices, H, W), "lung": (slices, H, W)} uint8 arrays, in slice order (for DICOM SEG output).
    """

    def __init__(self, classifier=None, lesion_segmenter=None, lung_segmenter=None, batch_size=8, rule="mean",
                 rule_params=None, study_threshold=None, keep_masks=False):
        if classifier is None and lesion_segmenter is None:
            raise BundleError("a CT study needs a classifier bundle, a lesion segmentation bundle, or both")
        _require(classifier, "the classifier", "classification", "ct")
        _require(lesion_segmenter, "the lesion segmenter", "segmentation", "ct")
        _require(lung_segmenter, "the lung segmenter", "segmentation", "ct")
        if classifier is not None and classifier.positive_label is None:
            raise BundleError(f"classifier {classifier.name!r} has no positive_label to score studies with")
        self.classifier, self.lesion_segmenter, self.lung_segmenter = classifier, lesion_segmenter, lung_segmenter
        self.batch_size = max(1, int(batch_size))
        self.rule, self.rule_params = rule, dict(rule_params or {})
        if rule == "positive_rate" and classifier is not None:
            self.rule_params.setdefault("threshold", classifier.threshold)
        aggregate_study([0.5], rule, **self.rule_params)  # reject an unknown rule or parameter now
        if study_threshold is None and classifier is not None and rule != "positive_rate":
            study_threshold = classifier.threshold  # the score is on the slice-probability scale
        self.study_threshold = study_threshold
        self.keep_masks = bool(keep_masks)

    def _slices(self, path_or_volume, meta, source):
        if isinstance(path_or_volume, np.ndarray):
            volume = path_or_volume[None] if path_or_volume.ndim == 2 else path_or_volume
            if volume.ndim != 3:
                raise InputError(f"expected a (slices, H, W) volume, got shape {volume.shape}")
            base = array_meta(volume)
            base.update(meta or {})
            source = source or array_source(path_or_volume)
            return source, ((s.astype(np.float32), dict(base, slice_index=i, slices=len(volume),
                                                        shape=[int(d) for d in s.shape]))
                            for i, s in enumerate(volume))
        path = os.fspath(path_or_volume)
        return source or {"file": os.path.basename(os.path.normpath(path))}, iter_slices(path)

    def run(self, path_or_volume, meta=None, source=None):
        """Score one study; returns the study result dict (schema in lungedge.runtime.report)."""
        source, slices = self._slices(path_or_volume, meta, source)
        return self.run_slices(slices, source)

    def run_slices(self, slices, source):
        """Score one study from an iterable of (2-D slice, reader meta) in patient order."""
        rows, batch, volume_meta, masks = [], [], None, []
        for array, slice_meta in slices:
            volume_meta = volume_meta or slice_meta
            batch.append((array, slice_meta, source))
            if len(batch) == self.batch_size:
                rows.extend(self._score_batch(batch, len(rows), masks))
                batch = []
        if batch:
            rows.extend(self._score_batch(batch, len(rows), masks))
        if not rows:
            raise InputError(f"{source.get('file', 'volume')}: no slices")
        result = self._summarise(rows, source, volume_meta)
        if self.keep_masks:
            result["masks"] = {label: np.stack([m[label] for m in masks]).astype(np.uint8)
                               for label in ("lesion", "lung") if masks and masks[0][label] is not None}
        return result

    def _score_batch(self, batch, first_index, masks=None):
        probs = [None] * len(batch)
        if self.classifier is not None:
            pos = self.classifier.positive_label
            probs = [r["probabilities"][pos] for r in self.classifier.predict_images(batch)]
        lesions = self.lesion_segmenter.predict_images(batch) if self.lesion_segmenter else [None] * len(batch)
        lungs = self.lung_segmenter.predict_images(batch) if self.lung_segmenter else [None] * len(batch)
        rows = []
        for i, ((array, meta, _), p, lesion, lung) in enumerate(zip(batch, probs, lesions, lungs)):
            lesion_mask = lesion["mask"] > 0 if lesion is not None else None
            if lung is not None:
                lung_mask, source = lung["mask"] > 0, "segmenter"
            elif meta.get("unit") == "HU" and lesion_mask is not None:
                lung_mask, source = lung_mask_from_hu(array) > 0, "hu_threshold"
            else:
                lung_mask, source = None, None
            if lung_mask is not None and lesion_mask is not None:
                lung_mask = lung_mask | lesion_mask  # dense lesions fall outside the air threshold
            spacing = meta.get("pixel_spacing")
            pixel_mm2 = float(spacing[0]) * float(spacing[1]) if spacing else None
            if self.keep_masks and masks is not None:
                masks.append({"lesion": lesion_mask, "lung": lung_mask})
            lesion_px = int(lesion_mask.sum()) if lesion_mask is not None else None
            lung_px = int(lung_mask.sum()) if lung_mask is not None else None
            rows.append({"index": first_index + i, "covid_probability": p, "lesion_pixels": lesion_px,
                         "lung_pixels": lung_px, "lung_area_source": source,
                         "lesion_mm2": lesion_px * pixel_mm2 if pixel_mm2 and lesion_px is not None else None,
                         "lung_mm2": lung_px * pixel_mm2 if pixel_mm2 and lung_px is not None else None})
        return rows

    def _summarise(self, rows, source, volume_meta):
        result = {"schema": STUDY_SCHEMA, "input": source, "task": "ct-study", "slices": len(rows),
                  "bundles": {role: p.info for role, p in (("classifier", self.classifier),
                                                           ("lesion_segmenter", self.lesion_segmenter),
                                                           ("lung_segmenter", self.lung_segmenter)) if p},
                  "volume": {k: volume_meta.get(k) for k in ("format", "unit", "pixel_spacing", "slice_spacing")},
                  "rule": dict(self.rule_params, name=self.rule), "covid_probability": None, "positive": None,
                  "threshold": self.study_threshold}
        result["volume"]["slices"] = len(rows)
        if self.classifier is not None:
            score = aggregate_study([r["covid_probability"] for r in rows], self.rule, **self.rule_params)
            result.update(covid_probability=score, positive_label=self.classifier.positive_label)
            if self.study_threshold is not None:
                result["positive"] = score >= self.study_threshold
        if self.lesion_segmenter is not None:
            lesion = sum(r["lesion_pixels"] for r in rows)
            lung = sum(r["lung_pixels"] for r in rows) if rows[0]["lung_pixels"] is not None else None
            ratio = lesion_ratio(lesion, lung)
            result.update(lesion_pixels=lesion, lung_pixels=lung, lung_area_source=rows[0]["lung_area_source"],
                          lesion_ratio=ratio, severity=severity_grade(ratio) if lung else None)
            voxel_ml = self._voxel_ml(volume_meta)
            result["lesion_volume_ml"] = lesion * voxel_ml if voxel_ml else None
            result["lung_volume_ml"] = lung * voxel_ml if voxel_ml and lung is not None else None
        result["per_slice"] = rows
        return result

    @staticmethod
    def _voxel_ml(meta):
        spacing, step = meta.get("pixel_spacing"), meta.get("slice_spacing")
        if not spacing or not step:
            return None
        return float(spacing[0]) * float(spacing[1]) * float(step) / 1000.0
