"""Render BENCHMARKS.md from benchmark results (never edited by hand): the targets, met or missed, then each task.

    python benchmarks/make_benchmarks_md.py reports/xray-cls reports/ct-cls reports/xray-seg reports/ct-seg \\
        reports/ct-scaling -o BENCHMARKS.md
    lungedge bench report RESULTS_DIR ... -o BENCHMARKS.md

Each RESULTS_DIR holds the ``results.json`` of ``lungedge bench`` (or of ``lungedge bench scaling``). Targets are
judged on what those files hold; a target whose run is missing reads "not measured". Accuracy targets are
"met" only when the 95 % CI bound of the drop is within the tolerance; when only the point estimate is, they are
"unproven" (too few test images to show it).
"""

import argparse
import datetime
import os
import sys

from lungedge.benchmarks import report as R
from lungedge.benchmarks import scaling as SC
from lungedge.runtime.enums import Precision

XRAY_SPEEDUP, XRAY_SMALLER, XRAY_AUC_DROP, XRAY_SENS_DROP = 20.0, 8.0, 0.01, 0.02
SEG_SPEEDUP, SEG_DICE_DROP = 8.0, 0.01
PRE_POST_SHARE = 0.15
RSS_MB = 300.0
TASK_TITLES = {("xray", "classification"): "X-ray classification", ("ct", "classification"): "CT classification",
               ("xray", "segmentation"): "X-ray lung segmentation", ("ct", "segmentation"): "CT lesion segmentation"}
ORDER = [("xray", "classification"), ("ct", "classification"), ("xray", "segmentation"), ("ct", "segmentation")]


def _status_at_least(value, limit):
    if value is None:
        return "not measured"
    return "met" if value >= limit else "missed"


def _status_below(value, limit):
    if value is None:
        return "not measured"
    return "met" if value < limit else "missed"


def _status_drop(delta, tolerance):
    """met: CI lower bound within the tolerance; unproven: only the point estimate is; missed: not even that."""
    if not delta or "error" in delta:
        return "not measured"
    if delta["low"] >= -tolerance:
        return "met"
    return "unproven" if delta["delta"] >= -tolerance else "missed"


def _reference_note(results, arch, title):
    """"" when the reference row is the torch FP32 ``arch`` baseline the target is stated against, else a note."""
    ref = results["rows"][0]
    if ref["info"].get("arch") == arch and ref["info"]["backend"] == "torch":
        return ""
    return f" (reference is {ref['name']}, not the {title} torch FP32 baseline)"


def _noisy(results):
    return " (noisy timing run)" if results.get("noisy") else ""


SCORE = {"met": 3, "unproven": 2, "not measured": 1, "missed": 0}


def _pick(rows, checks):
    """The candidate row that meets the most of ``checks`` (then the fastest)."""
    def key(row):
        statuses = [check(row)[1] for check in checks]
        return (sum(SCORE[s] for s in statuses), (row.get("speedup") or {}).get("batch1", {}).get("ratio") or 0)
    return max(rows, key=key) if rows else None


def _target(name, measured, status, results, row=None):
    return {"target": name, "measured": measured, "status": status,
            "variant": row["name"] if row else None, "command": results["command"] if results else None}


def xray_targets(results):
    """The X-ray INT8 classifier targets (speed, size, AUC, sensitivity, pre/post share, peak RSS)."""
    names = ["X-ray INT8 classifier: >= 20x lower batch-1 latency than DenseNet-121 torch FP32",
             "X-ray INT8 classifier: >= 8x smaller than DenseNet-121 torch FP32",
             "X-ray INT8 classifier: AUC drop <= 0.01", "X-ray INT8 classifier: sensitivity drop <= 0.02",
             "Runtime pre+post-processing <= 15 % of model time (compressed X-ray classifier, batch 1)",
             "Peak RSS of an inference process with the compressed X-ray bundle < 300 MB"]
    if results is None:
        return [_target(n, "–", "not measured", None) for n in names]
    ref_note = _reference_note(results, "densenet121", "DenseNet-121")

    def speed(row):
        sp = row["speedup"]["batch1"]
        return f"{R.fmt_ratio(sp)}{_noisy(results)}{ref_note}", _status_at_least(sp["ratio"], XRAY_SPEEDUP)

    def size(row):
        return f"{R.fmt(row['size_ratio'], 1)}x ({R.fmt_mb(row['info']['bytes'])} MB){ref_note}", \
            _status_at_least(row["size_ratio"], XRAY_SMALLER)

    def auc(row):
        d = (row.get("deltas") or {}).get("auc")
        return f"dAUC {R.fmt_ci(d)}", _status_drop(d, XRAY_AUC_DROP)

    def sens(row):
        d = (row.get("deltas") or {}).get("sensitivity")
        return f"dSens {R.fmt_ci(d)}", _status_drop(d, XRAY_SENS_DROP)

    def share(row):
        v = row["latency"].get("pre_post_share_of_model")
        st = row["latency"]["stages"]
        return (f"{R.fmt(100 * v if v is not None else None, 1)} % (pre {R.fmt(st['preprocess']['p50_ms'], 2)} + post "
                f"{R.fmt(st['postprocess']['p50_ms'], 2)} ms vs model {R.fmt(st['model']['p50_ms'], 2)} ms)"
                f"{_noisy(results)}", _status_below(v, PRE_POST_SHARE + 1e-12))

    def rss(row):
        mb = (row.get("memory") or {}).get("peak_rss_mb")
        return f"{R.fmt(mb, 0)} MB", _status_below(mb, RSS_MB)

    checks = [speed, size, auc, sens, share, rss]
    candidates = [r for r in results["rows"] if r["role"] == "variant" and r["info"]["precision"] == Precision.INT8]
    row = _pick(candidates, checks[:4])
    if row is None:
        return [_target(n, "no INT8 variant in the run", "not measured", results) for n in names]
    return [_target(n, *check(row), results, row) for n, check in zip(names, checks)]


BASE_AUC, NIH_SPEC, COVID_SENS, SUBGROUP_DROP = 0.95, 0.80, 0.90, 0.05


def _status_at_least_ci(m, limit):
    """met: the CI lower bound reaches the limit; unproven: only the point estimate does; missed otherwise."""
    if not m or "error" in m:
        return "not measured"
    if m["low"] >= limit:
        return "met"
    return "unproven" if m["value"] >= limit else "missed"


def _ci(m, digits=3):
    if not m or "error" in m:
        return "–"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def _subgroup_entry(results, column, value):
    for e in ((results.get("subgroups") or {}).get("tables") or {}).get(column, []):
        if e["value"] == value:
            return e
    return None


def clinical_targets(results):
    """Issue 9's clinical-validity targets: the baseline's AUC, adult-normal specificity at COVID sensitivity on
    both COVID sources, and no subgroup sensitivity/specificity drop over 0.05 for the INT8 classifier."""
    names = [f"X-ray baseline: AUC (COVID vs rest) >= {BASE_AUC}",
             f"X-ray baseline at Youden's threshold: specificity >= {NIH_SPEC} on NIH adult normals",
             f"X-ray baseline at Youden's threshold: sensitivity >= {COVID_SENS} on ieee8023 COVID films",
             f"X-ray baseline at Youden's threshold: sensitivity >= {COVID_SENS} on hannover COVID films",
             f"X-ray INT8 classifier: no subgroup sensitivity or specificity drop > {SUBGROUP_DROP}"]
    if results is None:
        return [_target(n, "–", "not measured", None) for n in names]
    ref = results["rows"][0]
    out = [_target(names[0], f"AUC {_ci((ref['accuracy'].get('test_ci') or {}).get('auc'))}",
                   _status_at_least_ci((ref["accuracy"].get("test_ci") or {}).get("auc"), BASE_AUC), results, ref)]
    for name, value, metric, limit in ((names[1], "nih-chestxray14/normal", "specificity", NIH_SPEC),
                                       (names[2], "ieee8023/covid", "sensitivity", COVID_SENS),
                                       (names[3], "hannover/covid", "sensitivity", COVID_SENS)):
        e = _subgroup_entry(results, "source+label", value)
        if e is None:
            out.append(_target(name, "needs --subgroups source+label", "not measured", results, ref))
            continue
        m = e["rows"][ref["name"]][metric]
        out.append(_target(name, f"{metric} {_ci(m)} (n={e['n']})", _status_at_least_ci(m, limit), results, ref))
    sub = results.get("subgroups")
    candidates = [r for r in results["rows"] if r["role"] == "variant" and r["info"]["precision"] == Precision.INT8]
    if not sub or not candidates:
        out.append(_target(names[4], "needs --subgroups and an INT8 variant", "not measured", results))
        return out
    row = candidates[0]
    worst, where = None, None
    for column in sub["columns"]:
        for e in sub["tables"][column]:
            d = e["deltas"].get(row["name"]) or {}
            for metric in ("sensitivity", "specificity"):
                if d.get(metric) and (worst is None or d[metric]["delta"] < worst):
                    worst, where = d[metric]["delta"], f"{metric} in {column}={e['value']} (n={e['n']})"
    status = "not measured" if worst is None else ("met" if worst >= -SUBGROUP_DROP else "missed")
    out.append(_target(names[4], f"largest drop {worst:+.3f}: {where}" if worst is not None else "–", status,
                       results, row))
    return out


OPERATING_POINT_SCHEMA = "lungedge.operating_point/1"  # tools/operating_point.py


def operating_point_targets(op):
    """Issue 9's joint target at the screening threshold of ``tools/operating_point.py`` (fitted on validation
    so that COVID sensitivity >= its floor in every COVID source): test sensitivity per COVID source and
    specificity on NIH adult normals, for the baseline (the first row)."""
    ref = op["rows"][0]
    where = f"at the screening threshold (validation COVID sensitivity >= {op['min_sensitivity']:.2f} per source)"
    results = {"command": op.get("command")}
    row = {"name": ref["name"]}
    out = []
    checks = [(f"specificity >= {NIH_SPEC} on NIH adult normals", ref["specificity_normals"].get("nih-chestxray14"),
               NIH_SPEC, "specificity")]
    checks += [(f"sensitivity >= {COVID_SENS} on {s} COVID films", ref["sensitivity"].get(s), COVID_SENS, "sensitivity")
               for s in ("ieee8023", "hannover")]
    for name, v, limit, metric in checks:
        m = None if v is None else {"value": v[0], "low": v[1], "high": v[2]}
        measured = "–" if m is None else f"{metric} {_ci(m)} (n={v[3]})"
        out.append(_target(f"X-ray baseline {where}: {name}", measured, _status_at_least_ci(m, limit), results, row))
    return out


def operating_points(includes):
    """The operating-point results (``results.json`` beside an included report, by its schema)."""
    import json

    out = []
    for path in includes:
        candidate = os.path.join(os.path.dirname(path), "results.json")
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and data.get("schema") == OPERATING_POINT_SCHEMA:
                out.append(data)
    return out


def seg_targets(results, title):
    names = [f"{title}: >= 8x lower batch-1 latency than the full U-Net FP32",
             f"{title}: DICE drop <= 0.01"]
    if results is None:
        return [_target(n, "–", "not measured", None) for n in names]
    ref_note = _reference_note(results, "unet", "U-Net")

    def speed(row):
        sp = row["speedup"]["batch1"]
        return f"{R.fmt_ratio(sp)}{_noisy(results)}{ref_note}", _status_at_least(sp["ratio"], SEG_SPEEDUP)

    def dice(row):
        d = (row.get("deltas") or {}).get("dice")
        return f"dDICE {R.fmt_ci(d)}", _status_drop(d, SEG_DICE_DROP)

    row = _pick([r for r in results["rows"] if r["role"] == "variant"], [speed, dice])
    if row is None:
        return [_target(n, "no variant in the run", "not measured", results) for n in names]
    return [_target(names[0], *speed(row), results, row), _target(names[1], *dice(row), results, row)]


def scaling_target(results):
    name = f"300-slice CT study < {(results or {}).get('target_s', SC.TARGET_S):g} s"
    if results is None:
        return _target(name, "–", "not measured", None)
    lat = results.get("target_latency_s")
    status = {True: "met", False: "missed", None: "not measured"}[results.get("meets_target")]
    per = results["fit"].get("per_slice_s")
    measured = (f"{R.fmt(lat, 2)} s (fit {R.fmt(results['fit'].get('intercept_s'), 2)} s + "
                f"{R.fmt(per * 1000 if per else None, 1)} ms/slice)") if lat is not None else "–"
    return _target(name, measured, status, results)


def rss_flat_target(results):
    """Peak RSS of the CT study flat in the study size (only for runs that measured it)."""
    flat = (results or {}).get("rss_flatness") or {}
    name = f"CT study peak RSS flat within {100 * flat.get('tolerance', SC.RSS_FLAT_TOLERANCE):.0f} % from 10 to 300 slices"
    if flat.get("flat") is None:
        return _target(name, "–", "not measured", results)
    measured = (f"{R.fmt(flat['reference_mb'], 0)} MB at {flat['reference_slices']} slices, max "
                f"{100 * flat['max_growth']:+.1f} % ({results.get('source', 'png')} source)")
    return _target(name, measured, "met" if flat["flat"] else "missed", results)


def classify(results_list):
    """{(modality, task): results} for bench runs (the last one wins) and the scaling run."""
    by_task, scaling = {}, None
    for res in results_list:
        if res.get("kind") == "scaling":
            scaling = res
        else:
            by_task[(res["modality"], res["task"])] = res
    return by_task, scaling


def targets(results_list):
    by_task, scaling = classify(results_list)
    out = clinical_targets(by_task.get(("xray", "classification")))
    out += xray_targets(by_task.get(("xray", "classification")))
    out += seg_targets(by_task.get(("xray", "segmentation")), "X-ray lung segmenter")
    out += seg_targets(by_task.get(("ct", "segmentation")), "CT lesion segmenter")
    out.append(scaling_target(scaling))
    if scaling is not None and scaling.get("rss_flatness"):
        out.append(rss_flat_target(scaling))
    return out


def train_command(cfg):
    """The ``lungedge train`` command line that reproduces a run's config.json."""
    c = cfg["config"]
    return (f"lungedge train --task {c['task']} --data {c['data']} --arch {c['arch']} --size {c['size']} "
            f"--epochs {c['epochs']} --patience {c['patience']} --batch-size {c['batch_size']} --lr {c['lr']} "
            f"--seed {c['seed']}" + ("" if c.get("augment", True) else " --no-augment")
            + (f" --augment-level {c['augment_level']}" if c.get("augment_level", "standard") != "standard" else "")
            + (f" --balance {c['balance']}" if c.get("balance") else "")
            + (f" --lung-bundle {c['lung_bundle']} --lung-margin {c.get('lung_margin', 0.05)}"
               if c.get("lung_bundle") else ""))


def baselines_section(run_dirs):
    """Markdown table of the trained baselines: validation and test metrics, epochs, time, command."""
    import json

    rows, cmds = [], []
    for d in run_dirs:
        with open(os.path.join(d, "config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
        with open(os.path.join(d, "metrics.json"), encoding="utf-8") as fh:
            m = json.load(fh)
        with open(os.path.join(d, "history.jsonl"), encoding="utf-8") as fh:
            hist = [json.loads(line) for line in fh if line.strip()]
        c = cfg["config"]
        v, t = m["val"], m["test"]
        if "auc" in t:
            val = f"AUC {v['auc']:.3f}" + (f" (macro {v['macro_auc']:.3f})" if "macro_auc" in v else "")
            test = (f"AUC {t['auc']:.3f}" + (f" (macro {t['macro_auc']:.3f})" if "macro_auc" in t else "")
                    + f", sens {t['sensitivity']:.3f}, spec {t['specificity']:.3f}, F1 {t['f1']:.3f}, F2 {t['f2']:.3f}"
                    + f" @ val threshold {t['threshold']:.3f}")
        else:
            val, test = f"DICE {v['dice']:.3f}", f"DICE {t['dice']:.3f} ± {t['dice_std']:.3f}"
        cmds.append(train_command(cfg))
        rows.append([c["task"], c["arch"], f"{c['size']} px", str(len(hist)),
                     f"{sum(h['seconds'] for h in hist) / 60:.0f} min", val, f"{test} (n={m['n_test']})",
                     f"[t{len(cmds)}]"])
    parts = ["## Trained baselines", "",
             "Full baselines trained from scratch by `lungedge train` on the dev pack's train split (CPU, 2 cores, "
             "reduced resolution; early stopping on validation AUC or DICE). The positive class for AUC, "
             "sensitivity and specificity is COVID-19; thresholds are fitted on validation (Youden) and applied "
             "to test. Training times were measured while other jobs shared the CPU.", "",
             R.md_table(["task", "architecture", "input", "epochs", "train time", "validation", "test", "command"],
                        rows), ""]
    parts += [f"- t{i}: `{c}`" for i, c in enumerate(cmds, 1)] + [""]
    return parts


def demote_headings(path):
    """A Markdown file's text with every heading one level under ``##`` sections (``#`` becomes ``##``), and
    relative links and images re-rooted at the repository (the file's folder is taken as relative to it)."""
    folder = os.path.dirname(path)
    out = []
    in_code = False
    with open(path, encoding="utf-8") as fh:
        for line in fh.read().rstrip().splitlines():
            if line.startswith("```"):
                in_code = not in_code
            if not in_code and line.startswith("#"):
                level = len(line) - len(line.lstrip("#"))
                line = "#" * max(2, level + 1) + line[level:]
            elif not in_code and "](" in line and folder:
                line = _reroot_links(line, folder)
            out.append(line)
    return "\n".join(out)


def _reroot_links(line, folder):
    import re

    def fix(m):
        target = m.group(2)
        if "://" in target or target.startswith(("/", "#")):
            return m.group(0)
        return f"{m.group(1)}({os.path.normpath(os.path.join(folder, target))})"
    return re.sub(r"(\[[^\]]*\])\(([^)]+)\)", fix, line)


def render(results_dirs, out_path, run_dirs=(), includes=()):
    """BENCHMARKS.md text from the results folders (figure links relative to ``out_path``'s folder)."""
    loaded = [(d, R.load_results(d)) for d in results_dirs]
    by_task, scaling = classify([r for _, r in loaded])
    where = {id(r): d for d, r in loaded}
    base = os.path.dirname(os.path.abspath(out_path))
    cmd = ("python benchmarks/make_benchmarks_md.py " + " ".join(results_dirs) + f" -o {out_path}"
           + (" --runs " + " ".join(run_dirs) if run_dirs else "")
           + (" --include " + " ".join(includes) if includes else ""))
    parts = ["# lungedge benchmarks", "",
             f"Generated from the results of the runs below by `{cmd}` "
             f"({datetime.date.today().isoformat()}); do not edit by hand: rerun the commands and regenerate.", "",
             "Accuracy targets are judged on the 95 % patient-level bootstrap interval of the drop: **met** when its "
             "bound is within the tolerance, **unproven** when only the point estimate is, **missed** otherwise.", "",
             "## Targets", ""]
    judged = targets([r for _, r in loaded])
    ops = operating_points(includes)
    if ops:
        at = next(i for i, t in enumerate(judged) if t["target"].startswith("X-ray baseline at Youden's threshold: sensitivity")) + 2
        judged[at:at] = [t for op in ops for t in operating_point_targets(op)]
    commands = []
    for t in judged:
        if t["command"] and t["command"] not in commands:
            commands.append(t["command"])
    rows = [[t["target"], t["variant"] or "–", t["measured"], f"**{t['status']}**",
             f"[{commands.index(t['command']) + 1}]" if t["command"] else "–"] for t in judged]
    parts += [R.md_table(["target", "variant judged", "measured", "status", "run"], rows), "", "Runs:", ""]
    parts += [f"{i}. `{c}`" for i, c in enumerate(commands, 1)] + [""]
    if run_dirs:
        parts += baselines_section(run_dirs)
    for key in ORDER:
        res = by_task.get(key)
        if res is None:
            parts += [f"## {TASK_TITLES[key]}", "", "Not measured yet.", ""]
            continue
        rel = os.path.relpath(os.path.abspath(where[id(res)]), base)
        body = R.render_markdown(res, figures_dir=where[id(res)], heading_level=2, figure_prefix=rel + "/")
        body = body.replace(f"## {res['task'].capitalize()} benchmark:", f"## {TASK_TITLES[key]}:", 1)
        parts += [body, ""]
    if scaling is not None:
        rel = os.path.relpath(os.path.abspath(where[id(scaling)]), base)
        parts += [SC.render_markdown(scaling, heading_level=2), f"![CT study scaling]({rel}/scaling.png)", ""]
    for path in includes:
        parts += [demote_headings(path), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Render BENCHMARKS.md from lungedge bench results.")
    p.add_argument("results", nargs="+", help="folders holding results.json (bench or bench scaling)")
    p.add_argument("-o", "--out", default="BENCHMARKS.md")
    p.add_argument("--runs", nargs="*", default=[], help="baseline run folders (config.json, metrics.json)")
    p.add_argument("--include", nargs="*", default=[], help="Markdown files appended as they are (generated "
                   "reports of other commands, e.g. the shortcut screen's), each under its own first heading")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    text = render(a.results, a.out, a.runs, a.include)
    with open(a.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
