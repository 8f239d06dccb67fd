"""Feature export as a second ONNX output and the per-artifact OOD calibration (tiny torch models, no data)."""

import numpy as np
import onnx
import pytest
import torch

from lungedge.compress.export import FEATURE_NAME, OUTPUT_NAME, WithFeatures, export_onnx
from lungedge.compress.quality import area_bands, calibrate_artifact
from lungedge.runtime.ood import energy, mahalanobis


class Tiny(torch.nn.Module):
    """Conv -> ReLU -> global average pool -> Linear(6 -> 3): the pooled vector is 6-dimensional."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _images(n, seed, shift=0.0):
    return (np.random.default_rng(seed).normal(shift, 1.0, (n, 1, 16, 16))).astype(np.float32)


@pytest.fixture
def exported(tmp_path):
    model = Tiny().eval()
    path = str(tmp_path / "model.onnx")
    export_onnx(model, path, (16, 16), features=True)
    return model, path


def test_features_are_the_input_of_the_last_linear_layer(exported):
    model, path = exported
    assert [o.name for o in onnx.load(path).graph.output] == [OUTPUT_NAME, FEATURE_NAME]  # logits first
    import onnxruntime as ort

    x = _images(5, 1)
    logits, feats = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.no_grad():
        pooled = torch.relu(model.conv(torch.from_numpy(x))).mean(dim=(2, 3)).numpy()
        want = model(torch.from_numpy(x)).numpy()
    assert feats.shape == (5, 6) and np.allclose(feats, pooled, atol=1e-5) and np.allclose(logits, want, atol=1e-5)
    assert not model.fc._forward_pre_hooks  # the export leaves no hook behind
    with pytest.raises(ValueError, match="no Linear head"):
        WithFeatures(torch.nn.Conv2d(1, 1, 1))


def test_calibration_reproduces_its_acceptance(exported):
    _, path = exported
    train, val = _images(60, 2), _images(100, 3)
    labels = np.arange(60) % 3
    means, precision, entry = calibrate_artifact(path, train, labels, val, 3, acceptance=0.9, threads=1)
    assert means.shape == (3, 6) and precision.shape == (6, 6) and means.dtype == np.float32
    assert entry["feature_output"] == FEATURE_NAME and entry["acceptance"] == 0.9 and entry["feature_dim"] == 6
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits, feats = sess.run(None, {"image": val})
    d = mahalanobis(feats, means, precision)
    assert np.mean(d <= entry["thresholds"]["mahalanobis"]) == 0.9
    assert np.mean(energy(logits) <= entry["thresholds"]["energy"]) == 0.9
    both = np.mean((d <= entry["thresholds"]["mahalanobis"]) & (energy(logits) <= entry["thresholds"]["energy"]))
    assert entry["val_accepted_both"] == pytest.approx(both)
    # Far-off inputs score far above the in-distribution threshold.
    far = mahalanobis(sess.run(None, {"image": _images(20, 4, shift=6.0)})[1], means, precision)
    assert np.mean(far > entry["thresholds"]["mahalanobis"]) >= 0.9


def test_area_bands_from_training_masks():
    masks = np.zeros((200, 10, 10), np.uint8)
    for i in range(200):
        masks[i, :, :i % 10 + 1] = 1  # lung fractions 0.1 .. 1.0, twenty of each
    masks[:, 0, 0] = 255  # the 'ignore' value counts as neither
    bands = area_bands(masks, ["background", "lung"])
    low, high = np.quantile([(m == 1).mean() for m in masks], (0.005, 0.995))
    assert bands == {"lung": [round(low * 0.5, 6), round(min(1.0, high * 1.5), 6)]}
    multi = area_bands(np.stack([np.eye(4, dtype=np.uint8) * 2] * 3), ["background", "ggo", "consolidation"])
    assert multi == {"ggo": [0.0, 0.0], "consolidation": [0.125, 0.375]}


def test_feature_output_keeps_its_name_when_the_head_input_is_already_flat(tmp_path):
    """DenseNet flattens before its Linear head: the exported feature tensor must still be called 'features'."""
    import onnx
    import torch

    from lungedge.compress.export import FEATURE_NAME, OUTPUT_NAME, export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    path = export_onnx(model, str(tmp_path / "m.onnx"), (16, 16), features=True)
    assert [o.name for o in onnx.load(path).graph.output] == [OUTPUT_NAME, FEATURE_NAME]
