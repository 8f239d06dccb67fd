"""Figures of a benchmark (matplotlib, Agg backend: no display needed), drawn from the results dict.

ROC curves of the reference and every variant overlaid, latency vs accuracy with the Pareto front, the
per-image DICE distribution, the images where the least faithful variant and the reference disagree most, and
the CT study scaling. Everything except the example images is recomputed from results.json alone.
"""

import os

import numpy as np

from lungedge import metrics as M
from lungedge.runtime.enums import TaskKind


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def roc(results, path):
    """ROC of every row on the evaluated split: the positive label first, then each other label one-vs-rest."""
    plt = _plt()
    labels, positive = results["labels"], results["positive_label"]
    classes = [positive] + [lab for lab in labels if lab != positive] if len(labels) > 2 else [positive]
    truth = results["per_image"]["labels"]
    panels = [(c, np.array([lab == c for lab in truth], int)) for c in classes]
    panels = [(c, y) for c, y in panels if 0 < y.sum() < len(y)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 5.0), squeeze=False)
    for ax, (cls, y) in zip(axes[0], panels):
        k = labels.index(cls)
        for row in results["rows"]:
            scores = np.asarray(row["per_image_probabilities"])[:, k]
            fpr, tpr, _ = M.roc_curve(y, scores)
            ax.plot(fpr, tpr, lw=1.6, label=f"{row['name']} (AUC {M.roc_auc(y, scores):.3f})",
                    ls="-" if row["role"] != "variant" else "--")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
               title=f"{cls} vs rest ({int(y.sum())} of {len(y)} images)")
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _accuracy_value(results, row):
    if results["task"] == TaskKind.CLASSIFICATION:
        return (row["accuracy"].get("test") or {}).get("auc"), "AUC (positive label)"
    return row["accuracy"]["summary"]["dice"]["mean"], "mean DICE"


def pareto(results, path):
    """Batch-1 model latency (log) against accuracy; the Pareto-optimal rows joined by a line."""
    plt = _plt()
    pts = []
    for row in results["rows"]:
        acc, ylabel = _accuracy_value(results, row)
        if acc is not None:
            pts.append((row["latency"]["batch1"]["p50_ms"], acc, row["name"], row["role"]))
    if not pts:
        return None
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for x, yv, name, role in pts:
        ax.scatter([x], [yv], s=45, marker="o" if role == "variant" else "s", label=name)
    front, best = [], -np.inf
    for x, yv, _, _ in sorted(pts):
        if yv > best:
            front.append((x, yv))
            best = yv
    ax.plot(*zip(*front), color="0.5", lw=1, ls=":", label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set(xlabel="batch-1 model latency p50 (ms, log scale)", ylabel=ylabel, title="Latency vs accuracy")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return _save(fig, path)


def dice_distribution(results, path):
    """Per-image DICE of every row against the ground truth (box plot with the points)."""
    plt = _plt()
    rows = results["rows"]
    data = [row["accuracy"]["per_image"]["dice"] for row in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 4.2))
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.6)
    ax.set_xticks(range(1, len(rows) + 1))
    ax.set_xticklabels([r["name"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="DICE per image", ylim=(-0.02, 1.02), title=f"Per-image DICE ({len(data[0])} images)")
    return _save(fig, path)


def examples(ex, path):
    """Images of largest disagreement: masks as contours (segmentation) or both probabilities (classification)."""
    if not ex or not ex["items"]:
        return None
    plt = _plt()
    n = len(ex["items"])
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.9))
    axes = np.atleast_1d(axes)
    for ax, item in zip(axes, ex["items"]):
        ax.imshow(item["image"], cmap="gray")
        ax.axis("off")
        if ex["task"] == TaskKind.SEGMENTATION:
            for mask, color in ((item["gt"] == 1, "lime"), (item["reference_mask"] > 0, "deepskyblue"),
                                (item["variant_mask"] > 0, "red")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=color, linewidths=0.9)
            ax.set_title(f"{item['file'][:22]}\nDICE to baseline {item['dice_to_baseline']:.3f}", fontsize=7)
        else:
            ax.set_title(f"{item['file'][:22]} ({item['label']})\nref p={item['reference_p']:.3f}  "
                         f"var p={item['variant_p']:.3f}", fontsize=7)
    legend = ("green: ground truth, blue: " + ex["reference"] + ", red: " + ex["variant"]
              if ex["task"] == TaskKind.SEGMENTATION else f"p = positive-label probability; {ex['reference']} vs {ex['variant']}")
    fig.text(0.5, 0.01, legend, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling(results, path):
    """CT study latency (median with min-max) and peak RSS against the number of slices, with the linear fit."""
    plt = _plt()
    pts = results["points"]
    n = np.array([p["slices"] for p in pts])
    med = np.array([p["latency_s"]["median"] for p in pts])
    lo = np.array([p["latency_s"]["min"] for p in pts])
    hi = np.array([p["latency_s"]["max"] for p in pts])
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    ax.errorbar(n, med, yerr=[med - lo, hi - med], fmt="o", capsize=3, label="study latency (median, min-max)")
    fit = results["fit"]
    xs = np.linspace(0, n.max() * 1.05, 50)
    ax.plot(xs, fit["intercept_s"] + fit["per_slice_s"] * xs, ls="--", lw=1, color="0.35",
            label=f"fit: {fit['intercept_s']:.2f} s + {1000 * fit['per_slice_s']:.1f} ms/slice (R2 {fit['r2']:.3f})")
    ax.set(xlabel="slices per study", ylabel="seconds")
    if results.get("target_s"):
        ax.axhline(results["target_s"], color="0.6", lw=0.8, ls=":")
    rss = [p.get("peak_rss_mb") for p in pts]
    if any(r is not None for r in rss):
        ax2 = ax.twinx()
        ax2.plot(n, [r if r is not None else np.nan for r in rss], "s-", color="tab:orange", ms=4, lw=1,
                 label="peak RSS (MB)")
        ax2.set_ylabel("peak RSS per process (MB)")
        ax2.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("CT study scaling")
    return _save(fig, path)


def reliability(results, path):
    """Reliability diagram of P(positive) per row: observed positive rate against mean predicted, equal-mass bins."""
    rows = [r for r in results["rows"] if r.get("calibration")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    for row in rows:
        c = row["calibration"]
        curve = c["reliability"]
        ax.plot(curve["mean_predicted"], curve["observed"], marker="o", ms=3, lw=1.2,
                label=f"{row['name']} (ECE {c['ece']:.3f}, Brier {c['brier']:.3f})")
    ax.set_xlabel(f"mean predicted P({results['positive_label']})")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({rows[0]['calibration']['reliability']['binning']})", fontsize=9)
    ax.legend(fontsize=6, loc="upper left")
    return _save(fig, path)


def subgroup_bars(results, path):
    """Per-subgroup sensitivity and specificity bars (with 95 % intervals), the reference beside each variant."""
    sub = results.get("subgroups")
    if not sub:
        return None
    entries = [e for col in sub["columns"] for e in sub["tables"][col]]
    if not entries:
        return None
    plt = _plt()
    # One bar per model: the reference, then each row on its native runtime (torch or ONNX Runtime); the other
    # backends' rows are in the tables. At most 6 bars per subgroup keep the figure readable.
    rows = [r for r in results["rows"] if (r["info"].get("backend") in ("torch", "onnxruntime"))] or results["rows"]
    names = [r["name"] for r in rows][:6]
    fig, axes = plt.subplots(2, 1, figsize=(min(24.0, max(6.0, 0.32 * len(entries) * len(names) + 2)), 7),
                             sharex=True)
    width = 0.8 / len(names)
    x = np.arange(len(entries))
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for k, name in enumerate(names):
            vals, lo, hi = [], [], []
            for e in entries:
                m = e["rows"][name][metric]
                v = m["value"] if m else np.nan
                vals.append(v)
                lo.append(v - m["low"] if m else 0.0)
                hi.append(m["high"] - v if m else 0.0)
            ax.bar(x + (k - (len(names) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2,
                   label=name, error_kw={"lw": 0.7})
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=6, loc="lower left")
    labels = [f"{e['column']}={e['value']}\n(n={e['n']}{', small' if e['small'] else ''})" for e in entries]
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels, rotation=45, ha="right", fontsize=6)
    axes[0].set_title(f"Per subgroup, positive label {results['positive_label']} at each row's threshold "
                      "(undefined bars are blank)", fontsize=9)
    return _save(fig, path)


def plot_all(results, out_dir, examples_data=None):
    """Every figure that applies to this run; returns the paths written."""
    written = []
    if results["task"] == TaskKind.CLASSIFICATION:
        written.append(roc(results, os.path.join(out_dir, "roc.png")))
        written.append(reliability(results, os.path.join(out_dir, "reliability.png")))
        written.append(subgroup_bars(results, os.path.join(out_dir, "subgroups.png")))
    else:
        written.append(dice_distribution(results, os.path.join(out_dir, "dice_distribution.png")))
    written.append(pareto(results, os.path.join(out_dir, "pareto.png")))
    written.append(examples(examples_data, os.path.join(out_dir, "examples.png")))
    return [p for p in written if p]
