"""``lungedge train``: baseline training for the four tasks, resumable, early-stopped on validation AUC/DICE.

Class-balanced cross-entropy (classification) or BCE + soft DICE with the ignore label (segmentation); AdamW
with a cosine schedule and a short warm-up; batch augmentation; fixed seeds. A run folder holds
``config.json``, ``last.pt`` (resume state), ``best.pt`` (best validation weights), ``history.jsonl`` and
``metrics.json`` (validation and test metrics at the validation-fitted threshold).
"""

import argparse
import dataclasses
import json
import os
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lungedge.models.checkpoint import load_checkpoint, load_model, open_lung_crop
from lungedge.models.config import BALANCE_MODES, TrainConfig, check_options
from lungedge.models.data import AUGMENT_LEVELS, BatchAugment, load_split, source_balanced_weights
from lungedge.models.errors import TrainConfigError
from lungedge.models.evaluate import evaluate, predict
from lungedge.models.losses import class_weights, segmentation_loss, task_loss
from lungedge.models.optim import Stepper, make_optimizer, seed_everything
from lungedge.models.registry import build, kind_of
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.tasks import task

# Names older callers import from here (the config, run-folder, loss and evaluation helpers live beside it).
__all__ = ["BALANCE_MODES", "TrainConfig", "check_options", "class_weights", "evaluate", "final_metrics",
           "load_checkpoint", "load_model", "main", "make_optimizer", "open_lung_crop", "predict",
           "segmentation_loss", "seed_everything", "source_balanced_weights", "train", "train_epoch"]


def train_epoch(model, loader, stepper, loss_fn, augment_batch, desc):
    """One pass over ``loader``; ``augment_batch``: a ``BatchAugment`` or None. Returns the mean loss."""
    model.train()
    total, n = 0.0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch"):
        if augment_batch is not None:
            x, y = augment_batch(x, y)
        loss = loss_fn(model(x), y)
        stepper.step(loss)
        total += loss.item() * len(x)
        n += len(x)
    return total / max(n, 1)


def save_json(path, obj):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)


def train(cfg, out_dir, resume=False):
    """Train a baseline into ``out_dir``; returns the metrics dict written to metrics.json."""
    cfg = cfg.resolved()
    spec = task(cfg.task)
    if kind_of(cfg.arch) != spec.kind:
        raise TrainConfigError(f"{cfg.arch} is a {kind_of(cfg.arch)} model; task {cfg.task} needs a {spec.kind} "
                               "architecture (leave --arch empty for the task's default)")
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
    weights = None
    if spec.kind == TaskKind.CLASSIFICATION:
        weights = class_weights(train_ds.targets, len(spec.labels), sample_weights)
    loss_fn = task_loss(spec.kind, weights)
    augment_batch = BatchAugment(cfg.augment_level, gen) if cfg.augment else None
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
        loss = train_epoch(model, loader, Stepper(opt, sched), loss_fn, augment_batch,
                           f"epoch {epoch + 1}/{cfg.epochs}")
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
