"""Screen X-ray training recipes against the source shortcut (issue 9), cheaply, on the compact student.

Each recipe trains ``--arch`` from scratch with ``lungedge train``'s code, then reports, on validation (where
recipes are chosen) and test (reported, never used to choose): COVID AUC; AUC *within* the sources that hold
several labels (ieee8023 covid vs rest, nih-chestxray14 pneumonia vs normal, kermany-pediatric pneumonia vs
normal), which a source detector cannot fake; and at the validation threshold the COVID calls on NIH adult
normals and the sensitivity on each COVID source.

Usage: python tools/shortcut_screen.py --data ../shared/data/xray-cls --lung-bundle bundles/xray-lungs \
           --out runs/screen [--arch student_m --size 128 --epochs 15]
"""

import argparse
import dataclasses
import json
import os

import numpy as np
import torch

from lungedge import metrics as M
from lungedge.benchmarks.attention import attention_summary
from lungedge.models.data import load_split
from lungedge.models.train import TrainConfig, load_model, open_lung_crop, predict, train
from lungedge.runtime.io.image import read_image
from lungedge.runtime.predictor import Predictor
from lungedge.runtime.preprocess import letterbox
from lungedge.runtime.tasks import task

WITHIN = {"ieee8023": "covid", "nih-chestxray14": "pneumonia", "kermany-pediatric": "pneumonia"}
RECIPES = {
    "whole": {},
    "whole-balanced-strong": {"balance": "source", "augment_level": "strong"},
    "lungcrop": {"lung_bundle": True},
    "lungcrop-balanced-strong": {"lung_bundle": True, "balance": "source", "augment_level": "strong"},
    "lungcrop-balanced-strong-equalize": {"lung_bundle": True, "balance": "source", "augment_level": "strong",
                                          "equalize": True},
}


def shortcut_report(labels, probs, targets, sources, threshold):
    """The numbers above for one split; ``threshold`` on P(covid), fitted on validation."""
    pos = labels.index("covid")
    y = (targets == pos).astype(int)
    out = {"covid_auc": M.roc_auc(y, probs[:, pos]), "within_source_auc": {}}
    sources = np.asarray(sources)
    for src, label in WITHIN.items():
        sel = sources == src
        k = labels.index(label)
        ys = (targets[sel] == k).astype(int)
        if 0 < ys.sum() < ys.size:
            out["within_source_auc"][f"{src}:{label}"] = M.roc_auc(ys, probs[sel, k])
    out["within_source_auc_mean"] = float(np.mean(list(out["within_source_auc"].values())))
    calls = probs[:, pos] >= threshold
    nih_normal = (sources == "nih-chestxray14") & (targets == labels.index("normal"))
    out["nih_normal_covid_call_rate"] = float(calls[nih_normal].mean()) if nih_normal.any() else None
    for src in ("ieee8023", "hannover"):
        sel = (sources == src) & (y == 1)
        out[f"covid_sensitivity_{src}"] = float(calls[sel].mean()) if sel.any() else None
    return out


def lung_masks(ds, segmenter, crop, size):
    """Lung mask of every image of ``ds`` in network space (the same letterbox as the preprocessing)."""
    masks = []
    for rec in ds.records:
        array, meta = read_image(rec.image)
        if crop is not None:
            array, meta, _ = crop(array, meta, {"file": os.path.basename(rec.image)})
        lung = segmenter.predict_images([(array, meta, {"file": os.path.basename(rec.image)})],
                                        check_quality=False)[0]["mask"]
        net, _ = letterbox(lung.astype(np.float32), {}, size=(size, size))
        masks.append(net >= 0.5)
    return masks


def attention(model, ds, masks, positive, limit=120):
    """Occlusion importance on the lungs (``benchmarks.attention``) over the first ``limit`` positives and
    ``limit`` negatives of ``ds``."""
    def fn(batch):
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(batch))), 1).numpy()

    pos_idx = [i for i, t in enumerate(ds.targets) if t == positive][:limit]
    neg_idx = [i for i, t in enumerate(ds.targets) if t != positive][:limit]
    out = {}
    for name, idx in (("covid_films", pos_idx), ("other_films", neg_idx)):
        out[name] = attention_summary(fn, [ds.images[i] for i in idx], [masks[i] for i in idx], positive, patch=16)
    return out


def _f(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(results, command):
    """The comparison as Markdown (for BENCHMARKS.md): one row per recipe and split."""
    within_keys = [f"{src}:{label}" for src, label in WITHIN.items()]
    header = ["recipe", "split", "COVID AUC", "within ieee8023 (covid)", "within NIH (pneumonia vs normal)",
              "within Kermany (pneumonia vs normal)", "mean within", "COVID calls on NIH normals",
              "COVID sens ieee8023", "COVID sens hannover", "evidence on lungs (COVID films)", "lung area share"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results.items():
        for split in ("val", "test"):
            r = row[split]
            att = (r.get("attention") or {}).get("covid_films") or {}
            cfg = row["config"]
            cells = [f"{name} ({cfg['arch']}, {cfg['size']} px, {cfg['epochs']} epochs)", split, _f(r["covid_auc"])] + [_f(r["within_source_auc"].get(k)) for k in within_keys]
            cells += [_f(r["within_source_auc_mean"]), _f(r["nih_normal_covid_call_rate"]),
                      _f(r["covid_sensitivity_ieee8023"], 2), _f(r["covid_sensitivity_hannover"], 2),
                      _f(att.get("lung_share_of_importance"), 2), _f(att.get("lung_share_of_area"), 2)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        "# Shortcut screen: X-ray classification recipes", "",
        "Each recipe trains the architecture named in its row, at the input size named there, from scratch on the "
        "xray-cls train split; recipes "
        "are compared on **validation** (test shown, never used to choose). *Within* AUCs are computed inside one "
        "source that holds several labels, where recognising the source is worth nothing. COVID calls and "
        "sensitivities are at the validation-fitted (Youden) threshold. Evidence on lungs: share of the positive "
        "occlusion importance (16 px patches) on patches that are mostly lung (lung masks from the lung bundle), "
        "beside the share of patches that are lung.", "",
        "Reproduce with:", "", "```", command, "```", ""] + lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--lung-bundle", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="student_m")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES))
    p.add_argument("--suffix", default="", help="appended to each recipe's run folder and report key "
                   "(e.g. -192px to keep a larger-input run beside the 128 px one)")
    p.add_argument("--report-only", action="store_true", help="do not train; report finished runs")
    p.add_argument("--attention-limit", type=int, default=120, help="occlusion on at most this many COVID and "
                   "this many other films per split")
    p.add_argument("--markdown", help="write the Markdown comparison of OUT/screen-report.json (or screen.json) here")
    a = p.parse_args(argv)
    if a.markdown:
        path = os.path.join(a.out, "screen-report.json")
        path = path if os.path.isfile(path) else os.path.join(a.out, "screen.json")
        with open(path, encoding="utf-8") as fh:
            results = json.load(fh)
        command = (f"python tools/shortcut_screen.py --data {a.data} --lung-bundle {a.lung_bundle} --out {a.out} "
                   f"--arch {a.arch} --size {a.size} --epochs {a.epochs} --threads {a.threads} --recipes "
                   + " ".join(results) + "  # then --report-only, then --markdown")
        os.makedirs(os.path.dirname(os.path.abspath(a.markdown)), exist_ok=True)
        with open(a.markdown, "w", encoding="utf-8") as fh:
            fh.write(render_markdown(results, command))
        return 0
    spec = task("xray-cls")
    labels = list(spec.labels)
    out_json = os.path.join(a.out, "screen-report.json" if a.report_only else "screen.json")
    results = {}
    if os.path.isfile(out_json):  # keep the recipes of earlier invocations
        with open(out_json, encoding="utf-8") as fh:
            results = json.load(fh)
    for name in a.recipes:
        opts = dict(RECIPES.get(name, {}))
        if opts.pop("lung_bundle", False):
            opts["lung_bundle"] = a.lung_bundle
        cfg = TrainConfig(task="xray-cls", data=a.data, arch=a.arch, size=a.size, epochs=a.epochs, patience=5,
                          threads=a.threads, **opts)
        run = os.path.join(a.out, name + a.suffix)
        if a.report_only:
            with open(os.path.join(run, "metrics.json"), encoding="utf-8") as fh:
                metrics = json.load(fh)
        else:
            metrics = train(cfg, run, resume=True)
        model, cfg = load_model(run)
        crop = open_lung_crop(cfg, threads=a.threads)
        row = {"config": dataclasses.asdict(cfg), "threshold": metrics["val"]["threshold"]}
        segmenter = Predictor.from_bundle(a.lung_bundle, threads=a.threads)
        for split in ("val", "test"):
            ds = load_split(a.data, spec, split, cfg.size, steps=spec.steps(cfg.size, cfg.equalize), crop=crop)
            row[split] = shortcut_report(labels, predict(model, ds), ds.targets, ds.sources, row["threshold"])
            row[split]["attention"] = attention(model, ds, lung_masks(ds, segmenter, crop, cfg.size),
                                                labels.index("covid"), limit=a.attention_limit)
        results[name + a.suffix] = row
        print(name, json.dumps({s: row[s] for s in ("val", "test")}, indent=1))
        with open(out_json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
