"""The compress pipeline on a tiny real-data pack: bundle contents, gate failure, back-off, baseline export, CLI.

A module fixture cuts a balanced 96/48/36-image pack out of the X-ray dev data and trains a 48-px baseline for a
few seconds; each recipe then runs in seconds with one torch thread.
"""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from lungedge.compress import cli
from lungedge.compress import stages as S
from lungedge.compress.pipeline import compress
from lungedge.compress.recipe import Recipe, load_recipe
from lungedge.compress.summary import render
from lungedge.models.train import TrainConfig, train
from lungedge.runtime.bundle import Bundle
from lungedge.runtime.datasets import read_manifest_csv
from lungedge.runtime.selftest import run_selftest


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_pack(src, dst, per_label=(("train", 32), ("val", 16), ("test", 12))):
    """A dev-pack folder (manifest.csv with absolute image paths) holding a balanced subset of ``src``."""
    os.makedirs(dst, exist_ok=True)
    records = read_manifest_csv(src)
    rows = []
    for split, n in per_label:
        for label in sorted({r.label for r in records}):
            rows += [r for r in records if r.split == split and r.label == label][:n]
    with open(os.path.join(dst, "manifest.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "patient_id", "split"])
        for r in rows:
            writer.writerow([os.path.abspath(r.image), r.label, r.patient_id, r.split])
    return dst


def _data_root():
    """The X-ray dev pack, found as tests/conftest.py finds it (module fixtures cannot use its function fixtures)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(os.environ.get("LUNGEDGE_DATA", os.path.join(root, "..", "shared", "data")), "xray-cls")
    if not os.path.isfile(os.path.join(path, "manifest.csv")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev pack folder {path} is missing under CI=true")
        pytest.skip(f"dev pack folder {path} not present (set LUNGEDGE_DATA)")
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """(data folder, baseline run folder): a tiny X-ray pack and a 48-px student_s trained on it for seconds."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    data = tiny_pack(_data_root(), str(root / "data"))
    run = str(root / "baseline")
    train(TrainConfig(task="xray-cls", data=data, arch="student_s", size=48, epochs=4, batch_size=16, threads=1,
                      patience=4), run)
    return data, run


def small_recipe(**changes):
    """The shipped demo recipe at the baseline's size with fewer steps and both INT8 flavours plus FP16."""
    d = load_recipe("demo").to_dict()
    d.update(input_size=0, fp16=True)
    d["distill"].update(epochs=2, steps_per_epoch=4)
    d["prune_finetune"].update(steps_per_epoch=2)
    for q in d["quantize"]:
        q["num_images"] = 24
    d["backoff"]["sensitivity_images"] = 16
    # 16 positives on validation: a re-fitted Youden point swings sensitivity by +-0.3, so gate on AUC only.
    d["gate"].update(auc_drop=0.15, sensitivity_drop=None, specificity_drop=None)
    d.update(changes)
    return Recipe.from_dict(d)


def test_compress_writes_a_verified_gated_bundle(pack, tmp_path, monkeypatch):
    data, run = pack
    recipe_file = tmp_path / "recipe.json"
    recipe = small_recipe()
    recipe_file.write_text(json.dumps(recipe.to_dict()))
    out = tmp_path / "bundle"
    rc = cli.main(["compress", "--recipe", str(recipe_file), "--baseline", run, "--data", data, "--out", str(out),
                   "--threads", "1", "--time-runs", "3"])
    assert rc == 0
    bundle = Bundle.load(str(out))  # validates the manifest and every sha256
    m = bundle.manifest
    arts = m["artifacts"]
    assert set(arts) == {"onnx-fp32", "onnx-int8", "onnx-int8-trt", "onnx-fp16"}
    assert (arts["onnx-int8"]["backend"], arts["onnx-int8"]["precision"], arts["onnx-int8"]["flavour"]) == \
        ("onnxruntime", "int8", "ort_cpu")
    assert (arts["onnx-int8-trt"]["backend"], arts["onnx-int8-trt"]["format"], arts["onnx-int8-trt"]["flavour"]) == \
        ("tensorrt-source", "onnx", "tensorrt")
    assert arts["onnx-fp16"]["precision"] == "fp16"
    # One manifest threshold: the default artifact's, itself fitted on validation; each artifact keeps its own.
    assert m["metrics"]["default_artifact"] == bundle.find_artifact("onnxruntime") == "onnx-int8"
    assert m["thresholds"] == {"covid": arts["onnx-int8"]["threshold"]}
    for key, art in arts.items():
        got = m["metrics"]["artifacts"][key]
        assert got["val"]["threshold"] == art["threshold"] == got["test"]["threshold"]
        assert got["gate"]["passed"]
    assert not os.path.exists(str(out) + ".partial")
    # Provenance: the recipe as run, the calibration set, the baseline, versions.
    prov = m["provenance"]
    assert Recipe.from_dict(prov["recipe"]) == recipe
    assert prov["calibration"]["onnx-int8"]["split"] == "train" and prov["calibration"]["onnx-int8"]["count"] == 24
    assert prov["baseline"]["arch"] == "student_s" and len(prov["baseline"]["weights_sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime"} <= set(prov["versions"]) and prov["created"]
    metrics = m["metrics"]
    assert metrics["verify_onnx"]["passed"] and metrics["compressed"]["macs_ratio"] < 1.0
    assert [d["stage"] for d in metrics["gate"]][:3] == ["distill", "prune", "export"]
    assert set(metrics["cpu_latency_ms"]) >= {"baseline", "onnx-fp32", "onnx-int8"}
    # Golden file: real validation inputs, FP32 outputs, and a tolerance every shipped precision meets.
    with np.load(os.path.join(str(out), "golden.npz")) as g:
        assert g["inputs"].shape == (4, 1, 48, 48) and g["outputs"].shape == (4, 3)
    for precision in ("fp32", "int8"):
        assert run_selftest(str(out), precision=precision, threads=1)["passed"]
    # The CPU default: the fastest measured candidate among those passing the gate, and it self-tests.
    choice = m["cpu_default"]
    passed = [c for c in choice["candidates"] if c["gate_passed"]]
    assert {c["artifact"] for c in choice["candidates"]} == {"onnx-fp32", "onnx-int8", "onnx-fp16"}
    assert choice["latency_ms"] == min(c["latency_ms"] for c in passed) and choice["cpu"]
    assert (choice["artifact"], choice["backend"]) in {(c["artifact"], c["backend"]) for c in passed}
    assert run_selftest(str(out), backend="auto", threads=1)["passed"]
    text = render(m)
    assert "onnx-int8-trt" in text and "PASS" in text and "MMACs" in text
    _check_quality_calibration(str(out), m, data)


def _check_quality_calibration(out, m, data):
    """Every ONNX Runtime artifact has its own OOD calibration, on its own features, applied by the runtime."""
    from lungedge.runtime.ood import OodScorer
    from lungedge.runtime.predictor import Predictor

    ood = m["quality"]["ood"]
    assert m["quality"]["view"] == "frontal"
    assert set(ood) == {"onnx-fp32", "onnx-int8", "onnx-fp16"}  # not the TensorRT source model
    for entry in ood.values():
        assert entry["feature_output"] == "features" and entry["acceptance"] == 0.99
        assert entry["val_accepted_both"] >= 0.95
        assert entry["calibrated_on"] == "val split, 48 images"
    assert ood["onnx-int8"]["thresholds"] != ood["onnx-fp32"]["thresholds"]  # INT8 features shift
    bundle = Bundle.load(out)
    assert OodScorer.from_bundle(bundle, "onnx-int8").means.shape[0] == 3
    val = [r for r in read_manifest_csv(data) if r.split == "val"]
    for precision in ("fp32", "int8"):
        predictor = Predictor.from_bundle(out, precision=precision, threads=1)
        results = [predictor.predict(r.image) for r in val]
        results = [r for r in results if not any(f["stage"] != "model" and f["status"] == "refuse"
                                                 for f in r["quality"]["reasons"])]  # reached the model
        assert len(results) >= 0.95 * len(val)
        key = predictor.artifact_key
        assert all(r["quality"]["ood"]["checked"] for r in results)
        assert all(r["quality"]["thresholds"]["model"] == ood[key]["thresholds"] for r in results)
        # The runtime's scores on validation images reproduce the calibration: 99% accepted by each score.
        for score in ("mahalanobis", "energy"):
            values = np.array([r["quality"]["scores"][f"ood_{score}"] for r in results])
            assert np.mean(values <= ood[key]["thresholds"][score]) >= 0.95


def test_recipe_that_must_fail_stops_with_a_report_and_no_bundle(pack, tmp_path, capsys):
    data, run = pack
    out = tmp_path / "never"
    rc = cli.main(["compress", "--recipe", "test-gate-fail", "--baseline", run, "--data", data, "--out", str(out),
                   "--threads", "1", "--time-runs", "0"])
    assert rc == 1
    assert not out.exists() and not os.path.exists(str(out) + ".partial")
    err = capsys.readouterr().err
    assert "GATE FAILED" in err and "pruned-0.05" in err and "pruned-0.08" in err
    with open(str(out) + ".gate-report.json", encoding="utf-8") as fh:
        report = json.load(fh)
    assert report["stage"] == "prune" and report["recipe"] == "test-gate-fail"
    tried = [d["setting"]["macs_ratio"] for d in report["decisions"]]
    assert tried == [0.05, 0.08] and not any(d["verdict"]["passed"] for d in report["decisions"])
    auc = report["decisions"][0]["verdict"]["checks"][0]
    assert auc["metric"] == "auc" and auc["drop"] > 0 and auc["tolerance"] == 0.0


def test_recipe_that_must_recover_backs_off_to_less_pruning(pack, tmp_path):
    data, run = pack
    out = compress("test-gate-recover", run, data, str(tmp_path / "b"), threads=1)
    m = Bundle.load(out).manifest
    decisions = m["metrics"]["gate"]
    assert decisions[0]["setting"]["macs_ratio"] == 0.05 and not decisions[0]["verdict"]["passed"]
    assert decisions[0]["action"].startswith("backed off")
    assert decisions[1]["setting"]["macs_ratio"] == 1.0 and decisions[1]["verdict"]["passed"]
    assert m["metrics"]["prune"]["config"]["macs_ratio"] == 1.0
    assert m["metrics"]["prune"]["requested_macs_ratio"] == 0.05
    assert set(m["artifacts"]) == {"onnx-fp32", "onnx-int8"}


def test_int8_backoff_walks_calibration_methods_then_float_nodes(pack, tmp_path, monkeypatch):
    """The gate is made to refuse the first four INT8 settings: the ladder must then keep the first conv, the
    head and the most sensitive node in float, and ship that model."""
    data, run = pack
    real_gate = S.gate_onnx
    refused = {"n": 0}

    def strict_gate(run_, path, variant="variant"):
        verdict = real_gate(run_, path, variant)
        if variant == "onnx-int8" and refused["n"] < 4:
            refused["n"] += 1
            return dataclasses.replace(verdict, passed=False)
        return verdict

    monkeypatch.setattr(S, "gate_onnx", strict_gate)
    recipe = small_recipe(student="none", distill=None, prune=None, prune_finetune=None, fp16=False,
                          quantize=[{"flavour": "ort_cpu", "calibration_method": "minmax", "num_images": 24}])
    out = compress(recipe, run, data, str(tmp_path / "b"), threads=1)
    m = Bundle.load(out).manifest
    tries = [d for d in m["metrics"]["gate"] if d["variant"] == "onnx-int8"]
    settings = [(d["setting"]["calibration_method"], len(d["setting"]["nodes_to_exclude"])) for d in tries]
    assert settings == [("minmax", 0), ("percentile", 0), ("minmax", 2), ("percentile", 2), ("minmax", 3)]
    assert [d["action"] for d in tries] == ["backed off"] * 4 + ["accepted"]
    kept = tries[-1]["setting"]["nodes_to_exclude"]
    assert kept[0].endswith("Conv") and kept[1].endswith("Gemm")  # the stem conv and the fc head
    assert list(tries[-1]["setting"]["sensitivity_sqnr_db"]) == [kept[2]]
    qdq = m["artifacts"]["onnx-int8"]["qdq"]
    assert qdq["weighted_ops"] - qdq["quantized_weighted_ops"] == 3
    assert m["metrics"]["artifacts"]["onnx-int8"]["gate"]["passed"]


def test_export_baseline_bundle(pack, tmp_path):
    data, run = pack
    out = str(tmp_path / "base")
    rc = cli.main(["export", "onnx", "--baseline", run, "--data", data, "--out", out, "--threads", "1"])
    assert rc == 0
    m = Bundle.load(out).manifest
    assert list(m["artifacts"]) == ["onnx-fp32"] and m["name"] == "xray-cls-student_s-fp32"
    assert m["input"]["shape"] == [-1, 1, 48, 48] and m["preprocessing"][1]["size"] == [48, 48]
    base, fp32 = m["metrics"]["baseline"]["val"], m["metrics"]["artifacts"]["onnx-fp32"]["val"]
    assert fp32["auc"] == pytest.approx(base["auc"], abs=1e-6)
    assert m["thresholds"]["covid"] == pytest.approx(base["threshold"], abs=1e-4)
    assert run_selftest(out, threads=1)["passed"]
    assert cli.main(["export", "onnx", "--baseline", run, "--data", data, "--out", out]) == 2  # exists, no --force


def test_engine_source_picks_the_matching_onnx():
    arts = {"onnx-fp32": {"backend": "onnxruntime", "precision": "fp32"},
            "onnx-int8": {"backend": "onnxruntime", "precision": "int8"},
            "onnx-int8-trt": {"backend": "tensorrt-source", "precision": "int8"},
            "onnx-fp16": {"backend": "onnxruntime", "precision": "fp16"}}
    m = {"artifacts": arts}
    assert cli.engine_source(m, "int8", 10) == "onnx-int8-trt"
    assert cli.engine_source(m, "fp16", 10) == "onnx-fp32"
    assert cli.engine_source(m, "fp16", 11) == "onnx-fp16"
    assert cli.engine_source(m, "fp32", 10) == "onnx-fp32"
    del arts["onnx-int8-trt"]
    with pytest.raises(Exception, match="onnx-int8-trt"):
        cli.engine_source(m, "int8", 10)


def test_cli_usage_errors_exit_2(pack, tmp_path, capsys):
    data, run = pack
    assert cli.main([]) == 2
    assert cli.main(["compress", "--recipe", "no-such-recipe", "--baseline", run, "--data", data,
                     "--out", str(tmp_path / "x")]) == 2
    assert "shipped" in capsys.readouterr().err
    wrong_task = str(tmp_path / "ct.json")
    with open(wrong_task, "w", encoding="utf-8") as fh:
        json.dump({"name": "ct", "task": "ct-cls"}, fh)
    assert cli.main(["compress", "--recipe", wrong_task, "--baseline", run, "--data", data,
                     "--out", str(tmp_path / "y")]) == 2
    assert "trained for xray-cls" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("task_name,arch,size,epochs", [("xray-cls", "student_s", 64, 3), ("ct-seg", "unet_student", 96, 4)])
def test_compress_full_dev_data(task_name, arch, size, epochs, tmp_path, request):
    """A real run: a small baseline trained on the whole dev split, then the demo-sized recipe, gated and verified."""
    torch.set_num_threads(2)
    data = request.getfixturevalue(task_name.replace("-", "_") + "_dir")
    run = str(tmp_path / "baseline")
    train(TrainConfig(task=task_name, data=data, arch=arch, size=size, epochs=epochs, batch_size=16, threads=2), run)
    d = load_recipe("demo").to_dict()
    d.update(task=task_name, student=arch, input_size=0)
    if task_name == "ct-seg":
        d["distill"].update(temperature=1.0, alpha=0.5)
        d["prune_finetune"].update(temperature=1.0, alpha=0.5)
        d["gate"] = {"dice_drop": 0.1}
    out = compress(Recipe.from_dict(d), run, data, str(tmp_path / "bundle"), threads=2, time_runs=10)
    m = Bundle.load(out).manifest
    assert m["metrics"]["artifacts"]["onnx-fp32"]["gate"]["passed"]
    assert run_selftest(out, threads=2)["passed"]


def test_engine_build_adds_a_fingerprinted_plan(pack, tmp_path, monkeypatch):
    """TensorRT faked (no GPU here): the CLI picks the source ONNX and records the plan with its fingerprint."""
    import types

    from lungedge.compress import engine

    data, run = pack
    out = str(tmp_path / "base")
    assert cli.main(["export", "onnx", "--baseline", run, "--data", data, "--out", out, "--threads", "1"]) == 0
    built = {}

    def fake_build(onnx_path, engine_path, config, input_name="image", input_hw=None):
        built.update(onnx=os.path.basename(onnx_path), hw=input_hw, precision=config.precision, dla=config.dla_core)
        with open(engine_path, "wb") as fh:
            fh.write(b"plan")
        return {"trt_version": "10.3.0", "device_name": "Orin", "compute_capability": "8.7",
                "precision": config.precision, "dla_core": config.dla_core, "input_hw": list(input_hw)}

    monkeypatch.setattr(engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(engine, "build_engine", fake_build)
    cache = str(tmp_path / "timing.cache")
    assert cli.main(["engine", "build", out, "--precision", "fp16", "--dla-core", "0", "--timing-cache", cache]) == 0
    assert built == {"onnx": "model.onnx", "hw": (48, 48), "precision": "fp16", "dla": 0}
    m = Bundle.load(out).manifest
    entry = m["artifacts"]["trt-fp16-dla0"]
    assert (entry["backend"], entry["format"], entry["precision"], entry["path"]) == \
        ("tensorrt", "plan", "fp16", "model-fp16-dla0.plan")
    assert {"trt_version", "device_name", "compute_capability"} <= set(entry) and entry["source"] == "onnx-fp32"
    assert entry["threshold"] == m["artifacts"]["onnx-fp32"]["threshold"]
    assert entry["engine_config"]["timing_cache"] == cache
    assert cli.main(["engine", "build", out, "--precision", "int8"]) == 2  # no TensorRT QDQ model in this bundle
