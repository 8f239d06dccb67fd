"""Distillation: the KD loss arithmetic, the config contract, and a few real steps that lower the loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungedge.compress import distill as D
from lungedge.compress.distill import (
    DistillConfig,
    distill,
    kd_loss,
    pixel_kd_loss,
    soft_target_loss,
    teacher_logits,
)
from lungedge.models.data import TaskDataset
from lungedge.models.registry import build
from lungedge.models.train import segmentation_loss
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.tasks import task


@pytest.fixture(autouse=True)
def one_thread():
    # The CI box has two cores; two torch threads against a background job cost 20x in oversubscription.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def real_split(folder, spec, split, n, size):
    """The first ``n`` images of a split, labels taken in turn (the manifest is sorted by source, not label)."""
    records = [r for r in select(read_manifest_csv(folder), split=split)
               if (r.label in spec.labels if spec.kind == "classification" else r.mask)]
    if spec.kind == "classification":
        by_label = [[r for r in records if r.label == label] for label in spec.labels]
        records = [r for group in zip(*by_label) for r in group]
    return TaskDataset(records[:n], spec, size)


def quick_teacher(spec, arch, train_ds, epochs=3):
    """A teacher trained for a second or two with the hard labels only (better than chance, no more)."""
    torch.manual_seed(0)
    model = build(arch, spec.num_outputs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train_ds.images), torch.as_tensor(train_ds.targets)
    for _ in range(epochs):
        for i in range(0, len(x), 16):
            out = model(x[i:i + 16])
            loss = F.cross_entropy(out, y[i:i + 16]) if spec.kind == "classification" else \
                segmentation_loss(out, y[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# --- loss arithmetic -------------------------------------------------------------------------------------


def test_soft_target_loss_is_temperature_scaled_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    temp = 4.0
    ps, pt = torch.softmax(s / temp, 1).numpy(), torch.softmax(t / temp, 1).numpy()
    expected = float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))) * temp ** 2
    assert math.isclose(float(soft_target_loss(s, t, temp)), expected, rel_tol=1e-5)
    assert float(soft_target_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-6)


def test_soft_target_gradient_keeps_its_scale_across_temperatures():
    # The T^2 factor exists so that raising T does not shrink the soft-target gradients (Hinton et al.).
    g = torch.Generator().manual_seed(1)
    t = torch.randn(64, 3, generator=g) * 3
    norms = []
    for temp in (2.0, 8.0):
        s = (t + torch.randn(64, 3, generator=g) * 0.5).requires_grad_(True)
        soft_target_loss(s, t, temp).backward()
        norms.append(float(s.grad.norm()))
    assert 0.2 < norms[1] / norms[0] < 5.0


def test_kd_loss_mixes_soft_and_hard_by_alpha():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    soft, hard = soft_target_loss(s, t, 3.0), F.cross_entropy(s, y, weight=w)
    for alpha in (0.0, 0.3, 1.0):
        cfg = DistillConfig(temperature=3.0, alpha=alpha)
        got = kd_loss("classification", s, t, y, cfg, w)
        assert float(got) == pytest.approx(alpha * float(soft) + (1 - alpha) * float(hard), rel=1e-6)


def test_pixel_kd_bce_and_mse():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 1, 9, 7, generator=g), torch.randn(2, 1, 9, 7, generator=g)
    p = torch.sigmoid(t)
    expected = -(p * F.logsigmoid(s) + (1 - p) * F.logsigmoid(-s)).mean()
    assert float(pixel_kd_loss(s, t, "bce")) == pytest.approx(float(expected), rel=1e-5)
    assert float(pixel_kd_loss(s, t, "mse")) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-6)
    # BCE against soft targets is minimal (not zero) where the student copies the teacher.
    assert float(pixel_kd_loss(t, t, "bce")) < float(pixel_kd_loss(s, t, "bce"))
    masks = (torch.rand(2, 9, 7, generator=g) > 0.5).to(torch.uint8)
    cfg = DistillConfig(alpha=0.25, temperature=1.0)
    mixed = kd_loss("segmentation", s, t, masks, cfg)
    assert float(mixed) == pytest.approx(0.25 * float(expected) + 0.75 * float(segmentation_loss(s, masks)), rel=1e-5)


def test_teacher_at_another_size_is_fed_its_own_size():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 1, *x.shape[-2:])

    out = teacher_logits(Probe(), torch.zeros(2, 1, 48, 48), teacher_size=(96, 96))
    assert seen == [(96, 96)] and tuple(out.shape) == (2, 1, 48, 48)


# --- config -----------------------------------------------------------------------------------------------


def test_distill_config_rejects_unknown_and_bad_values():
    assert DistillConfig.from_dict({"temperature": 2.0, "epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="unknown DistillConfig keys"):
        DistillConfig.from_dict({"temprature": 2.0})
    for bad in ({"alpha": 1.5}, {"temperature": 0}, {"seg_kd": "kl"}, {"epochs": 0}):
        with pytest.raises(ValueError):
            DistillConfig.from_dict(bad)
    assert DistillConfig.from_dict(DistillConfig().to_dict()) == DistillConfig()


# --- real data --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [True, False])
def test_distill_few_steps_lowers_kd_loss_classification(xray_cls_dir, augment):
    spec = task("xray-cls")
    train_ds = real_split(xray_cls_dir, spec, "train", 96, 48)
    val_ds = real_split(xray_cls_dir, spec, "val", 48, 48)
    teacher = quick_teacher(spec, "student_s", train_ds)
    torch.manual_seed(1)
    student = build("student_s", 3)
    cfg = DistillConfig(temperature=4.0, alpha=0.7, epochs=3, batch_size=16, lr=3e-3, augment=augment, patience=3)
    x, y = torch.from_numpy(train_ds.images), torch.as_tensor(train_ds.targets)
    t_out = teacher_logits(teacher, x)

    def loss_now():
        with torch.no_grad():
            return float(kd_loss("classification", student.eval()(x), t_out, y, cfg))

    before = loss_now()
    student, report = distill(teacher, student, spec, train_ds, val_ds, cfg)
    assert loss_now() < 0.8 * before, report
    assert report["epochs_run"] == 3 and 1 <= report["best_epoch"] <= 3
    assert not any(p.requires_grad for p in teacher.parameters()), "the teacher must stay frozen"


def test_distill_few_steps_lowers_kd_loss_segmentation(xray_seg_dir):
    spec = task("xray-seg")
    train_ds = real_split(xray_seg_dir, spec, "train", 32, 32)
    val_ds = real_split(xray_seg_dir, spec, "val", 12, 32)
    teacher = quick_teacher(spec, "unet_student", train_ds, epochs=4)
    torch.manual_seed(1)
    student = build("unet_student", 1)
    cfg = DistillConfig(temperature=1.0, alpha=0.5, epochs=3, batch_size=8, lr=3e-3, augment=False, patience=3)
    x, y = torch.from_numpy(train_ds.images), torch.as_tensor(train_ds.targets)
    t_out = teacher_logits(teacher, x)

    def loss_now():
        with torch.no_grad():
            return float(kd_loss("segmentation", student.eval()(x), t_out, y, cfg))

    before = loss_now()
    student, report = distill(teacher, student, spec, train_ds, val_ds, cfg)
    assert loss_now() < before, report


def test_early_stopping_restores_best_weights(xray_cls_dir, monkeypatch):
    spec = task("xray-cls")
    train_ds = real_split(xray_cls_dir, spec, "train", 32, 32)
    val_ds = real_split(xray_cls_dir, spec, "val", 16, 32)
    scores = iter([0.7, 0.6, 0.5, 0.4, 0.3])
    states = []

    def fake_evaluate(spec_, outputs, targets, threshold=None):
        states.append({k: v.clone() for k, v in student.state_dict().items()})
        return {"score": next(scores)}

    monkeypatch.setattr(D, "evaluate", fake_evaluate)
    teacher = build("student_s", 3).eval()
    student = build("student_s", 3)
    cfg = DistillConfig(epochs=5, patience=2, batch_size=16, augment=False)
    student, report = distill(teacher, student, spec, train_ds, val_ds, cfg)
    assert report["epochs_run"] == 3 and report["best_epoch"] == 1
    for k, v in student.state_dict().items():
        assert torch.equal(v, states[0][k]), k
