"""Pipelines over Predictors: X-ray classification after an optional lung crop; CT studies slice by slice."""

import os

import numpy as np

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.io import is_volume, iter_slices
from lungedge.runtime.lung_fields import LungFieldCheck
from lungedge.runtime.predictor import array_meta, array_source, load_input
from lungedge.runtime.quality import NOT_ASSESSED
from lungedge.runtime.study import aggregate_study, lesion_ratio, lung_mask_from_hu, severity_grade

STUDY_SCHEMA = "lungedge.study/1"
STATUS_ORDER = ("accept", "warn", "refuse")
# A study with more than this fraction of refused slices is not assessed (a few refused slices, e.g. above
# the lungs, only drop out of the aggregate).
MAX_REFUSED_SLICES = 0.5


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


def input_crop(manifest):
    """The input crop a classifier bundle was trained with (``manifest["input_crop"]``), or None."""
    crop = manifest.get("input_crop")
    if crop is None:
        return None
    if not isinstance(crop, dict) or crop.get("kind") != "lung_box":
        raise BundleError(f"unknown input_crop {crop!r}; this lungedge knows only kind 'lung_box'")
    return crop


class LungCrop:
    """Crop an X-ray to its lungs: the lung segmenter's mask, its bounding box grown by ``margin`` per side.

    The one implementation of the crop, used by training, distillation, calibration, the benchmark and
    ``XrayPipeline``, so a classifier trained on lung crops sees the same crops at the bedside.
    """

    def __init__(self, segmenter, margin=0.05):
        _require(segmenter, "the lung segmenter", "segmentation", "xray")
        self.segmenter, self.margin = segmenter, float(margin)

    @property
    def spec(self):
        """What to record in a bundle trained on these crops (``manifest["input_crop"]``)."""
        seg = self.segmenter
        return {"kind": "lung_box", "margin": self.margin, "segmenter": seg.name,
                "segmenter_manifest_sha256": seg.bundle.manifest_sha256}

    def check(self, crop):
        """Raise BundleError unless this crop is the one ``crop`` (a manifest's input_crop) was trained with."""
        if crop is None:
            return
        mine = self.spec
        if crop.get("segmenter_manifest_sha256") != mine["segmenter_manifest_sha256"]:
            raise BundleError(f"the classifier was trained on lung crops by segmenter {crop.get('segmenter')!r} "
                              f"(manifest sha256 {str(crop.get('segmenter_manifest_sha256'))[:12]}...), but "
                              f"{mine['segmenter']!r} ({mine['segmenter_manifest_sha256'][:12]}...) was given: "
                              "use the same lung bundle")
        if abs(float(crop.get("margin", 0.05)) - self.margin) > 1e-9:
            raise BundleError(f"crop margin {self.margin} differs from the trained margin {crop.get('margin')}")

    def __call__(self, array, meta, source=None, assessment=None):
        """(cropped array, meta, lung info); the whole image when the segmenter finds no lung.

        assessment: the input's quality assessment, which the segmenter's area checks extend (the runtime);
        None runs the segmenter without quality checks (training and calibration images).
        """
        source = source or array_source(array)
        if assessment is None:
            lung = self.segmenter.predict_images([(array, meta, source)], check_quality=False)[0]
        else:
            lung = self.segmenter.predict_images([(array, meta, source)], assessments=[assessment])[0]
        if lung.get("mask") is None:  # refused by a quality stage: nothing to crop by
            return array, meta, {"bundle": lung["bundle"], "areas": None, "crop_box": None, "mask": None}
        box = bounding_box(lung["mask"], self.margin)
        info = {"bundle": lung["bundle"], "areas": lung["areas"], "crop_box": list(box) if box else None,
                "mask": lung["mask"]}
        if box is None:
            return array, meta, info
        x0, y0, x1, y1 = box
        crop = array[y0:y1, x0:x1] if array.ndim == 2 else array[..., y0:y1, x0:x1]
        return np.ascontiguousarray(crop), dict(meta, shape=[y1 - y0, x1 - x0]), info


class XrayPipeline:
    """Chest X-ray classification; with a lung segmenter the image is first cropped to the lungs (plus margin).

    A classifier trained on lung crops (its manifest's ``input_crop``) needs the very segmenter it was trained
    with; without it, or with another, the pipeline refuses to start. With the classifier's lung-field bands
    (``quality.lung_fields``, lungedge.runtime.lung_fields) a film whose lung mask does not show two fields side
    by side is refused before the classifier runs.
    """

    def __init__(self, classifier, lung_segmenter=None, margin=None):
        _require(classifier, "the classifier", "classification", "xray")
        crop = input_crop(classifier.manifest)
        if crop is not None and lung_segmenter is None:
            raise BundleError(f"{classifier.name!r} was trained on lung crops by segmenter {crop.get('segmenter')!r}: "
                              "give that lung bundle (--lung-bundle)")
        if margin is None:
            margin = crop.get("margin", 0.05) if crop else 0.05
        self.cropper = LungCrop(lung_segmenter, margin) if lung_segmenter is not None else None
        if self.cropper is not None:
            self.cropper.check(crop)
        self.classifier, self.lung_segmenter, self.margin = classifier, lung_segmenter, margin
        self.lung_check, self.lung_check_note = LungFieldCheck.from_manifest(classifier.manifest, lung_segmenter)

    def predict(self, path_or_array, meta=None):
        """Classify one image (path or array); returns the classifier's result plus the lung crop."""
        array, meta, source = load_input(path_or_array, meta)
        return self.predict_image(array, meta, source)

    def predict_image(self, array, meta, source):
        """Quality stages on the whole image first; a refused image reaches neither the segmenter nor the classifier."""
        assessment = self.classifier.assess(array, meta)
        if self.lung_check is None:
            assessment.lung_fields = {"checked": False, "note": self.lung_check_note}
        if self.cropper is None or assessment.refused:
            if self.lung_check is not None:
                assessment.lung_fields = {"checked": False, "note": "not reached: refused before the lung segmenter"}
            return self.classifier.predict_images([(array, meta, source)], assessments=[assessment])[0]
        # The segmenter adds its plausible-area warnings to the same assessment, the lung-field check its
        # statistics; the classifier then adds its OOD scores on the crop (the header and pixel stages are not
        # rerun on the crop), or does not run when the lung fields refused the film.
        crop, crop_meta, lung = self.cropper(array, meta, source, assessment=assessment)
        if self.lung_check is not None and lung["mask"] is not None:
            self.lung_check.assess(assessment, lung["mask"], array)
        result = self.classifier.predict_images([(crop, crop_meta, source)], assessments=[assessment])[0]
        mask = lung.pop("mask")
        if lung["crop_box"] is not None:
            result["image"]["shape"] = meta.get("shape")
        if not result["assessed"]:  # the crop box and areas say what the segmenter saw; no mask, no label
            result.update(lung=lung)
            return result
        if lung["crop_box"] is None:
            result["warnings"] = ["lung segmenter found no lung; classified the whole image"]
        result.update(mask=mask, lung=lung)
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
        cls = self.classifier.predict_images(batch) if self.classifier is not None else [None] * len(batch)
        lesions = self.lesion_segmenter.predict_images(batch) if self.lesion_segmenter else [None] * len(batch)
        lungs = (self.lung_segmenter.predict_images(batch, check_quality=False) if self.lung_segmenter
                 else [None] * len(batch))
        rows = []
        for i, ((array, meta, _), c, lesion, lung) in enumerate(zip(batch, cls, lesions, lungs)):
            checked = [r for r in (c, lesion) if r is not None]
            refused = [r for r in checked if not r["assessed"]]
            worst = max((STATUS_ORDER.index(r["quality"]["status"]) for r in checked), default=0)
            row = {"index": first_index + i, "quality": STATUS_ORDER[worst],
                   "quality_reason": "; ".join(r["reason"] for r in refused) or None}
            if refused:  # a slice refused by either model counts for neither
                row.update(covid_probability=None, lesion_pixels=None, lung_pixels=None, lung_area_source=None,
                           lesion_mm2=None, lung_mm2=None)
                rows.append(row)
                if self.keep_masks and masks is not None:  # an empty mask keeps the stack one slice per slice
                    empty = np.zeros(np.shape(array)[-2:], bool)
                    has_lung = self.lung_segmenter is not None or (meta.get("unit") == "HU" and
                                                                   self.lesion_segmenter is not None)
                    masks.append({"lesion": empty if self.lesion_segmenter is not None else None,
                                  "lung": empty if has_lung else None})
                continue
            p = c["probabilities"][self.classifier.positive_label] if c is not None else None
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
            row.update({"covid_probability": p, "lesion_pixels": lesion_px,
                        "lung_pixels": lung_px, "lung_area_source": source,
                        "lesion_mm2": lesion_px * pixel_mm2 if pixel_mm2 and lesion_px is not None else None,
                        "lung_mm2": lung_px * pixel_mm2 if pixel_mm2 and lung_px is not None else None})
            rows.append(row)
        return rows

    def _study_quality(self, rows):
        """Study-level quality: refused when more than ``MAX_REFUSED_SLICES`` of its slices were refused."""
        refused = [r for r in rows if r["quality"] == "refuse"]
        fraction = len(refused) / float(len(rows))
        reasons = {}
        for r in refused:
            reasons[r["quality_reason"]] = reasons.get(r["quality_reason"], 0) + 1
        common = max(reasons, key=reasons.get) if reasons else None
        if fraction > MAX_REFUSED_SLICES:
            status = "refuse"
        elif refused or any(r["quality"] == "warn" for r in rows):
            status = "warn"
        else:
            status = "accept"
        summary = (f"{len(refused)} of {len(rows)} slices refused (most often: {common})" if refused else "")
        return {"status": status, "slices_refused": len(refused), "slices": len(rows),
                "reasons": [{"reason": k, "slices": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])],
                "scores": {"refused_fraction": round(fraction, 6)},
                "thresholds": {"max_refused_fraction": MAX_REFUSED_SLICES}, "summary": summary}

    def _summarise(self, rows, source, volume_meta):
        quality = self._study_quality(rows)
        result = {"schema": STUDY_SCHEMA, "input": source, "task": "ct-study", "slices": len(rows),
                  "bundles": {role: p.info for role, p in (("classifier", self.classifier),
                                                           ("lesion_segmenter", self.lesion_segmenter),
                                                           ("lung_segmenter", self.lung_segmenter)) if p},
                  "volume": {k: volume_meta.get(k) for k in ("format", "unit", "pixel_spacing", "slice_spacing")},
                  "rule": dict(self.rule_params, name=self.rule), "covid_probability": None, "positive": None,
                  "threshold": self.study_threshold, "quality": quality,
                  "assessed": quality["status"] != "refuse"}
        result["volume"]["slices"] = len(rows)
        used = [r for r in rows if r["quality"] != "refuse"]
        if not result["assessed"]:
            result.update(outcome=NOT_ASSESSED, reason=quality["summary"], per_slice=rows)
            return result
        if self.classifier is not None:
            score = aggregate_study([r["covid_probability"] for r in used], self.rule, **self.rule_params)
            result.update(covid_probability=score, positive_label=self.classifier.positive_label)
            if self.study_threshold is not None:
                result["positive"] = score >= self.study_threshold
        if self.lesion_segmenter is not None:
            lesion = sum(r["lesion_pixels"] for r in used)
            lung = sum(r["lung_pixels"] for r in used) if used[0]["lung_pixels"] is not None else None
            ratio = lesion_ratio(lesion, lung)
            result.update(lesion_pixels=lesion, lung_pixels=lung, lung_area_source=used[0]["lung_area_source"],
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


class InputRouter:
    """Routes each input: X-ray images through XrayPipeline, CT volumes through CtStudyPipeline.

    ``rule``, ``consecutive`` and ``batch_size`` shape CT studies (as ``lungedge infer --rule`` etc.); the same
    routing serves ``lungedge infer`` and the bedside service, so both give identical results.
    """

    def __init__(self, predictor, lung=None, rule="mean", consecutive=3, batch_size=8):
        self.predictor, self.study, self.image = predictor, None, predictor
        if predictor.modality == "xray" and predictor.task == "classification":
            self.image = XrayPipeline(predictor, lung)
        elif predictor.modality == "xray" and lung is not None:
            raise BundleError("--lung-bundle goes with an X-ray classification bundle or a CT bundle")
        if predictor.modality == "ct":
            params = {"n": consecutive} if rule == "consecutive" else {}
            cls = predictor if predictor.task == "classification" else None
            seg = predictor if predictor.task == "segmentation" else None
            try:
                self.study = CtStudyPipeline(classifier=cls, lesion_segmenter=seg, lung_segmenter=lung,
                                             batch_size=batch_size, rule=rule, rule_params=params)
            except ValueError as exc:
                raise BundleError(f"--rule: {exc}") from None

    def run(self, path):
        """(result, (array, meta) for an overlay or None)."""
        if self.study is not None and is_volume(path):
            return self.study.run(path), None
        array, meta, source = load_input(path)
        if self.study is not None and array.ndim == 3 and array.shape[0] > 1:  # multi-frame CT DICOM
            return self.study.run(array, meta, source=source), None
        return self.image.predict_image(array, meta, source), (array, meta)
