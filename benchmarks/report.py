# Over 400 lines on purpose: every section of the bench report (JSON, Markdown, terminal table) reads one results dict.
"""Benchmark results as files: JSON (every raw number), a Markdown report, a one-screen terminal table, plots.

Markdown is always rendered from the results dict (or the JSON it was saved as), never edited by hand, so a
report can be regenerated from ``results.json`` alone: ``render_markdown(load_results(path))``. JSON is strict:
infinities (an RVD with an empty ground truth) and NaN are written as the strings "inf", "-inf", "nan" and
read back as floats by ``load_results``.
"""

import json
import math
import os

from lungedge.runtime.enums import TaskKind
from lungedge.runtime.jsonable import NonFinite, from_jsonable
from lungedge.runtime.jsonable import to_jsonable as _to_jsonable

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"


# ----------------------------------------------------------------------------------------------- JSON


def to_jsonable(obj):
    """Plain JSON types: numpy scalars and arrays converted, non-finite floats as strings (read back by
    ``from_jsonable``)."""
    return _to_jsonable(obj, NonFinite.STRING)


def save_results(results, path):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(results), fh, indent=1, sort_keys=False, allow_nan=False)
        fh.write("\n")
    return path


def load_results(path):
    """Results dict from a results.json file or a folder holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_JSON)
    with open(path, encoding="utf-8") as fh:
        return from_jsonable(json.load(fh))


# ----------------------------------------------------------------------------------------------- formatting


def fmt(value, digits=3, none="–"):
    if value is None:
        return none
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def fmt_ci(d, digits=3, signed=True):
    """``+0.012 [-0.004, +0.030]`` from a bootstrap dict (or its error)."""
    if not d:
        return "–"
    if "error" in d:
        return "undefined"
    sign = "+" if signed else ""
    return f"{d['delta']:{sign}.{digits}f} [{d['low']:{sign}.{digits}f}, {d['high']:{sign}.{digits}f}]"


def fmt_ratio(r, digits=1):
    if not r:
        return "–"
    return f"{r['ratio']:.{digits}f}x [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"


def fmt_mb(nbytes):
    return fmt(nbytes / 1e6, 2) if nbytes is not None else "–"


def fmt_millions(n):
    return fmt(n / 1e6, 1) if n is not None else "–"


def _precision(row):
    return f"{row['info']['precision']}/{row['info']['backend']}"


def _headline_accuracy(results, row):
    """(label, value) pairs of the task's headline metrics for one row."""
    acc = row.get("accuracy") or {}
    if results["task"] == TaskKind.CLASSIFICATION:
        test = acc.get("test") or {}
        return [("AUC", fmt(test.get("auc"))), ("Sens", fmt(test.get("sensitivity"))),
                ("Spec", fmt(test.get("specificity")))]
    s = acc.get("summary") or {}
    return [("DICE", fmt((s.get("dice") or {}).get("mean"))),
            (f"ASD {acc.get('distance_unit', '')}".strip(), fmt((s.get("asd") or {}).get("mean"), 2))]


def _headline_delta(results, row):
    deltas = row.get("deltas") or {}
    key = "auc" if results["task"] == TaskKind.CLASSIFICATION else "dice"
    return fmt_ci(deltas.get(key)) if deltas else "(reference)"


def summary_rows(results):
    """The one-screen table as a header and rows of strings (shared by terminal and Markdown)."""
    metric_names = [name for name, _ in _headline_accuracy(results, results["rows"][0])]
    delta_name = "dAUC [95% CI]" if results["task"] == TaskKind.CLASSIFICATION else "dDICE [95% CI]"
    header = (["variant", "precision", "MB", "MMACs", "b1 p50 ms", "speedup b1", "bN img/s", "RSS MB"]
              + metric_names + [delta_name, "verdict"])
    rows = []
    for row in results["rows"]:
        lat = row.get("latency") or {}
        mem = row.get("memory") or {}
        rows.append([row["name"], _precision(row), fmt_mb(row["info"]["bytes"]),
                     fmt_millions((row.get("complexity") or {}).get("macs")),
                     fmt((lat.get("batch1") or {}).get("p50_ms"), 2),
                     fmt_ratio((row.get("speedup") or {}).get("batch1")) if row["role"] != "reference" else "1x",
                     fmt((lat.get("batchN") or {}).get("throughput_ips"), 1), fmt(mem.get("peak_rss_mb"), 0)]
                    + [v for _, v in _headline_accuracy(results, row)]
                    + [_headline_delta(results, row), row.get("verdict") or "–"])
    return header, rows


def terminal_table(results):
    """Fixed-width table for the terminal, with the run's key facts above it."""
    header, rows = summary_rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [f"{results['task']} on {results['data']['name']}/{results['data']['split']}: "
           f"{results['data']['n_images']} images, {results['data']['n_patients']} patients; "
           f"threads {results['config']['threads']}, batch N = {results['config']['batch']}; "
           f"reference {results['reference']}", line, "-" * len(line)]
    out += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    if results.get("noisy"):
        out.append("WARNING: other processes used the CPU during timing (see timing_guard); latencies are noisy.")
    if results.get("throttled"):
        out.append("WARNING: the Jetson throttled during the run (see the Jetson section); latencies are pessimistic.")
    return "\n".join(out)


def plain_verdicts(results):
    """One plain sentence per variant: passed, or what failed, by how much, and what a user should do."""
    lines = []
    n = results["data"]["n_images"]
    for row in results["rows"][1:]:
        verdict = row.get("verdict")
        if verdict == "PASS":
            lines.append(f"{row['name']} passed: every checked accuracy change stays within its tolerance at 95 % "
                         "confidence.")
            continue
        if verdict is None:
            continue
        failed = [(m, d) for m, d in (row.get("deltas") or {}).items()
                  if d.get("tolerance") is not None and d.get("verdict") != "PASS"]
        parts = []
        for metric, d in failed:
            if "error" in d:
                parts.append(f"{metric} could not be computed ({d['error']})")
                continue
            worse = d["delta"] < -d["tolerance"]
            parts.append(f"{metric} changed by {d['delta']:+.3f} (95 % interval {d['low']:+.3f} to {d['high']:+.3f}; "
                         f"allowed drop {d['tolerance']})" + (": the compressed model is worse" if worse else
                                                              ": the point estimate is within tolerance but "
                                                              f"{n} test images cannot show it"))
        advice = ("Do not deploy it as it is. With a small evaluation set, benchmark on more images (the full "
                  "dev pack or your own films with --thresholds bundle); if the point estimate itself is outside "
                  "the tolerance, compress with less pruning or keep FP32/FP16 (a recipe's gate backs off "
                  "automatically on the full data).")
        lines.append(f"{row['name']} FAILED its accuracy check: " + "; ".join(parts) + ". " + advice)
    return lines


def write_json_and_markdown(out_dir, results, markdown):
    """``results.json`` (plain JSON, sorted keys) and ``report.md`` into ``out_dir``: the files of the benchmark
    commands that have no plots (bench qc, the reader fuzz)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with open(os.path.join(out_dir, REPORT_MD), "w", encoding="utf-8") as fh:
        fh.write(markdown)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v).replace("|", "/") for v in r) + " |" for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- Markdown


def _accuracy_section(results):
    rows = results["rows"]
    if results["task"] == TaskKind.CLASSIFICATION:
        keys = ("auc", "sensitivity", "specificity", "precision", "accuracy", "f1", "f2")
        header = ["variant", "threshold (val)"] + [k if k != "auc" else "AUC" for k in keys] + ["TP", "FP", "FN", "TN"]
        table = []
        for row in rows:
            acc, test = row["accuracy"], row["accuracy"].get("test") or {}
            table.append([row["name"], fmt(acc["threshold"], 4)] + [fmt(test.get(k)) for k in keys]
                         + [test.get(k, "–") for k in ("tp", "fp", "fn", "tn")])
        if results["data"].get("threshold_source") == "bundle":
            header[1] = "threshold (bundle)"
            intro = (f"Positive label **{results['positive_label']}** at the threshold each bundle ships (external "
                     "evaluation: nothing is re-fitted on the evaluated images).")
        else:
            intro = (f"Positive label **{results['positive_label']}** at the threshold re-fitted on validation "
                     f"({rows[0]['accuracy']['threshold_rule']} rule; never fitted on the evaluated split).")
        text = [intro, "", md_table(header, table)]
        if len(results["labels"]) > 2:
            text += ["", "Per class, one-vs-rest (predicted class = argmax):", ""]
            header = ["class", "variant", "sensitivity", "specificity", "precision", "F1", "F2", "AUC", "support"]
            table = []
            for label in results["labels"]:
                for row in rows:
                    pc = (row["accuracy"].get("per_class") or {})
                    c = (pc.get("classes") or {}).get(label)
                    if c is None:
                        table.append([label, row["name"]] + ["undefined"] * 7)
                        continue
                    table.append([label, row["name"]] + [fmt(c[k]) for k in ("sensitivity", "specificity", "precision",
                                                                             "f1", "f2", "auc")] + [c["support"]])
            for row in rows:
                macro = (row["accuracy"].get("per_class") or {}).get("macro") or {}
                table.append(["macro", row["name"]] + [fmt(macro.get(k)) for k in ("sensitivity", "specificity",
                                                                                   "precision", "f1", "f2", "auc")]
                             + [""])
            text.append(md_table(header, table))
        return "\n".join(text)
    unit = rows[0]["accuracy"]["distance_unit"]
    header = ["variant", "DICE", "IoU", "VOE", "RVD", f"ASD ({unit})", f"MSD ({unit})"]
    table = []
    for row in rows:
        s = row["accuracy"]["summary"]
        table.append([row["name"]] + [f"{fmt(s[k]['mean'])} ± {fmt(s[k]['std'])}"
                                      for k in ("dice", "iou", "voe", "rvd", "asd", "msd")])
    return ("Mean ± std over images (per-image values in results.json); pixels labelled "
            f"{rows[0]['accuracy']['ignore_label']} are ignored.\n\n" + md_table(header, table))


def _delta_section(results):
    header = ["variant", "metric", "delta (variant - baseline)", "tolerance", "verdict", "tolerance from"]
    table = []
    for row in results["rows"][1:]:
        for metric, d in (row.get("deltas") or {}).items():
            tol = d.get("tolerance")
            table.append([row["name"], metric, fmt_ci(d), f"-{tol}" if tol is not None else "unchecked",
                          d.get("verdict") or ("undefined" if "error" in d else "–"), row.get("tolerance_source")])
    if not table:
        return "Only the reference was benchmarked."
    return ("95 % paired-bootstrap intervals resampling whole patients; a verdict passes only when the interval's "
            "lower bound clears the tolerance (non-inferiority).\n\n" + md_table(header, table))


def _calibration_section(results):
    rows = [r for r in results["rows"] if r.get("calibration")]
    if not rows:
        return None
    header = ["variant", "ECE", "Brier", "dECE vs reference [95% CI]", "dBrier vs reference [95% CI]"]
    table = []
    for row in rows:
        c = row["calibration"]
        d = c.get("delta")
        deltas = ["(reference)"] * 2 if d is None else [fmt_ci(d.get("ece")), fmt_ci(d.get("brier"))]
        table.append([row["name"], fmt(c["ece"]), fmt(c["brier"])] + deltas)
    binning = rows[0]["calibration"]["reliability"]["binning"]
    return (f"P({results['positive_label']}) against the outcome on the evaluated images: expected calibration error "
            f"({binning}) and Brier score, lower is better; deltas are variant - reference with paired patient-"
            "bootstrap intervals (a positive delta is worse calibration).\n\n" + md_table(header, table))


def _ci_text(m, digits=3):
    if not m:
        return "–"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def _subgroup_section(results):
    sub = results.get("subgroups")
    if not sub:
        return None
    names = [r["name"] for r in results["rows"]]
    pos = results["positive_label"]
    parts = [f"Sensitivity and specificity for **{pos}** at each row's own threshold, AUC of {pos} where both classes "
             "exist, and the within-subgroup one-vs-rest AUC of every label the subgroup holds with another (inside "
             "one source a model that only recognises the source scores 0.5 there). 95 % patient-bootstrap intervals "
             f"({results['config'].get('subgroup_n_boot')} resamples). Subgroups under {sub['min_n']} images are "
             f"marked *small*; a variant is flagged **DROP** where its sensitivity or specificity falls more than "
             f"{sub['max_drop']} below the reference's (point estimate).", ""]
    for column in sub["columns"]:
        header = ["subgroup", "n (patients)", "labels", "row", f"sens {pos}", f"spec {pos}", f"AUC {pos}",
                  "within-subgroup AUC", "dSens", "dSpec", "dAUC", "flag"]
        table = []
        for e in sub["tables"][column]:
            counts = ", ".join(f"{k} {v}" for k, v in e["label_counts"].items())
            for name in names:
                m = e["rows"][name]
                within = "; ".join(f"{k} {_ci_text(v, 2)}" for k, v in m["class_auc"].items()) or "–"
                d = e["deltas"].get(name)
                flag = "(reference)" if name == names[0] else ("**DROP**" if d and d["flag"] else "")
                table.append([f"{e['value']}" + (" *small*" if e["small"] else ""), f"{e['n']} ({e['n_patients']})",
                              counts, name, _ci_text(m["sensitivity"]), _ci_text(m["specificity"]),
                              _ci_text(m["auc"]), within] + [fmt_ci(d[k]) if d and d.get(k) else "–"
                                                             for k in ("sensitivity", "specificity", "auc")] + [flag])
        parts += [f"By **{column}**:", "", md_table(header, table), ""]
    return "\n".join(parts).rstrip()


def _fidelity_section(results):
    table = []
    if results["task"] == TaskKind.CLASSIFICATION:
        header = ["variant", "label agreement", "positive-call agreement", "mean |dp|", "max |dp|"]
        for row in results["rows"][1:]:
            f = row["fidelity"]
            table.append([row["name"], fmt(f["label_agreement"]), fmt(f["positive_call_agreement"]),
                          fmt(f["mean_abs_delta_prob"], 4), fmt(f["max_abs_delta_prob"], 4)])
    else:
        header = ["variant", "DICE to baseline (mean)", "min", "pixel agreement"]
        for row in results["rows"][1:]:
            f = row["fidelity"]
            table.append([row["name"], fmt(f["dice_to_baseline"]["mean"], 4), fmt(f["dice_to_baseline"]["min"], 4),
                          fmt(f["pixel_agreement"], 4)])
    return md_table(header, table) if table else "Only the reference was benchmarked."


def _latency_section(results):
    batch = results["config"]["batch"]
    header = ["variant", "b1 model p50/p90/p99 ms", "b1 end-to-end p50 ms", "pre p50 ms", "post p50 ms",
              "pre+post / model", f"b{batch} p50/p90/p99 ms", f"b{batch} img/s", "speedup b1", "speedup e2e",
              f"speedup b{batch}"]
    table = []
    for row in results["rows"]:
        lat, sp = row["latency"], row["speedup"]
        b1, bn, st = lat["batch1"], lat["batchN"], lat["stages"]
        table.append([row["name"], f"{fmt(b1['p50_ms'], 2)} / {fmt(b1['p90_ms'], 2)} / {fmt(b1['p99_ms'], 2)}",
                      fmt(lat["batch1_end_to_end"]["p50_ms"], 2), fmt(st["preprocess"]["p50_ms"], 2),
                      fmt(st["postprocess"]["p50_ms"], 2), fmt(lat["pre_post_share_of_model"], 3),
                      f"{fmt(bn['p50_ms'], 1)} / {fmt(bn['p90_ms'], 1)} / {fmt(bn['p99_ms'], 1)}",
                      fmt(bn["throughput_ips"], 1), fmt_ratio(sp["batch1"]), fmt_ratio(sp["batch1_end_to_end"]),
                      fmt_ratio(sp["batchN"])])
    guard = results["timing_guard"]
    notes = []
    for phase, g in guard.items():
        share = g.get("foreign_share")
        notes.append(f"{phase}: {g['wall_s']:.1f} s, load average {g.get('loadavg_before')} -> "
                     f"{g.get('loadavg_after')}, other processes used "
                     f"{'unknown' if share is None else f'{100 * share:.0f} %'} of the CPUs"
                     + (" **(noisy)**" if g.get("noisy") else ""))
    cfg = results["config"]
    settle = f", {cfg['settle_ms']:g} ms untimed pause after each call" if cfg.get("settle_ms") else ""
    return (f"Interleaved rounds (every variant once per round, same order, one process), after {cfg['warmup']} "
            f"warm-up calls{settle}; {cfg['threads']} threads. Model = the backend call on a preprocessed batch; "
            "end-to-end adds the runtime's preprocessing and post-processing (image already decoded). Speed-ups are "
            "ratios of medians vs the reference with 95 % bootstrap intervals over paired rounds.\n\n"
            + md_table(header, table) + "\n\n" + "\n".join(f"- {n}" for n in notes))


def _resources_section(results):
    header = ["variant", "file", "MB on disk", "size ratio", "params (M)", "MACs (M, ONNX dense)",
              "MACs (M, torch-pruning)", "MACs ratio", "peak RSS MB", "torch in process"]
    table = []
    for row in results["rows"]:
        c, mem = row["complexity"], row.get("memory") or {}
        table.append([row["name"], os.path.basename(row["info"]["model_path"]), fmt_mb(row["info"]["bytes"]),
                      fmt(row["size_ratio"], 1), fmt_millions(c.get("params")) if c.get("params") else "–",
                      fmt_millions(c.get("macs")), fmt_millions(c.get("macs_torch_pruning")), fmt(row["macs_ratio"], 1),
                      fmt(mem.get("peak_rss_mb"), 0) if "error" not in mem else "error",
                      {True: "yes", False: "no"}.get(mem.get("torch_loaded"), "–")])
    return ("Peak RSS: VmHWM of a fresh process per variant that loads it and runs "
            f"{results['config']['memory_runs']} predictions on real images.\n\n" + md_table(header, table))


def _watts(summary):
    mw = (summary or {}).get("power_mw_mean")
    return fmt(mw / 1000.0, 2) if mw is not None else "–"


def _jetson_section(results):
    jet = results.get("jetson")
    if not jet:
        return None
    header = ["variant", "images", "seconds", "mean power W", "energy / image J", "RAM max MB", "GPU load mean %",
              "hottest C", "throttled"]
    table = []
    for name, e in jet["energy"]["rows"].items():
        s = e["summary"] or {}
        temps = s.get("temps_c_max") or {}
        table.append([name, e["images"], fmt(e["seconds"], 1), _watts(s), fmt(e["energy_per_image_j"], 4),
                      fmt(s.get("ram_used_mb_max"), 0), fmt(s.get("gpu_load_mean"), 0),
                      fmt(max(temps.values()) if temps else None, 1),
                      "; ".join(s.get("throttle_reasons") or []) or "no"])
    idle = jet["energy"].get("idle") or {}
    run = jet.get("tegrastats") or {}
    mode = ((results["environment"].get("jetson") or {}).get("nvpmodel") or {}).get("mode")
    return (f"nvpmodel mode {mode or 'unknown'}; power from {idle.get('power_source') or run.get('power_source')}; "
            f"idle {_watts(idle)} W. Each variant ran batch 1 alone for {results['config']['energy_seconds']:g} s "
            "(energy per image = mean power x time / images, idle included). Whole run: "
            f"{run.get('samples', 0)} tegrastats samples, RAM max {fmt(run.get('ram_used_mb_max'), 0)} of "
            f"{run.get('ram_total_mb')} MB, throttling: {'; '.join(run.get('throttle_reasons') or []) or 'none seen'}."
            "\n\n" + md_table(header, table))


def _environment_section(results):
    env = results["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in sorted((env.get("libraries") or {}).items()))
    jetson = env.get("jetson")
    lines = [f"- CPU: {env['cpu_model']} ({env['logical_cpus']} logical CPUs, {env['cpus_available']} available), "
             f"{env['memory_total_mb']} MB RAM, {env['machine']}, {env['os']}",
             f"- Python {env['python']}; {libs}",
             f"- ONNX Runtime providers: {env.get('onnxruntime_providers')}",
             f"- git commit: {env.get('git_commit')}"]
    if jetson:
        lines.append(f"- Jetson: {jetson.get('model')}, {jetson.get('l4t_release')}, nvpmodel {jetson.get('nvpmodel')}")
    return "\n".join(lines)


FIGURES = (("roc.png", "ROC curves (positive label, then each class one-vs-rest)"),
           ("subgroups.png", "Sensitivity and specificity per subgroup, reference beside each variant"),
           ("reliability.png", "Reliability diagram (calibration)"),
           ("pareto.png", "Latency vs accuracy"),
           ("dice_distribution.png", "Per-image DICE"),
           ("examples.png", "Where the least faithful variant and the reference disagree most"))


def render_markdown(results, figures_dir=None, heading_level=1, figure_prefix=""):
    """The full Markdown report of one run; figure links are ``figure_prefix`` + file name (the report's folder
    by default)."""
    h = "#" * heading_level
    d = results["data"]
    parts = [f"{h} {results['task'].capitalize()} benchmark: {d['name']} / {d['split']}", "",
             f"{d['n_images']} images from {d['n_patients']} patients"
             + (f" (+ {d['n_val_images']} validation images for the thresholds)" if d.get("n_val_images") else "")
             + f"; reference **{results['reference']}**; {results['created']}.", "",
             "Reproduce with:", "", "```", results["command"], "```", ""]
    if results.get("noisy"):
        parts += ["> **Noisy run**: other processes used the CPU while the timings ran; latencies and speed-ups "
                  "are less trustworthy than usual (see Latency).", ""]
    if results.get("throttled"):
        parts += ["> **Throttled**: the Jetson showed throttling during the run (Jetson power section).", ""]
    if d.get("threshold_fit_on_evaluated_split"):
        parts += ["> Thresholds were fitted on the split being evaluated (validation): accuracy is optimistic.", ""]
    header, rows = summary_rows(results)
    sections = [("Summary", md_table(header, rows)), ("Accuracy", _accuracy_section(results)),
                ("Deltas vs the reference", _delta_section(results)),
                ("Subgroups", _subgroup_section(results)), ("Calibration", _calibration_section(results)),
                ("Fidelity to the reference",
                                                                         _fidelity_section(results)),
                ("Latency", _latency_section(results)), ("Size, compute, memory", _resources_section(results)),
                ("Jetson power", _jetson_section(results)), ("Environment", _environment_section(results))]
    for title, body in sections:
        if body:
            parts += [f"{h}# {title}", "", body, ""]
    if figures_dir:
        figs = [(f, c) for f, c in FIGURES if os.path.isfile(os.path.join(figures_dir, f))]
        if figs:
            parts += [f"{h}# Figures", ""] + [f"![{c}]({figure_prefix}{f})\n" for f, c in figs]
    return "\n".join(parts).rstrip() + "\n"


def write_outputs(results, out_dir, examples=None, plots=True):
    """results.json, plots (unless ``plots`` is False) and report.md into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": save_results(results, os.path.join(out_dir, RESULTS_JSON))}
    if plots:
        from lungedge.benchmarks import plots as P

        paths["plots"] = P.plot_all(results, out_dir, examples)
    md = os.path.join(out_dir, REPORT_MD)
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(render_markdown(results, figures_dir=out_dir))
    paths["markdown"] = md
    return paths
