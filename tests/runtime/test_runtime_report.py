"""Report outputs: JSON without arrays, overlay PNG, CSV summary."""

import csv
import json

import cv2
import numpy as np
from tinymodels import square_image

from lungedge.runtime.predictor import Predictor
from lungedge.runtime.report import (
    CSV_FIELDS,
    display_image,
    jsonable,
    render_overlay,
    summary_row,
    write_csv,
    write_json,
    write_overlay,
)


def test_jsonable_drops_arrays_and_converts_numpy():
    value = {"mask": np.zeros(3), "p": np.float32(0.5), "n": np.int64(3), "t": (1, 2), "bad": float("nan"),
             "nested": [{"x": np.bool_(True)}]}
    assert jsonable(value) == {"p": 0.5, "n": 3, "t": [1, 2], "bad": None, "nested": [{"x": True}]}
    json.dumps(jsonable(value))


def test_json_and_overlay_for_segmentation(xray_lung_bundle, tmp_path):
    image = square_image()
    result = Predictor.from_bundle(xray_lung_bundle, threads=1).predict(image)
    write_json(result, str(tmp_path / "r.json"))
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert "mask" not in loaded and loaded["areas"]["lung"]["pixels"] == 2400
    overlay = render_overlay(image.astype(np.float32), {"unit": "display"}, result)
    assert overlay.shape == (96, 128, 3)
    green = (overlay[..., 1] == 255) & (overlay[..., 0] == 0) & (overlay[..., 2] == 0)
    assert green[20, 40:80].any()  # contour along the top edge of the mask
    write_overlay(image, {"unit": "display"}, result, str(tmp_path / "o.png"))
    assert cv2.imread(str(tmp_path / "o.png")).shape == (96, 128, 3)


def test_overlay_writes_label_text(xray_cls_bundle):
    image = np.full((200, 300), 60, np.uint8)
    image[50:150, 100:200] = 200
    result = Predictor.from_bundle(xray_cls_bundle, threads=1).predict(image)
    overlay = render_overlay(image.astype(np.float32), {"unit": "display"}, result)
    plain = cv2.cvtColor(display_image(image, {"unit": "display"}), cv2.COLOR_GRAY2BGR)
    changed = (overlay != plain).any(axis=2)
    assert changed[:30, :150].sum() > 100 and not changed[60:, :].any()  # caption top-left, nothing else


def test_csv_summary(xray_cls_bundle, tmp_path):
    result = Predictor.from_bundle(xray_cls_bundle, threads=1).predict(square_image())
    rows = [summary_row("a.png", result), summary_row("b.dcm", error="b.dcm: file is empty")]
    write_csv(rows, str(tmp_path / "s.csv"))
    with open(str(tmp_path / "s.csv"), newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == list(CSV_FIELDS)
    assert read[0]["status"] == "ok" and read[0]["label"] == result["label"]
    assert float(read[0]["probability"]) == round(result["probabilities"]["covid"], 6)
    assert read[1]["status"] == "error" and read[1]["error"] == "b.dcm: file is empty"
