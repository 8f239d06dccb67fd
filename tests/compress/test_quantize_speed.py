"""Why ort_cpu is U8S8: FP32 vs unsigned-activation INT8 vs signed-activation INT8 on ONNX Runtime CPU.

A tiny conv + batch norm + ReLU net, calibrated on real X-rays, timed single-threaded with the models interleaved
(the best of several rounds, so a busy machine slows all alike). Run with ``pytest -m slow -s`` to see the table.
"""

import time

import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import QuantType, quantize_static
from torch import nn

from lungedge.compress.calibration import CalibrationReader
from lungedge.compress.export import export_onnx
from lungedge.compress.quantize import QuantConfig, _pre_process, ort_arguments, quantize_onnx
from lungedge.models.blocks import conv_bn_act
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.preprocess import xray_steps

SIZE = 128


def _tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(conv_bn_act(1, 32, 3, 2), conv_bn_act(32, 64, 3, 2), conv_bn_act(64, 64, 3, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 3)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def _best_ms(sessions, x, rounds=15, runs=20):
    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"image": x})
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(runs):
                s.run(None, {"image": x})
            best[k] = min(best[k], (time.perf_counter() - t) / runs * 1e3)
    return best


@pytest.mark.slow
def test_u8s8_is_the_fast_cpu_form(xray_cls_dir, tmp_path):
    fp32 = export_onnx(_tiny_net(), str(tmp_path / "fp32.onnx"), (SIZE, SIZE))
    reader = CalibrationReader(select(read_manifest_csv(xray_cls_dir), split="train"), xray_steps(SIZE),
                               batch_size=8, limit=16)
    paths = {"fp32": fp32}
    for flavour in ("ort_cpu", "tensorrt"):
        paths[flavour] = quantize_onnx(fp32, str(tmp_path / f"{flavour}.onnx"), reader,
                                       QuantConfig(flavour=flavour, num_images=16))["path"]
    # Plain S8S8: the ort_cpu form with signed symmetric activations, to isolate the activation type.
    args = ort_arguments(QuantConfig(flavour="ort_cpu", num_images=16))
    args["activation_type"] = QuantType.QInt8
    args["extra_options"]["ActivationSymmetric"] = True
    _pre_process(fp32, str(tmp_path / "pre.onnx"))
    reader.rewind()
    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "s8s8.onnx"), reader, **args)
    paths["s8s8"] = str(tmp_path / "s8s8.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = next(reader.batches())[:1]
    ms = _best_ms(sessions, x)
    for k, v in ms.items():
        print(f"{k:9s} {v:7.3f} ms  x{ms['fp32'] / v:4.2f} vs fp32")
    assert ms["ort_cpu"] < ms["fp32"] / 1.2
    assert ms["ort_cpu"] < ms["s8s8"] and ms["ort_cpu"] < ms["tensorrt"]
