"""Outputs: one JSON file per input, an overlay PNG for 2-D images, one CSV summary per batch.

Image result (``schema`` "lungedge.result/1")::

    input        {"file": "a.dcm"} or {"sha256": "..."}  (file name or array hash; never patient data)
    bundle       {"name", "task", "modality", "artifact", "backend", "precision"}
    task         "classification" | "segmentation"
    image        {"format", "shape": [H, W], "unit", "modality", "pixel_spacing": [row, col] mm | null}
    classification:
      probabilities  {label: p}  (softmax over the labels)
      label          decided label; positive_label, threshold, positive (bool) when the bundle names one
    segmentation:
      areas          {label: {"pixels", "fraction" (of the image), "area_mm2" (null without spacing)}}
      threshold      the mask threshold (one-channel models), labels
    lung           (X-ray with a lung segmenter) {"bundle", "areas", "crop_box": [x0, y0, x1, y1] | null}
    warnings       optional list of strings
    assessed       false when quality control refused the input: it is "not assessed", with ``outcome``
                   "not assessed" and ``reason``, and has no probabilities, label, mask or areas
    quality        {"status": "accept" | "warn" | "refuse", "reasons": [{"stage", "reason", "status", "message",
                   "value", "limit"}], "scores": {name: value}, "thresholds": {stage: {...}},
                   "ood": {"checked": bool, "note" or "feature_output", "acceptance", ...}, "summary",
                   "lung_fields" (X-ray pipeline only): {"checked": bool, "note" or "segmenter", "acceptance",
                   "fitted_on"}}

CT study result (``schema`` "lungedge.study/1")::

    input, task "ct-study", slices, bundles {role: bundle info}, volume {format, unit, pixel_spacing, slice_spacing}
    rule             {"name": "mean" | "max" | "positive_rate" | "consecutive", params...}
    covid_probability  aggregated score | null; positive, threshold, positive_label
    lesion_pixels, lung_pixels, lung_area_source ("segmenter" | "hu_threshold" | null), lesion_ratio,
    severity ("CT-0".."CT-4" | null), lesion_volume_ml, lung_volume_ml
    per_slice        [{"index", "covid_probability", "lesion_pixels", "lung_pixels", "lesion_mm2", "lung_mm2",
                       "quality", "quality_reason"}]  (refused slices count in no aggregate)
    assessed, quality  the study is not assessed when more than half its slices are refused;
                       quality {"status", "slices_refused", "slices", "reasons": [{"reason", "slices"}],
                       "scores": {"refused_fraction"}, "thresholds": {"max_refused_fraction"}, "summary"}

Masks (numpy arrays) stay out of the JSON; they appear in the overlay. Readers never copy patient identifiers
into ``meta``, so nothing here can write them.
"""

import csv
import json

import cv2
import numpy as np

from lungedge.runtime.enums import TaskKind
from lungedge.runtime.jsonable import NonFinite, to_jsonable
from lungedge.runtime.quality import NOT_ASSESSED

# status: "ok", "not assessed" (refused by quality control: no label) or "error"; quality: accept/warn/refuse.
CSV_FIELDS = ("input", "status", "task", "label", "probability", "positive", "lesion_ratio", "severity",
              "area_fraction", "bundle", "backend", "precision", "quality", "quality_reason", "error")
# BGR colours for mask classes 1, 2, 3...
COLOURS = ((0, 255, 0), (0, 0, 255), (255, 128, 0), (255, 0, 255))


def jsonable(value):
    """A JSON-safe copy of a result: numpy scalars to Python, tuples to lists, arrays dropped, non-finite null."""
    return to_jsonable(value, NonFinite.NULL, drop_arrays=True)


def write_json(result, path):
    """Write one result as indented JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(jsonable(result), fh, indent=2, sort_keys=True)
        fh.write("\n")


def display_image(array, meta):
    """8-bit grayscale for display: HU through the lung window, other images by their 1-99 percentiles."""
    a = np.asarray(array, np.float32)
    if a.ndim == 3:
        a = a[0]
    if meta.get("unit") == "HU":
        low, high = -1350.0, 150.0
    else:
        low, high = (float(v) for v in np.percentile(a, [1, 99]))
        if high - low < 1e-6:
            low, high = float(a.min()), float(a.min()) + 1.0
    return (np.clip((a - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _caption(result):
    if result.get("assessed") is False:
        return f"NOT ASSESSED: {result.get('reason', '')}"[:90]
    if result.get("task") == TaskKind.CLASSIFICATION:
        label = result["label"]
        return f"{label} {result['probabilities'][label]:.2f}"
    areas = result.get("areas", {})
    return ", ".join(f"{k} {v['fraction'] * 100:.1f}%" for k, v in areas.items())


def render_overlay(array, meta, result):
    """BGR overlay: mask contours in colour and the label with its probability written on the image."""
    gray = display_image(array, meta)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    mask = result.get("mask")
    if isinstance(mask, np.ndarray) and mask.shape == gray.shape:
        thickness = max(1, gray.shape[1] // 300)
        for value in range(1, int(mask.max(initial=0)) + 1):
            contours, _ = cv2.findContours((mask == value).astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, COLOURS[(value - 1) % len(COLOURS)], thickness)
    box = (result.get("lung") or {}).get("crop_box")
    if box:
        cv2.rectangle(canvas, (box[0], box[1]), (box[2] - 1, box[3] - 1), (0, 200, 255), 1)
    scale = max(0.4, gray.shape[1] / 700.0)
    text = _caption(result)
    org = (int(8 * scale), int(28 * scale))
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), int(3 * scale) + 1, cv2.LINE_AA)
    colour = (0, 165, 255) if result.get("assessed") is False else (255, 255, 255)  # orange: not assessed
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, int(scale)), cv2.LINE_AA)
    return canvas


def write_overlay(array, meta, result, path):
    """Write the overlay PNG (OpenCV writes no text chunks, so the file carries pixels only)."""
    if not cv2.imwrite(str(path), render_overlay(array, meta, result)):
        raise OSError(f"could not write overlay {path}")


def summary_row(name, result=None, error=None):
    """One CSV row for an input: its result, or the error that stopped it."""
    row = dict.fromkeys(CSV_FIELDS, "")
    row["input"] = name
    if error is not None:
        row.update(status="error", error=str(error))
        return row
    quality = result.get("quality") or {}
    row.update(status=NOT_ASSESSED if result.get("assessed") is False else "ok", task=result.get("task", ""),
               quality=quality.get("status", ""), quality_reason=quality.get("summary", ""))
    info = result.get("bundle") or next(iter(result.get("bundles", {}).values()), {})
    row.update(bundle=info.get("name", ""), backend=info.get("backend", ""), precision=info.get("precision", ""))
    if result.get("assessed") is False:
        return row
    if result.get("task") == TaskKind.CLASSIFICATION:
        positive = result.get("positive_label") or result["label"]
        row.update(label=result["label"], probability=f"{result['probabilities'][positive]:.6f}",
                   positive=result.get("positive", ""))
    elif result.get("task") == TaskKind.SEGMENTATION:
        row["area_fraction"] = ";".join(f"{k}={v['fraction']:.6f}" for k, v in result["areas"].items())
    else:
        score = result.get("covid_probability")
        row.update(probability="" if score is None else f"{score:.6f}", positive=_blank(result.get("positive")),
                   lesion_ratio=_blank(result.get("lesion_ratio")), severity=_blank(result.get("severity")))
    return row


def _blank(value):
    return "" if value is None else value


def write_csv(rows, path):
    """Write summary rows (from ``summary_row``) as CSV."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
