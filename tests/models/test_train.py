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
    import torch.nn.functional as F

    from lungedge.models.data import IGNORE
    from lungedge.models.losses import segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 1, 4, 4)
    mask = torch.zeros((1, 4, 4), dtype=torch.uint8)
    mask[0, :2] = 1
    mask[0, 3, 2:] = IGNORE  # two ignored pixels, one over each side of the logit sign
    loss = segmentation_loss(logits, mask)
    assert torch.isfinite(loss)
    # Whatever the logits under the ignored pixels, the loss must not move...
    moved = logits.clone()
    moved[0, 0, 3, 2:] = torch.tensor([50.0, -50.0])
    assert torch.allclose(loss, segmentation_loss(moved, mask))
    # ...and it equals BCE + soft DICE over the counted pixels alone, computed here by hand.
    valid = mask[0] != IGNORE
    logit, target = logits[0, 0][valid], (mask[0][valid] == 1).float()
    prob = torch.sigmoid(logit)
    by_hand = (F.binary_cross_entropy_with_logits(logit, target)
               + 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1))
    assert torch.allclose(loss, by_hand)
    # A loss that counted the ignored pixels (as background, or as foreground) would differ, so the checks above
    # fail for a loss that does not ignore them.
    for label in (0, 1):
        counted = mask.clone()
        counted[0, 3, 2:] = label
        assert not torch.allclose(loss, segmentation_loss(logits, counted))
        assert not torch.allclose(segmentation_loss(logits, counted), segmentation_loss(moved, counted))


def test_config_rejects_unknown_keys():
    import pytest

    from lungedge.models.errors import TrainConfigError

    with pytest.raises(TrainConfigError, match="unknown") as err:
        TrainConfig.from_dict({"task": "xray-cls", "data": ".", "lr_max": 1})
    assert isinstance(err.value, ValueError)  # callers that catch ValueError keep working


def test_unknown_names_raise_typed_lookup_errors():
    import pytest

    from lungedge.models.errors import UnknownArchitecture
    from lungedge.models.registry import build, kind_of
    from lungedge.runtime.errors import UnknownName
    from lungedge.runtime.tasks import task

    for call in (lambda: build("resnet19", 2), lambda: kind_of("resnet19")):
        with pytest.raises(UnknownArchitecture, match="use one of .*resnet18") as err:
            call()
        assert isinstance(err.value, (KeyError, UnknownName)) and str(err.value).startswith("unknown architecture 'resnet19'")
    with pytest.raises(UnknownName, match="known: ct-cls") as err:
        task("xray-det")
    assert isinstance(err.value, KeyError)


def test_source_balanced_weights_shrink_the_big_cells():
    import numpy as np

    from lungedge.models.train import class_weights, source_balanced_weights

    sources = ["nih"] * 90 + ["ieee"] * 10
    targets = [1] * 90 + [0] * 10
    w = source_balanced_weights(sources, targets)
    assert np.isclose(w.sum(), 1.0)
    # Cells get mass proportional to sqrt(count): 9.49 vs 3.16, i.e. 75 % vs 25 % (plain shuffling: 90 vs 10).
    assert np.isclose(w[:90].sum(), 90 ** 0.5 / (90 ** 0.5 + 10 ** 0.5))
    cw = class_weights(np.array(targets), 2, w)
    assert np.isclose(cw[0] / cw[1], 3.0)  # the class weights follow the sampled mix, not the raw counts


def test_augment_levels_keep_shapes_and_masks_aligned():
    from lungedge.models.data import AUGMENT_LEVELS, augment

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    m = (torch.rand(4, 32, 32) > 0.5).to(torch.uint8)
    for level in AUGMENT_LEVELS.values():
        y, m2 = augment(x, m, generator=g, level=level)
        assert y.shape == x.shape and m2.shape == m.shape and torch.isfinite(y).all()
        assert set(m2.unique().tolist()) <= {0, 1}


def test_lung_crop_training_is_recorded_and_reaches_the_bundle(xray_cls_dir, tmp_path):
    """Train on lung crops (tiny segmenter bundle), then export: the bundle names the crop and its segmenter."""
    import sys

    import pytest

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "runtime"))
    from tinymodels import segmenter_model, write_bundle

    from lungedge.compress.pipeline import export_baseline
    from lungedge.runtime.bundle import Bundle
    from lungedge.runtime.pipelines import input_crop

    lungs = write_bundle(tmp_path / "lungs", segmenter_model(1), "segmentation", "xray", ["background", "lung"],
                         {"mask": 0.5}, kind="probabilities")
    out = str(tmp_path / "run")
    cfg = TrainConfig(task="xray-cls", data=xray_cls_dir, arch="student_s", size=32, epochs=1, batch_size=64,
                      threads=2, lung_bundle=lungs, lung_margin=0.1, balance="source", augment_level="strong")
    train(cfg, out)
    with open(os.path.join(out, "config.json")) as fh:
        recorded = json.load(fh)
    crop = recorded["input_crop"]
    assert crop["kind"] == "lung_box" and crop["margin"] == 0.1
    assert crop["segmenter_manifest_sha256"] == Bundle.load(lungs).manifest_sha256
    bundle = export_baseline(out, str(tmp_path / "bundle"), threads=2)
    assert input_crop(Bundle.load(bundle).manifest) == crop
    with pytest.raises(ValueError, match="X-ray classification"):
        train(TrainConfig(task="xray-seg", data=xray_cls_dir, arch="unet_student", lung_bundle=lungs),
              str(tmp_path / "bad"))
