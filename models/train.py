"""``lungedge train``: baseline training for the four tasks, resumable, early-stopped on validation AUC/DICE.

Class-balanced cross-entropy (classification) or BCE + soft DICE with the ignore label (segmentation); AdamW
with a cosine schedule and a short warm-up; batch augmentation; fixed seeds. A run folder holds
``config.json``, ``last.pt`` (resume state), ``best.pt`` (best validation weights), ``history.jsonl`` and
``metrics.json`` (validation and test metrics at the validation-fitted threshold).
"""

import argparse
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from lungedge.models.data import AUGMENT_LEVELS, IGNORE, augment, load_split
from lungedge.models.registry import build, kind_of
from lungedge.models.tasks import task
from lungedge.runtime.configs import config_from_dict


@dataclass(frozen=True)
class TrainConfig:
    task: str
    data: str
    arch: str = ""
    size: int = 0
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    seed: int = 0
    threads: int = 0
    augment: bool = True
    augment_level: str = "standard"  # a key of models.data.AUGMENT_LEVELS
    balance: str = ""  # "" (shuffle) or "source": sample so no (source, label) cell dominates
    lung_bundle: str = ""  # X-ray segmentation bundle: classify lung crops (runtime.pipelines.LungCrop)
    lung_margin: float = 0.05
    equalize: bool = False  # histogram-equalise X-rays before the letterbox (a recorded preprocessing step)

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d)

    def resolved(self):
        """Fill the task's default architecture and input size."""
        spec = task(self.task)
        return dataclasses.replace(self, arch=self.arch or spec.default_arch, size=self.size or spec.default_size)


BALANCE_MODES = ("", "source")


def check_options(cfg, spec):
    """Raise ValueError for options that do not fit the task."""
    if cfg.augment_level not in AUGMENT_LEVELS:
        raise ValueError(f"augment_level {cfg.augment_level!r}; known: {sorted(AUGMENT_LEVELS)}")
    if cfg.balance not in BALANCE_MODES:
        raise ValueError(f"balance {cfg.balance!r}; known: {list(BALANCE_MODES)}")
    if cfg.lung_bundle and (spec.kind, spec.modality) != ("classification", "xray"):
        raise ValueError("lung_bundle (lung crops) applies to X-ray classification only")


def open_lung_crop(cfg, threads=None):
    """The LungCrop of a config with ``lung_bundle`` (torch-free runtime predictor), else None."""
    if not cfg.lung_bundle:
        return None
    from lungedge.runtime.pipelines import LungCrop
    from lungedge.runtime.predictor import Predictor

    return LungCrop(Predictor.from_bundle(cfg.lung_bundle, threads=threads), cfg.lung_margin)


def source_balanced_weights(sources, targets, power=0.5):
    """Per-sample weights giving each (source, label) cell a share proportional to count**power.

    power 0 equalises the cells (tiny cells would then be repeated endlessly), 1 is plain shuffling; 0.5
    shrinks the large cells that carry a source shortcut (one source, one label) without overfitting the few
    images of a small cell.
    """
    cells = list(zip(sources, np.asarray(targets).tolist()))
    counts = {c: cells.count(c) for c in set(cells)}
    w = np.array([counts[c] ** power / counts[c] for c in cells], np.float64)
    return w / w.sum()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(targets, n, sample_weights=None):
    """Inverse-frequency weights normalised to mean 1 (class-balanced loss), of the sampled label mix."""
    if sample_weights is not None:  # expected counts per class of one epoch drawn with these weights
        sample_weights = np.asarray(sample_weights, np.float64) * (len(targets) / np.sum(sample_weights))
    counts = np.bincount(targets, weights=sample_weights, minlength=n).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def segmentation_loss(logits, masks):
    """BCE + soft DICE on the lung/lesion channel; pixels labelled IGNORE count in neither."""
    valid = (masks != IGNORE).float()
    target = (masks == 1).float()
    logit = logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(logit, target, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    prob = torch.sigmoid(logit) * valid
    inter = (prob * target).sum(dim=(1, 2))
    denom = prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
    soft_dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return bce + soft_dice


@torch.no_grad()
def predict(model, dataset, batch_size=32):
    """Class probabilities (N, C) or foreground probabilities (N, H, W) for a whole dataset."""
    model.eval()
    outs = []
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        y = model(x)
        outs.append(torch.softmax(y, 1) if y.shape[1] > 1 and y.ndim == 2 else torch.sigmoid(y[:, 0]))
    return torch.cat(outs).numpy()


def evaluate(spec, outputs, targets, threshold=None):
    """Validation/test metrics (kit metrics module); the threshold is fitted on validation when None."""
    from lungedge import metrics as M

    if spec.kind == "classification":
        pos = spec.labels.index(spec.positive_label)
        y = (targets == pos).astype(int)
        scores = outputs[:, pos]
        if threshold is None:
            threshold = float(M.fit_threshold(y, scores, rule="youden"))
        rep = M.classification_report(y, scores, threshold)
        out = {"threshold": threshold, "auc": rep["auc"], "positive": spec.positive_label,
               "sensitivity": rep["sensitivity"], "specificity": rep["specificity"],
               "precision": rep["precision"], "accuracy": rep["accuracy"], "f1": rep["f1"], "f2": rep["f2"]}
        if len(spec.labels) > 2:
            out["per_class"] = M.per_class_report(targets, outputs, list(spec.labels))
            out["macro_auc"] = out["per_class"]["macro"]["auc"]
        out["score"] = out.get("macro_auc", out["auc"])
        return out
    threshold = 0.5 if threshold is None else threshold
    dices = []
    for prob, mask in zip(outputs, targets):
        valid = mask != IGNORE
        dices.append(M.dice((prob >= threshold) & valid, (mask == 1) & valid))
    return {"threshold": threshold, "dice": float(np.mean(dices)), "dice_std": float(np.std(dices)),
            "score": float(np.mean(dices))}


def make_optimizer(model, cfg, steps_per_epoch):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def schedule(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train_epoch(model, loader, opt, sched, loss_fn, cfg, gen, desc):
    model.train()
    total, n = 0.0, 0
    level = AUGMENT_LEVELS[cfg.augment_level]
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch"):
        if cfg.augment:
            x, y2 = augment(x, y if y.ndim == 3 else None, generator=gen, **level)
            y = y if y2 is None else y2
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(x)
        n += len(x)
    return total / max(n, 1)


def save_json(path, obj):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)


def load_checkpoint(path):
    """Load a checkpoint written by this module (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(run_dir, which="best.pt"):
    """Rebuild a trained model from its run folder (config.json + state dict)."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
        cfg = TrainConfig.from_dict(json.load(fh)["config"])
    model = build(cfg.arch, task(cfg.task).num_outputs)
    state = load_checkpoint(os.path.join(run_dir, which))
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval(), cfg


def train(cfg, out_dir, resume=False):
    """Train a baseline into ``out_dir``; returns the metrics dict written to metrics.json."""
    cfg = cfg.resolved()
    spec = task(cfg.task)
    if kind_of(cfg.arch) != spec.kind:
        raise ValueError(f"{cfg.arch} is a {kind_of(cfg.arch)} model; task {cfg.task} needs {spec.kind}")
    check_options(cfg, spec)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    os.makedirs(out_dir, exist_ok=True)
    crop = open_lung_crop(cfg, threads=cfg.threads or None)
    save_json(os.path.join(out_dir, "config.json"), {"config": dataclasses.asdict(cfg), "task": dataclasses.asdict(spec),
                                                     "preprocessing": spec.steps(cfg.size, cfg.equalize),
                                                     "input_crop": crop.spec if crop else None})

    def bar(desc):
        return lambda it: tqdm(it, desc=desc, leave=False, unit="img")

    steps = spec.steps(cfg.size, cfg.equalize)
    train_ds = load_split(cfg.data, spec, "train", cfg.size, bar("load train"), steps=steps, crop=crop)
    val_ds = load_split(cfg.data, spec, "val", cfg.size, bar("load val"), steps=steps, crop=crop)
    gen = torch.Generator().manual_seed(cfg.seed)
    drop_last = len(train_ds) > cfg.batch_size
    sample_weights = None
    if cfg.balance == "source":
        sample_weights = source_balanced_weights(train_ds.sources, train_ds.targets)
        sampler = torch.utils.data.WeightedRandomSampler(sample_weights.tolist(), len(train_ds), replacement=True,
                                                         generator=gen)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last)
    else:
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=drop_last)
    model = build(cfg.arch, spec.num_outputs)
    opt, sched = make_optimizer(model, cfg, len(loader))
    if spec.kind == "classification":
        weights = class_weights(train_ds.targets, len(spec.labels), sample_weights)
        loss_fn = lambda out, y: F.cross_entropy(out, y, weight=weights)  # noqa: E731
    else:
        loss_fn = segmentation_loss
    start, best, bad = 0, -1.0, 0
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    if resume and os.path.exists(last_path):
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start, best, bad = int(state["epoch"]) + 1, float(state["best"]), int(state["bad"])
    history = os.path.join(out_dir, "history.jsonl")
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        loss = train_epoch(model, loader, opt, sched, loss_fn, cfg, gen, f"epoch {epoch + 1}/{cfg.epochs}")
        val = evaluate(spec, predict(model, val_ds), val_ds.targets)
        improved = val["score"] > best
        if improved:
            best, bad = val["score"], 0
            torch.save({"model": model.state_dict()}, best_path)
        else:
            bad += 1
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "epoch": epoch, "best": best, "bad": bad}, last_path)
        row = {"epoch": epoch + 1, "loss": round(loss, 5), "val_score": round(val["score"], 5),
               "best": round(best, 5), "seconds": round(time.time() - t0, 1)}
        with open(history, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        tqdm.write(f"[{cfg.task}/{cfg.arch}] " + " ".join(f"{k}={v}" for k, v in row.items()))
        if bad >= cfg.patience:
            tqdm.write(f"early stop: no validation gain for {cfg.patience} epochs")
            break
    return final_metrics(cfg, out_dir)


def final_metrics(cfg, out_dir):
    """Validation (threshold fit) and test metrics of the best weights; writes metrics.json."""
    spec = task(cfg.task)
    model, _ = load_model(out_dir)
    crop = open_lung_crop(cfg, threads=cfg.threads or None)
    steps = spec.steps(cfg.size, cfg.equalize)
    val_ds = load_split(cfg.data, spec, "val", cfg.size, steps=steps, crop=crop)
    test_ds = load_split(cfg.data, spec, "test", cfg.size, steps=steps, crop=crop)
    val = evaluate(spec, predict(model, val_ds), val_ds.targets)
    test = evaluate(spec, predict(model, test_ds), test_ds.targets, threshold=val["threshold"])
    metrics = {"val": val, "test": test, "n_val": len(val_ds), "n_test": len(test_ds),
               "params": sum(p.numel() for p in model.parameters())}
    save_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def main(argv=None):
    p = argparse.ArgumentParser(prog="lungedge train", description="Train a baseline on a dev-pack style folder.")
    p.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--task", required=True, choices=["xray-cls", "ct-cls", "xray-seg", "ct-seg"])
    p.add_argument("--data", required=True, help="folder with manifest.csv (e.g. ../shared/data/xray-cls)")
    p.add_argument("--arch", default="", help="registry name; default per task")
    p.add_argument("--size", type=int, default=0, help="square input side; default per task")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment-level", default="standard", choices=sorted(AUGMENT_LEVELS),
                   help="strong: wider geometry, gamma, blur/sharpen, noise (against source shortcuts)")
    p.add_argument("--balance", default="", choices=list(BALANCE_MODES),
                   help="source: shrink (source, label) cells that carry a source shortcut")
    p.add_argument("--lung-bundle", default="", help="X-ray lung segmentation bundle: train on lung crops "
                   "(recorded in the run, then in every bundle built from it; inference needs the same bundle)")
    p.add_argument("--lung-margin", type=float, default=0.05, help="crop margin per side, fraction of the box")
    p.add_argument("--equalize", action="store_true", help="histogram-equalise X-rays (recorded preprocessing step)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    a = p.parse_args(argv[1:] if argv and argv[0] == "train" else argv)
    cfg = TrainConfig(task=a.task, data=a.data, arch=a.arch, size=a.size, epochs=a.epochs, batch_size=a.batch_size,
                      lr=a.lr, patience=a.patience, seed=a.seed, threads=a.threads, augment=not a.no_augment,
                      augment_level=a.augment_level, balance=a.balance, lung_bundle=a.lung_bundle,
                      lung_margin=a.lung_margin, equalize=a.equalize)
    metrics = train(cfg, a.out, resume=a.resume)
    print(json.dumps({"val": metrics["val"].get("score"), "test": {k: v for k, v in metrics["test"].items()
                                                                      if not isinstance(v, dict)}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
