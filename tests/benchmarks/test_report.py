"""Report generation: JSON round trip (non-finite values included), Markdown from JSON alone, plots, BENCHMARKS.md."""

import copy
import json
import math
import os

from lungedge.benchmarks import make_benchmarks_md as MB
from lungedge.benchmarks import plots as P
from lungedge.benchmarks import report as R


def test_json_round_trip_keeps_every_number(cls_results, tmp_path):
    results, _ = cls_results
    results = copy.deepcopy(results)
    results["rows"][1]["extra"] = {"rvd": math.inf, "neg": -math.inf, "nan": math.nan}
    path = R.save_results(results, str(tmp_path / "r.json"))
    text = open(path, encoding="utf-8").read()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    back = R.load_results(path)
    assert back["rows"][1]["extra"]["rvd"] == math.inf and back["rows"][1]["extra"]["neg"] == -math.inf
    assert math.isnan(back["rows"][1]["extra"]["nan"])
    del back["rows"][1]["extra"], results["rows"][1]["extra"]
    assert back == json.loads(json.dumps(R.to_jsonable(results)))
    assert back["rows"][0]["latency"]["raw_seconds"]["batch1_total"] == results["rows"][0]["latency"]["raw_seconds"][
        "batch1_total"]


def test_markdown_is_rendered_from_json_alone(cls_results):
    results, out = cls_results
    from_json = R.render_markdown(R.load_results(out), figures_dir=out)
    assert from_json == open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for section in ("## Summary", "## Accuracy", "Per class", "## Deltas vs the reference", "## Fidelity",
                    "## Latency", "## Size, compute, memory", "## Environment", "![ROC curves"):
        assert section in from_json, section
    assert "## Jetson power" not in from_json  # no tegrastats here


def test_terminal_table_fits_one_screen(cls_results, seg_results):
    for results, _ in (cls_results, seg_results):
        text = R.terminal_table(results)
        lines = text.splitlines()
        assert len(lines) <= 3 + len(results["rows"]) + 1
        assert all(row["name"] in text for row in results["rows"])
    assert "dDICE" in R.terminal_table(seg_results[0])


def test_plots_are_written_from_json(cls_results, seg_results, tmp_path):
    cls = R.load_results(cls_results[1])
    seg = R.load_results(seg_results[1])
    written = P.plot_all(cls, str(tmp_path)) + [P.dice_distribution(seg, str(tmp_path / "d.png"))]
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["d.png", "pareto.png", "reliability.png", "roc.png"]  # no subgroups asked: no bars
    assert all(os.path.getsize(p) > 2000 for p in written)


def test_drop_status_uses_the_interval_bound():
    assert MB._status_drop({"delta": -0.002, "low": -0.008, "high": 0.004}, 0.01) == "met"
    assert MB._status_drop({"delta": -0.002, "low": -0.03, "high": 0.02}, 0.01) == "unproven"
    assert MB._status_drop({"delta": -0.02, "low": -0.05, "high": 0.0}, 0.01) == "missed"
    assert MB._status_drop({"error": "undefined"}, 0.01) == "not measured"


def _with(results, **changes):
    """A copy of ``results`` whose INT8 row carries the given (made-up) figures, to drive the target logic."""
    res = copy.deepcopy(results)
    row = next(r for r in res["rows"] if r["info"]["precision"] == "int8")
    row["speedup"]["batch1"].update(ratio=changes["speedup"], low=changes["speedup"] * 0.9,
                                    high=changes["speedup"] * 1.1)
    row["size_ratio"] = changes["smaller"]
    row["deltas"]["auc"].update(delta=-0.004, low=changes["auc_low"], high=0.002)
    row["deltas"]["sensitivity"].update(delta=0.0, low=-0.01, high=0.01)
    row["latency"]["pre_post_share_of_model"] = changes["share"]
    row["memory"]["peak_rss_mb"] = changes["rss"]
    res["rows"][0]["info"]["arch"] = "densenet121"
    return res


def test_xray_targets(cls_results):
    results, _ = cls_results
    good = MB.xray_targets(_with(results, speedup=25.0, smaller=9.0, auc_low=-0.008, share=0.1, rss=250.0))
    assert [t["status"] for t in good] == ["met"] * 6
    assert all(t["command"] == results["command"] for t in good)
    bad = MB.xray_targets(_with(results, speedup=12.0, smaller=3.7, auc_low=-0.03, share=0.4, rss=320.0))
    assert [t["status"] for t in bad] == ["missed", "missed", "unproven", "met", "missed", "missed"]
    assert [t["status"] for t in MB.xray_targets(None)] == ["not measured"] * 6


def test_benchmarks_md(cls_results, seg_results, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    assert MB.main([cls_results[1], seg_results[1], "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# lungedge benchmarks")
    assert "## Targets" in text and "## X-ray classification:" in text and "## X-ray lung segmentation:" in text
    assert "## CT classification\n\nNot measured yet." in text
    assert cls_results[0]["command"] in text and seg_results[0]["command"] in text
    assert "300-slice CT study < 6 s | – | – | **not measured** | – |" in text
    assert f"1. `{cls_results[0]['command']}`" in text
    rel = os.path.relpath(cls_results[1], str(tmp_path))
    assert f"]({rel}/roc.png)" in text
    statuses = {line.split("|")[-3].strip() for line in text.splitlines() if line.startswith("| X-ray")}
    assert statuses <= {"**met**", "**missed**", "**unproven**", "**not measured**"}


def test_plain_verdicts_say_what_failed_and_by_how_much():
    from lungedge.benchmarks.report import plain_verdicts

    results = {"data": {"n_images": 30}, "rows": [
        {"name": "ref"},
        {"name": "ok", "verdict": "PASS", "deltas": {}},
        {"name": "unproven", "verdict": "FAIL", "deltas": {
            "auc": {"delta": -0.004, "low": -0.06, "high": 0.03, "tolerance": 0.01, "verdict": "FAIL"},
            "sensitivity": {"delta": 0.0, "low": -0.01, "high": 0.0, "tolerance": 0.02, "verdict": "PASS"}}},
        {"name": "worse", "verdict": "FAIL", "deltas": {
            "auc": {"delta": -0.05, "low": -0.09, "high": -0.02, "tolerance": 0.01, "verdict": "FAIL"}}}]}
    lines = plain_verdicts(results)
    assert lines[0].startswith("ok passed")
    assert "unproven FAILED" in lines[1] and "auc changed by -0.004" in lines[1] and "30 test images cannot show it" in lines[1]
    assert "sensitivity" not in lines[1]
    assert "worse FAILED" in lines[2] and "the compressed model is worse" in lines[2] and "Do not deploy" in lines[2]


def test_included_reports_are_demoted_and_relinked(tmp_path):
    folder = tmp_path / "docs" / "qc"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# QC\n\ntext ![plot](plot.png) [web](https://x.org/a)\n\n```\n# not a heading\n```\n"
                                      "### Sub\n", encoding="utf-8")
    text = MB.demote_headings(str(folder / "report.md"))
    lines = text.splitlines()
    assert lines[0] == "## QC" and "#### Sub" in lines and "# not a heading" in lines
    assert f"![plot]({folder / 'plot.png'})" in text and "(https://x.org/a)" in text
