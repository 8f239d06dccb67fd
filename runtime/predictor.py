"""Predictor: one verified bundle on one backend; image in, result dict out (schema in lungedge.runtime.report).

``predict`` keeps no per-call state on the object, so one Predictor may serve many threads at once (the
ONNX Runtime session's ``run`` is thread-safe; the TensorRT backend serialises its own calls).
"""

import hashlib
import math
import os

import cv2
import numpy as np

from lungedge.runtime.backends import create_backend
from lungedge.runtime.backends.base import Backend
from lungedge.runtime.bundle import Bundle
from lungedge.runtime.enums import BackendName, TaskKind
from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.io import read_any
from lungedge.runtime.ood import OodScorer, area_findings
from lungedge.runtime.preprocess import preprocess, undo_letterbox
from lungedge.runtime.quality import NOT_ASSESSED, Assessment, QualityControl

RESULT_SCHEMA = "lungedge.result/1"
MODALITY_NAMES = {"xray": "X-ray", "ct": "CT"}


def array_source(array):
    """Identify an in-memory input by the sha256 of its shape, dtype and bytes (never by patient data)."""
    a = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode("ascii"))
    digest.update(a.tobytes())
    return {"sha256": digest.hexdigest()}


def array_meta(array):
    """Reader-style meta for a bare array: display units, intensity range from its dtype."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        top = 255.0
    elif a.dtype == np.uint16:
        top = 65535.0
    else:
        finite = a[np.isfinite(a)] if a.size else a
        top = max(float(finite.max()), 1.0) if finite.size else 1.0
    return {"format": "array", "unit": "display", "intensity_max": top, "modality": None, "pixel_spacing": None,
            "shape": [int(s) for s in a.shape]}


def load_input(path_or_array, meta=None):
    """(array, meta, source) from a file path (any reader) or an ndarray (with optional reader-style meta)."""
    if isinstance(path_or_array, np.ndarray):
        array = path_or_array
        if array.dtype.kind not in "uif":
            raise InputError(f"array input has unsupported dtype {array.dtype}")
        merged = array_meta(array)
        merged.update(meta or {})
        return array.astype(np.float32), merged, array_source(array)
    path = os.fspath(path_or_array)
    array, read_meta = read_any(path)
    return array, read_meta, {"file": os.path.basename(os.path.normpath(path))}


def softmax(logits, axis=-1):
    """Numerically stable softmax."""
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_list(values):
    """Softmax of a short list of floats in plain Python (a few classes: 4x faster than numpy's call overhead)."""
    top = max(values)
    e = [math.exp(v - top) for v in values]
    total = math.fsum(e)
    return [x / total for x in e]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def decide_label(probabilities, positive_label=None, threshold=None):
    """Positive label if its probability reaches ``threshold``, else the most probable of the other labels."""
    if positive_label is None:
        return max(probabilities, key=probabilities.get)
    if probabilities[positive_label] >= threshold:
        return positive_label
    rest = {k: v for k, v in probabilities.items() if k != positive_label}
    return max(rest, key=rest.get)


def _display_name(source):
    return source.get("file") or f"array {source.get('sha256', '')[:12]}"


class Predictor:
    """Run one bundle: ``Predictor.from_bundle(path).predict(path_or_array) -> dict``."""

    def __init__(self, bundle, backend, artifact_key):
        self.bundle = bundle
        self.backend = backend
        self.artifact_key = artifact_key
        m = bundle.manifest
        self.manifest = m
        self.name, self.task, self.modality = m["name"], m["task"], m["modality"]
        self.labels = list(m["labels"])
        self.steps = m["preprocessing"]
        self.output_kind = m["output"].get("kind", "logits")
        self.positive_label = m.get("positive_label")
        self.threshold = self._threshold()
        self.quality = QualityControl.from_manifest(m)
        self.area_bands = (m.get("quality") or {}).get("area") or {}
        self.ood, self.ood_note = self._ood(bundle, artifact_key, backend)

    def _ood(self, bundle, artifact_key, backend):
        """(OodScorer or None, why there is none): bundles without a calibration say so in every result."""
        if not self.quality.enabled:
            return None, "quality control is switched off in this bundle's manifest (quality.enabled false)"
        if self.task != TaskKind.CLASSIFICATION:
            if self.area_bands:
                return None, "segmenters have no feature-distance check; predicted areas are checked against the " \
                             "bundle's plausible bands (quality.area)"
            return None, "segmenters have no feature-distance check, and this bundle has no plausible-area bands " \
                         "(quality.area): predicted areas are not checked"
        scorer = OodScorer.from_bundle(bundle, artifact_key)
        if scorer is None:
            return None, f"no out-of-distribution check: the bundle has no calibration for artifact {artifact_key!r}"
        if type(backend).run_outputs is Backend.run_outputs:
            return None, (f"no out-of-distribution check: the {backend.name} backend does not return the feature "
                          f"output {scorer.feature_output!r}")
        if scorer.feature_output not in backend.output_names:
            raise BundleError(f"quality.ood[{artifact_key!r}] names feature output {scorer.feature_output!r}, but the "
                              f"model's outputs are {list(backend.output_names)}; rebuild the bundle")
        return scorer, None
    def _threshold(self):
        m = self.manifest
        if self.output_kind not in ("logits", "probabilities"):
            raise BundleError(f"output kind {self.output_kind!r} is not 'logits' or 'probabilities'")
        if self.task == TaskKind.SEGMENTATION:
            return float(m["thresholds"]["mask"]) if "mask" in m["thresholds"] else None
        if self.positive_label is None:
            return None
        if self.positive_label not in self.labels:
            raise BundleError(f"positive_label {self.positive_label!r} is not among labels {self.labels}")
        if self.positive_label not in m["thresholds"]:
            raise BundleError(f"thresholds lack the positive label {self.positive_label!r}")
        return float(m["thresholds"][self.positive_label])

    @classmethod
    def from_bundle(cls, path, backend="onnxruntime", precision=None, threads=None, providers=None, device=0,
                    inference_precision="f32"):
        """Load and verify a bundle (sha256) and open its artifact for ``backend`` (smallest precision first).

        ``inference_precision`` is OpenVINO's compute precision ("f32" or "bf16"), pinned because OpenVINO would
        otherwise choose BF16 by itself on CPUs that have it; the other backends ignore it. ``backend="auto"``
        opens the manifest's ``cpu_default`` (artifact, backend, precision and thread count chosen by measured
        latency; ``threads`` given here overrides the recorded count).
        """
        bundle = Bundle.load(path)
        if backend == "auto":  # the bundle's measured choice; its backend missing here is an error, not a swap
            key, backend, inference_precision, measured_threads = bundle.cpu_default()
            threads = threads or measured_threads  # the measured count unless the caller pins one
            if precision is not None and bundle.manifest["artifacts"][key]["precision"] != precision:
                raise BundleError(f"the bundle's measured CPU default is {key}, not a {precision} artifact; "
                                  "leave out the precision or choose the backend explicitly")
        else:
            key = bundle.find_artifact(backend, precision)
        if backend == BackendName.TENSORRT:
            opts = {"entry": bundle.manifest["artifacts"][key], "device": device}
        elif backend == BackendName.OPENVINO:
            opts = {"threads": threads, "precision": inference_precision,
                    "cache_dir": bundle.cache_dir("openvino")}
        else:
            opts = {"threads": threads}
            if providers:
                opts["providers"] = providers
        return cls(bundle, create_backend(backend, bundle.path_of(key), **opts), key)

    @property
    def info(self):
        """What ran: bundle name, task, modality, artifact, backend and precision."""
        art = self.manifest["artifacts"][self.artifact_key]
        info = {"name": self.name, "task": self.task, "modality": self.modality, "artifact": self.artifact_key,
                "backend": art["backend"], "precision": art["precision"]}
        if getattr(self.backend, "name", None) == BackendName.OPENVINO:  # same ONNX file, another runtime
            info["backend"], info["inference_precision"] = "openvino", self.backend.precision
        return info

    def prepare(self, array, meta, source):
        """Check modality and dimensionality, then run the manifest's preprocessing: ((1, H, W), meta)."""
        name = _display_name(source)
        found = meta.get("modality")
        if found is not None and found != self.modality:
            raise InputError(f"{name}: wrong modality: the input is {MODALITY_NAMES.get(found, found)} but bundle "
                             f"{self.name!r} expects {MODALITY_NAMES[self.modality]}")
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3:
            raise InputError(f"{name}: a volume of {array.shape[0]} slices or frames, but the bundle takes one 2-D "
                             "image; CT volumes go through CtStudyPipeline (lungedge infer uses it for CT bundles)")
        if array.ndim != 2:
            raise InputError(f"{name}: expected a 2-D image, got shape {tuple(array.shape)}")
        try:
            return preprocess(array, meta, self.steps)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None

    def infer(self, tensors):
        """Run preprocessed (1, H, W) tensors as one batch; returns the model's first output."""
        return self.infer_with_features(tensors)[0]

    def infer_with_features(self, tensors):
        """(first output, pooled features or None): features only when the bundle has an OOD calibration."""
        batch = np.stack(tensors).astype(np.float32)
        if self.ood is None:
            out, features = self.backend.run(batch), None
        else:
            first = self.backend.output_names[0]
            outs = self.backend.run_outputs(batch, [first, self.ood.feature_output])
            out, features = outs[first], outs[self.ood.feature_output].reshape(len(batch), -1)
        if out.shape[0] != batch.shape[0]:
            raise BundleError(f"model returned {out.shape[0]} results for a batch of {batch.shape[0]}")
        return out, features

    def assess(self, array, meta):
        """Header and pixel quality stages of one read image (an Assessment; ``.refused`` means not assessed)."""
        return self.quality.assess(array, meta)

    def predict(self, path_or_array, meta=None):
        """Predict one image (path or array); returns the result dict."""
        crop = self.manifest.get("input_crop")
        if crop:
            raise BundleError(f"{self.name!r} was trained on lung crops by {crop.get('segmenter')!r}: predict through "
                              "lungedge.runtime.pipelines.XrayPipeline with that lung bundle (lungedge infer "
                              "--lung-bundle)")
        array, meta, source = load_input(path_or_array, meta)
        return self.predict_image(array, meta, source)

    def predict_image(self, array, meta, source):
        """Predict one already-read image."""
        return self.predict_images([(array, meta, source)])[0]

    def predict_images(self, items, assessments=None, check_quality=True):
        """Predict ``[(array, meta, source), ...]`` in one backend batch; returns one result per item.

        Each result carries a ``quality`` block. Inputs the header or pixel stage refuses are not run: their
        result has ``assessed`` False and no label. ``assessments`` (one per item) replace the header and pixel
        stages when a pipeline already ran them on the uncropped image; ``check_quality=False`` skips them.
        """
        if assessments is None:
            assessments = [self.assess(a, m) if check_quality else Assessment() for a, m, _ in items]
        assessments = [a if a is not None else Assessment() for a in assessments]
        # A refused image is not preprocessed either (a blank one would fail there with an InputError).
        prepared = [self.prepare(a, m, s) if not q.refused else (None, None)
                    for (a, m, s), q in zip(items, assessments)]
        run = [i for i, a in enumerate(assessments) if not a.refused]
        out, features = self.infer_with_features([prepared[i][0] for i in run]) if run else (None, None)
        rows = {i: k for k, i in enumerate(run)}
        results = []
        for i, ((_, net_meta), (_, meta, source), assessment) in enumerate(zip(prepared, items, assessments)):
            result = {"schema": RESULT_SCHEMA, "input": dict(source), "bundle": self.info, "task": self.task,
                      "image": {"format": meta.get("format"), "shape": meta.get("shape"), "unit": meta.get("unit"),
                                "modality": meta.get("modality"), "pixel_spacing": meta.get("pixel_spacing")}}
            if i in rows:
                row = out[rows[i]]
                self._model_stage(assessment, row, None if features is None else features[rows[i]])
                if self.task == TaskKind.CLASSIFICATION:
                    result.update(self.classify(row))
                else:
                    result.update(self.segment(row, net_meta, meta))
                    for finding in area_findings(result["areas"], self.area_bands):
                        assessment.add(finding)
            else:
                assessment.ood = {"checked": False, "note": "not reached: refused before the model ran"}
            result["assessed"] = not assessment.refused
            if assessment.refused:
                result.update(outcome=NOT_ASSESSED, reason=assessment.summary())
                for key in ("probabilities", "label", "positive", "mask", "areas"):
                    result.pop(key, None)
            result["quality"] = assessment.to_dict()
            results.append(result)
        return results

    def _model_stage(self, assessment, row, features):
        """Add the model-side OOD scores (classifiers with a calibration) to an assessment."""
        if self.ood is None:
            assessment.ood = {"checked": False, "note": self.ood_note}
            return
        scores = self.ood.score(features[None], np.asarray(row, np.float64).reshape(1, -1))
        values = {k: float(v[0]) for k, v in scores.items()}
        assessment.scores.update({f"ood_{k}": v for k, v in values.items()})
        assessment.thresholds["model"] = dict(self.ood.thresholds)
        assessment.ood = self.ood.describe()
        for finding in self.ood.findings(values):
            assessment.add(finding)

    def classify(self, row):
        """Probabilities per label and the decided label from one output row."""
        values = np.asarray(row, np.float64).ravel().tolist()
        if len(values) != len(self.labels):
            raise BundleError(f"model outputs {len(values)} classes but the manifest lists {len(self.labels)} labels")
        probs = values if self.output_kind == "probabilities" else softmax_list(values)
        probabilities = dict(zip(self.labels, probs))
        label = decide_label(probabilities, self.positive_label, self.threshold)
        out = {"probabilities": probabilities, "label": label, "positive_label": self.positive_label,
               "threshold": self.threshold}
        if self.positive_label is not None:
            out["positive"] = label == self.positive_label
        return out

    def net_mask(self, row):
        """Class-index mask in network space from one (C, h, w) output."""
        row = np.asarray(row, np.float32)
        if row.ndim != 3:
            raise BundleError(f"segmentation output must be (C, H, W) per image, got {row.shape}")
        if row.shape[0] == 1:
            if self.threshold is None:
                raise BundleError("a one-channel segmentation bundle needs thresholds['mask']")
            prob = row[0] if self.output_kind == "probabilities" else sigmoid(row[0])
            return (prob >= self.threshold).astype(np.uint8)
        if row.shape[0] != len(self.labels):
            raise BundleError(f"model outputs {row.shape[0]} channels but the manifest lists {len(self.labels)} labels")
        return np.argmax(row, axis=0).astype(np.uint8)

    def segment(self, row, net_meta, meta):
        """Mask on the original image grid, with pixel counts, area fractions and mm^2 per foreground label."""
        mask = self.net_mask(row)
        box = net_meta.get("letterbox")
        if box is not None:
            net_h, net_w = self.bundle.input_size
            if mask.shape != (net_h, net_w):
                mask = cv2.resize(mask, (net_w, net_h), interpolation=cv2.INTER_NEAREST)
            mask = undo_letterbox(mask, box)
        else:
            h, w = meta["shape"][-2:]
            mask = cv2.resize(mask, (int(w), int(h)), interpolation=cv2.INTER_NEAREST)
        spacing = meta.get("pixel_spacing")
        pixel_mm2 = float(spacing[0]) * float(spacing[1]) if spacing else None
        # One channel: foreground is the last label; several: every label but the first (background).
        foreground = [(1, self.labels[-1])] if np.shape(row)[0] == 1 else list(enumerate(self.labels))[1:]
        areas = {}
        for index, label in foreground:
            pixels = int(np.count_nonzero(mask == index))
            areas[label] = {"pixels": pixels, "fraction": pixels / float(mask.size),
                            "area_mm2": pixels * pixel_mm2 if pixel_mm2 is not None else None}
        return {"mask": mask, "areas": areas, "threshold": self.threshold, "labels": self.labels}

    def close(self):
        self.backend.close()
