"""The X-ray classifier at a screening operating point: the threshold that keeps COVID sensitivity >= a floor in
*each* COVID source of the validation split, and what it gives on the test split.

``lungedge bench`` fits each row's threshold on the validation split by Youden's rule (sensitivity +
specificity). Issue 9's target asks for specificity on adult normals *at* sensitivity >= 0.90 on COVID films
from both COVID sources, which is a different point on the ROC curve. This reads a bench's ``results.json``
(per-image validation and test probabilities) and the dev pack's manifest (sources, patients), fits the
screening threshold on validation only, and reports test sensitivity per COVID source and specificity on
each source's normals, with patient-bootstrap 95% intervals.

    python tools/operating_point.py --results docs/benchmarks/xray-cls/results.json \\
        --data ../shared/data/xray-cls --min-sensitivity 0.90 --markdown docs/benchmarks/operating-point/report.md
"""

import argparse
import csv
import json
import os

import numpy as np

from lungedge.metrics.bootstrap import bootstrap_ci
from lungedge.metrics.errors import UndefinedMetricError

SCHEMA = "lungedge.operating_point/1"


def screening_threshold(val_probs, val_positive, val_sources, positive_sources, floor):
    """The highest threshold at which every source in ``positive_sources`` keeps validation sensitivity >= floor."""
    for t in np.sort(np.unique(val_probs))[::-1]:
        if all((val_probs[(val_sources == s) & val_positive] >= t).mean() >= floor for s in positive_sources):
            return float(t)
    raise ValueError("no threshold reaches the sensitivity floor in every source")


def _ci(fn, y, s, groups):
    try:
        r = bootstrap_ci(fn, y, s, groups=groups, n_boot=2000, seed=0)
    except UndefinedMetricError:
        return None
    return [round(r["value"], 3), round(r["low"], 3), round(r["high"], 3)]


def rate(calls, groups):
    """(value, low, high) of the mean of 0/1 calls with whole patients resampled."""
    calls = np.asarray(calls, np.float64)
    return _ci(lambda y, s: float(np.mean(s)), np.zeros(len(calls)), calls, groups)


def analyse(results, manifest_rows, floor, rows=None):
    pi = results["per_image"]
    positive = results["positive_label"]
    val = [r for r in manifest_rows if r["split"] == "val" and r["label"] in results["labels"]]
    if [r["label"] for r in val] != pi["val_labels"]:
        raise ValueError("the manifest's validation rows do not match the bench's validation labels")
    test = {os.path.basename(r["file"]): r for r in manifest_rows if r["split"] == "test"}
    vsrc = np.array([r["source"] for r in val])
    vpos = np.array([r["label"] == positive for r in val])
    tsrc = np.array([test[f]["source"] for f in pi["files"]])
    tpos = np.array([lab == positive for lab in pi["labels"]])
    tneg_normal = np.array([test[f]["label"] == "normal" for f in pi["files"]])
    tpid = np.array([test[f]["patient_id"] for f in pi["files"]])
    pos_sources = sorted(set(vsrc[vpos]))
    normal_sources = sorted(set(tsrc[tneg_normal]))
    col = results["labels"].index(positive)
    out = {"schema": SCHEMA, "min_sensitivity": floor, "positive_sources": pos_sources, "normal_sources": normal_sources, "rows": []}
    for row in results["rows"]:
        if rows and row["name"] not in rows:
            continue
        vp = np.asarray(row["per_image_val_probabilities"])[:, col]
        tp = np.asarray(row["per_image_probabilities"])[:, col]
        t = screening_threshold(vp, vpos, vsrc, pos_sources, floor)
        entry = {"name": row["name"], "threshold": round(t, 5), "sensitivity": {}, "specificity_normals": {},
                 "val_sensitivity": {s: round(float((vp[(vsrc == s) & vpos] >= t).mean()), 3) for s in pos_sources}}
        for s in pos_sources:
            m = (tsrc == s) & tpos
            entry["sensitivity"][s] = rate(tp[m] >= t, tpid[m]) + [int(m.sum())]
        for s in normal_sources:
            m = (tsrc == s) & tneg_normal
            entry["specificity_normals"][s] = rate(tp[m] < t, tpid[m]) + [int(m.sum())]
        out["rows"].append(entry)
    return out


def markdown(result, command):
    def cell(v):
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] (n={v[3]})"

    pos, neg = result["positive_sources"], result["normal_sources"]
    head = (["row", "threshold"] + [f"COVID sensitivity {s}" for s in pos] + [f"specificity, {s} normals" for s in neg])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        lines.append("| " + " | ".join([r["name"], f"{r['threshold']:.4f}"]
                                       + [cell(r["sensitivity"][s]) for s in pos]
                                       + [cell(r["specificity_normals"][s]) for s in neg]) + " |")
    floor = result["min_sensitivity"]
    return "\n".join([
        "# X-ray classifier at a screening operating point", "",
        f"Threshold fitted on the **validation** split: the highest one at which COVID sensitivity stays >= "
        f"{floor:.2f} in every COVID source ({', '.join(pos)}); the test split is then scored at it. Intervals: "
        "95% patient bootstrap (2,000 draws). The bench's own tables use Youden's threshold instead.", "",
        "Reproduce with:", "", "```", command, "```", ""] + lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", required=True, help="a lungedge bench results.json (classification)")
    p.add_argument("--data", required=True, help="the dev-pack folder the bench read (manifest.csv)")
    p.add_argument("--min-sensitivity", type=float, default=0.90)
    p.add_argument("--rows", nargs="*", help="bench rows to report (default: all)")
    p.add_argument("--markdown", help="write the table here (and results JSON beside it)")
    a = p.parse_args(argv)
    with open(a.results, encoding="utf-8") as fh:
        results = json.load(fh)
    with open(os.path.join(a.data, "manifest.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    result = analyse(results, rows, a.min_sensitivity, a.rows)
    command = (f"python tools/operating_point.py --results {a.results} --data {a.data} "
               f"--min-sensitivity {a.min_sensitivity:.2f}" + (" --rows " + " ".join(a.rows) if a.rows else "")
               + (f" --markdown {a.markdown}" if a.markdown else ""))
    result["command"] = command
    if a.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(a.markdown)), exist_ok=True)
        with open(a.markdown, "w", encoding="utf-8") as fh:
            fh.write(markdown(result, command))
        with open(os.path.join(os.path.dirname(os.path.abspath(a.markdown)), "results.json"), "w",
                  encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
