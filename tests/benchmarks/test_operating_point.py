"""tools/operating_point.py: the screening threshold is fitted on validation only, per COVID source, and its
test figures and BENCHMARKS.md targets come out exactly on a tiny hand-made results file."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import operating_point as OP  # noqa: E402

from lungedge.benchmarks import make_benchmarks_md as MB  # noqa: E402


def _pack():
    # validation: two COVID sources; the lowest-scored COVID film of source "b" sets the threshold (floor 1.0).
    val = [("a", "covid", 0.9), ("a", "covid", 0.8), ("b", "covid", 0.6), ("b", "covid", 0.7),
           ("n", "normal", 0.65), ("n", "normal", 0.1)]
    test = [("a", "covid", 0.95), ("a", "covid", 0.5), ("b", "covid", 0.61),
            ("nih-chestxray14", "normal", 0.59), ("nih-chestxray14", "normal", 0.7),
            ("nih-chestxray14", "pneumonia", 0.9)]
    rows = [{"file": f"images/v{i}.png", "source": s, "label": lab, "split": "val", "patient_id": f"v{i}"}
            for i, (s, lab, _) in enumerate(val)]
    rows += [{"file": f"images/t{i}.png", "source": s, "label": lab, "split": "test", "patient_id": f"t{i}"}
             for i, (s, lab, _) in enumerate(test)]
    labels = ["covid", "normal", "pneumonia"]

    def probs(items):
        return [[p, 1 - p, 0.0] for _, _, p in items]
    results = {"labels": labels, "positive_label": "covid",
               "per_image": {"files": [f"t{i}.png" for i in range(len(test))], "labels": [t[1] for t in test],
                             "val_labels": [v[1] for v in val]},
               "rows": [{"name": "base", "per_image_val_probabilities": probs(val),
                         "per_image_probabilities": probs(test)}]}
    return results, rows


def test_screening_threshold_is_the_highest_that_keeps_every_source_at_the_floor():
    results, rows = _pack()
    out = OP.analyse(results, rows, 1.0)
    r = out["rows"][0]
    assert out["positive_sources"] == ["a", "b"] and r["threshold"] == 0.6
    assert r["val_sensitivity"] == {"a": 1.0, "b": 1.0}
    assert r["sensitivity"]["a"][0] == 0.5 and r["sensitivity"]["a"][3] == 2  # 0.95 called, 0.5 missed
    assert r["sensitivity"]["b"][0] == 1.0
    nih = r["specificity_normals"]["nih-chestxray14"]
    assert nih[0] == 0.5 and nih[3] == 2  # 0.59 cleared, 0.7 called COVID; the pneumonia is not a normal
    assert out["normal_sources"] == ["nih-chestxray14"]
    with pytest.raises(ValueError, match="do not match"):
        OP.analyse(results, [dict(x, label="normal") if x["split"] == "val" else x for x in rows], 1.0)


def test_operating_point_targets_enter_benchmarks(tmp_path):
    results, rows = _pack()
    out = OP.analyse(results, rows, 1.0)
    out["command"] = "python tools/operating_point.py ..."
    targets = {t["target"].split(": ", 1)[1]: t for t in MB.operating_point_targets(out)}
    assert targets["sensitivity >= 0.9 on b COVID films".replace("b", "hannover")]["status"] == "not measured"
    spec = targets["specificity >= 0.8 on NIH adult normals"]
    assert spec["variant"] == "base" and spec["command"] == "python tools/operating_point.py ..."
    (tmp_path / "op").mkdir()
    (tmp_path / "op" / "results.json").write_text(json.dumps(out))
    (tmp_path / "op" / "report.md").write_text("# x\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "other" / "report.md").write_text("# y\n")
    found = MB.operating_points([str(tmp_path / "op" / "report.md"), str(tmp_path / "other" / "report.md")])
    assert len(found) == 1 and found[0]["schema"] == OP.SCHEMA
