"""What a compression run shares: the ``Run`` its stages read and record into, and the ``Staging`` folder it builds in.

``prepare`` loads the baseline and the data of both input sizes and measures the baseline on validation and test
(threshold fitted on validation). ``Staging`` writes everything into ``OUT.partial`` beside a scratch folder and
renames it to ``OUT`` only at the end, so a failed run leaves no bundle behind; ``compress`` and
``export_baseline`` both build in one.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time

import torch
from tqdm import tqdm

from lungedge.compress import gate as G
from lungedge.compress.errors import CompressError, GateFailed
from lungedge.models.checkpoint import load_model, open_lung_crop
from lungedge.models.data import load_split
from lungedge.models.evaluate import evaluate, predict
from lungedge.runtime.tasks import task


@dataclasses.dataclass
class Run:
    """What the stages share: the recipe, the task, the data of both input sizes, the baseline and the log."""

    recipe: object  # compress.recipe.Recipe
    spec: object
    size: int
    base_size: int
    data_dir: str
    train_ds: object
    val_ds: object
    test_ds: object
    base_val_ds: object
    base_test_ds: object
    baseline: object
    baseline_cfg: object
    baseline_val: dict
    baseline_test: dict
    threads: int = None
    crop: object = None  # runtime.pipelines.LungCrop when the baseline was trained on lung crops
    decisions: list = dataclasses.field(default_factory=list)
    baseline_dir: str = ""  # the baseline's run folder (its weights' hash goes into the provenance)

    @property
    def steps(self):
        """The student's preprocessing: the task's steps at its input size, with the baseline's options."""
        return self.spec.steps(self.size, self.baseline_cfg.equalize)

    @property
    def teacher_size(self):
        """The baseline's (H, W) when the student's input size differs, else None."""
        return None if self.size == self.base_size else (self.base_size, self.base_size)

    def record(self, stage, variant, setting, verdict, action):
        entry = {"stage": stage, "variant": variant, "setting": setting, "verdict": verdict.to_dict(),
                 "action": action}
        self.decisions.append(entry)
        tqdm.write(f"[gate] {stage}: {verdict.summary()} -> {action}")
        return entry

    def fail(self, stage, message):
        report = {"recipe": self.recipe.name, "stage": stage, "baseline_val": brief(self.baseline_val),
                  "gate": self.recipe.gate.to_dict(), "decisions": self.decisions}
        lines = [f"{stage}: {message}"] + [f"  {d['stage']} [{d['variant']}] {json.dumps(d['setting'])}: "
                                           + _failed_text(d["verdict"]) for d in self.decisions
                                           if not d["verdict"]["passed"]]
        raise GateFailed("\n".join(lines), report)


def brief(metrics):
    """The scalar metrics of a metrics dict (per-class tables left out)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _failed_text(verdict):
    return ", ".join(f"{c['metric']} drop {c['drop']:+.4f} > {c['tolerance']}" for c in verdict["checks"]
                     if not c["passed"]) or "passed"


def _bar(desc):
    return lambda it: tqdm(it, desc=desc, leave=False, unit="img")


def prepare(recipe, baseline_run_dir, data_dir, threads=None):
    """Load the baseline and the data; measure the baseline on validation and test."""
    if threads:
        torch.set_num_threads(int(threads))
    baseline, cfg = load_model(baseline_run_dir)
    if cfg.task != recipe.task:
        raise CompressError(f"recipe {recipe.name!r} is for {recipe.task} but the baseline in {baseline_run_dir} "
                            f"was trained for {cfg.task}")
    spec = task(recipe.task)
    size, base_size = recipe.input_size or cfg.size, cfg.size
    crop = open_lung_crop(cfg, threads)  # the student sees the teacher's lung crops, as the runtime will
    steps, base_steps = spec.steps(size, cfg.equalize), spec.steps(base_size, cfg.equalize)
    train_ds = load_split(data_dir, spec, "train", size, _bar("load train"), steps=steps, crop=crop)
    val_ds = load_split(data_dir, spec, "val", size, _bar("load val"), steps=steps, crop=crop)
    test_ds = load_split(data_dir, spec, "test", size, _bar("load test"), steps=steps, crop=crop)
    if size == base_size:
        base_val_ds, base_test_ds = val_ds, test_ds
    else:
        base_val_ds = load_split(data_dir, spec, "val", base_size, _bar("load val (baseline size)"),
                                 steps=base_steps, crop=crop)
        base_test_ds = load_split(data_dir, spec, "test", base_size, _bar("load test (baseline size)"),
                                  steps=base_steps, crop=crop)
    rule = recipe.gate.threshold_rule
    baseline_val = G.measure(spec, predict(baseline, base_val_ds), base_val_ds.targets, rule)
    baseline_test = evaluate(spec, predict(baseline, base_test_ds), base_test_ds.targets,
                             threshold=baseline_val["threshold"])
    tqdm.write(f"[baseline] {cfg.arch} @ {base_size}px: val score {baseline_val['score']:.4f}, "
               f"test score {baseline_test['score']:.4f} ({len(val_ds)} val / {len(test_ds)} test images)")
    return Run(recipe=recipe, spec=spec, size=size, base_size=base_size, data_dir=data_dir, train_ds=train_ds,
               val_ds=val_ds, test_ds=test_ds, base_val_ds=base_val_ds, base_test_ds=base_test_ds,
               baseline=baseline, baseline_cfg=cfg, baseline_val=baseline_val, baseline_test=baseline_test,
               threads=threads, crop=crop, baseline_dir=baseline_run_dir)


def onnx_probabilities(run, path, dataset):
    """Probabilities of an ONNX model over ``dataset`` through ONNX Runtime (CPU, the run's threads)."""
    return G.probabilities(G.onnx_logits(path, dataset.images, threads=run.threads))


class Staging:
    """``OUT.partial`` plus a scratch folder for one build, as a context manager; ``publish()`` makes it ``OUT``.

    Leaving the ``with`` block on an error (interrupts included) removes the partial folder; leaving it at all
    removes the scratch folder. An existing ``OUT`` is refused unless ``overwrite``.
    """

    def __init__(self, out_dir, overwrite=False, prefix="lungedge-compress-"):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir) and not overwrite:
            raise CompressError(f"{self.out_dir} exists; choose another --out or pass overwrite=True (--force)")
        self.dir = f"{self.out_dir}.partial"
        self.prefix = prefix
        self.work = None
        self.started = time.time()

    def __enter__(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.work = tempfile.mkdtemp(prefix=self.prefix)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return False

    def publish(self):
        """Replace ``OUT`` with the finished partial folder; returns ``OUT``."""
        if os.path.exists(self.out_dir):
            shutil.rmtree(self.out_dir)
        os.replace(self.dir, self.out_dir)
        return self.out_dir

    def seconds(self):
        return time.time() - self.started
