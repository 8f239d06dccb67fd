"""Baseline training on real data: a tiny run trains, checkpoints, resumes and reloads with weights_only."""

import json
import os

import torch

from lungedge.models.train import TrainConfig, load_checkpoint, load_model, train


def test_train_resume_and_reload(xray_cls_dir, tmp_path, manifest_rows):
    out = str(tmp_path / "run")
    cfg = TrainConfig(task="xray-cls", data=xray_cls_dir, arch="student_s", size=48, epochs=1, batch_size=32,
                      threads=2)
    metrics = train(cfg, out)
    n_test = sum(r["split"] == "test" for r in manifest_rows(xray_cls_dir))
    assert set(os.listdir(out)) >= {"config.json", "best.pt", "last.pt", "history.jsonl", "metrics.json"}
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["n_test"] == n_test
    # Resume continues from the saved epoch instead of starting over.
    metrics2 = train(TrainConfig(**{**cfg.__dict__, "epochs": 2}), out, resume=True)
    with open(os.path.join(out, "history.jsonl")) as fh:
        epochs = [json.loads(line)["epoch"] for line in fh]
    assert epochs == [1, 2]
    state = load_checkpoint(os.path.join(out, "last.pt"))
    assert int(state["epoch"]) == 1
    model, cfg2 = load_model(out)
    assert cfg2.arch == "student_s" and model(torch.zeros(1, 1, 48, 48)).shape == (1, 3)
    assert metrics2["val"]["threshold"] == metrics2["test"]["threshold"]  # fitted on val, applied to test


def test_segmentation_loss_ignores_ignore_label():
    from lungedge.models.train import segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 1, 4, 4)
    mask = torch.zeros((1, 4, 4), dtype=torch.uint8)
    mask[0, :2] = 1
    mask[0, 3, 3] = 255  # one ignored pixel
    a = segmentation_loss(logits, mask)
    # Whatever the logit under the ignored pixel, the loss must not move...
    moved = logits.clone()
    moved[0, 0, 3, 3] = 50.0
    assert torch.isfinite(a) and torch.allclose(a, segmentation_loss(moved, mask))
    # ...while the same change on a counted pixel does (so the check above can fail).
    counted = mask.clone()
    counted[0, 3, 3] = 0
    assert not torch.allclose(segmentation_loss(logits, counted), segmentation_loss(moved, counted))


def test_config_rejects_unknown_keys():
    import pytest

    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"task": "xray-cls", "data": ".", "lr_max": 1})
