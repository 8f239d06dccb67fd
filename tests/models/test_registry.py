"""Every registered architecture: forward at an odd size, ONNX export agreeing with torch, 30% pruning."""

import numpy as np
import pytest
import torch

from lungedge.compress.export import check_onnx, export_onnx, verify_onnx
from lungedge.compress.prune import PruneConfig, count_macs, prune
from lungedge.models.registry import ARCHITECTURES, build, kind_of

NAMES = sorted(ARCHITECTURES)


def make(name):
    torch.manual_seed(0)
    n_out = 3 if kind_of(name) == "classification" else 1
    model = build(name, n_out).eval()
    # Non-trivial batch-norm statistics so that export and pruning see realistic numbers.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, n_out


@pytest.mark.parametrize("name", NAMES)
def test_forward_odd_size(name):
    model, n_out = make(name)
    with torch.no_grad():
        y = model(torch.randn(2, 1, 67, 75))
    expected = (2, n_out) if kind_of(name) == "classification" else (2, n_out, 67, 75)
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch(name, tmp_path):
    model, _ = make(name)
    path = export_onnx(model, str(tmp_path / "m.onnx"), (64, 64))
    m = check_onnx(path)
    assert m.opset_import[0].version >= 17
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param, "batch dimension must be dynamic"
    x = np.random.default_rng(0).normal(size=(3, 1, 64, 64)).astype(np.float32)  # batch 3 != export batch 2
    report = verify_onnx(model, path, x)
    assert report["passed"], report


@pytest.mark.parametrize("name", NAMES)
def test_prune_30_percent_channels_still_runs(name):
    model, n_out = make(name)
    example = torch.randn(1, 1, 64, 64)
    macs0, params0 = count_macs(model, example)
    convs0 = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # macs_ratio 0.49 -> channel ratio 0.3 in one step.
    log = prune(model, example, PruneConfig(macs_ratio=0.49, iterative_steps=1, round_to=1))
    convs1 = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    macs1, params1 = count_macs(model, example)
    assert convs1 < 0.85 * convs0 and params1 < params0 and macs1 < macs0, log
    with torch.no_grad():
        y = model.eval()(torch.randn(2, 1, 67, 75))
    assert y.shape[:2] == (2, n_out) and torch.isfinite(y).all()
