"""The stages of ``compress``, each gated on the VALIDATION split against the baseline, and their back-off ladders.

distill   the recipe's student from the baseline teacher (``compress.distill``)
prune     ``compress.prune`` with KD fine-tuning from the unpruned model; backs off along the MACs ladder
export    FP32 ONNX, verified against torch on real validation images
quantize  each INT8 flavour on real training images; backs off by calibration method and by keeping the first
          conv, the head, then the most sensitive nodes in float (``compress.sensitivity``)
fp16      an FP16 ONNX copy

Every verdict is recorded in ``run.decisions``; a stage that cannot pass raises GateFailed through ``run.fail``
(or, with ``on_variant_failure: drop``, leaves its variant out). TensorRT engines are built later, on the target,
into a finished bundle (``compress.engine.build_engine_into_bundle``).
"""

import copy
import dataclasses
import os
import shutil

import torch
from tqdm import tqdm

from lungedge.compress import gate as G
from lungedge.compress import sensitivity
from lungedge.compress.distill import distill
from lungedge.compress.errors import CompressError
from lungedge.compress.export import INPUT_NAME, export_onnx, verify_onnx
from lungedge.compress.prune import count_macs, prune
from lungedge.compress.recipe import QUANT_KEYS
from lungedge.compress.run import onnx_probabilities
from lungedge.models.evaluate import predict
from lungedge.models.losses import task_loss
from lungedge.models.registry import build
from lungedge.runtime.enums import TaskKind


def gate_torch(run, model, stage, variant, setting):
    """Gate a torch model (the student or a pruned net) on validation; records and returns the verdict."""
    verdict = G.gate(run.spec, run.baseline_val, predict(model, run.val_ds), run.val_ds.targets, run.recipe.gate,
                     name=variant)
    run.record(stage, variant, setting, verdict, "accepted" if verdict.passed else "rejected")
    return verdict


def gate_onnx(run, path, variant="variant"):
    """Verdict (not yet recorded) of an ONNX model on validation through ONNX Runtime."""
    return G.gate(run.spec, run.baseline_val, onnx_probabilities(run, path, run.val_ds), run.val_ds.targets,
                  run.recipe.gate, name=variant)


# --- distill ----------------------------------------------------------------------------------------------


def distill_stage(run):
    """The recipe's student distilled from the baseline (or a copy of the baseline when student is 'none')."""
    recipe = run.recipe
    if recipe.student == "none":
        return copy.deepcopy(run.baseline).eval(), None
    torch.manual_seed(recipe.seed)
    student = build(recipe.student, run.spec.num_outputs)
    student, report = distill(run.baseline, student, run.spec, run.train_ds, run.val_ds, recipe.distill,
                              teacher_size=run.teacher_size, desc=f"distill {recipe.student}")
    verdict = gate_torch(run, student, "distill", recipe.student, {"student": recipe.student})
    report["gate"] = verdict.to_dict()
    if not verdict.passed:
        run.fail("distill", f"the distilled {recipe.student} fails the gate before any pruning or quantization; "
                            "distill longer, pick a larger student, or loosen the gate")
    return student, report


# --- prune ------------------------------------------------------------------------------------------------


def _hard_loss(kind):
    """``loss(model, (images, targets))`` with the task's unweighted training loss (the Taylor importance's)."""
    loss = task_loss(kind)
    return lambda model, batch: loss(model(batch[0]), batch[1])


def prune_stage(run, model):
    """Prune with KD fine-tuning from the unpruned model; back off to larger MACs ratios until the gate passes."""
    recipe = run.recipe
    if recipe.prune is None:
        return model, None
    # The unpruned model teaches the pruned one; the baseline teaches when the student is the baseline itself.
    teacher, t_size = (run.baseline, run.teacher_size) if recipe.student == "none" else (model, None)
    example = torch.zeros(1, 1, run.size, run.size)
    macs0, params0 = count_macs(model, example)
    x = torch.from_numpy(run.train_ds.images[:64])
    y = torch.as_tensor(run.train_ds.targets[:64])
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]
    for ratio in recipe.backoff.prune_ratios(recipe.prune.macs_ratio):
        config = dataclasses.replace(recipe.prune, macs_ratio=ratio)
        candidate = copy.deepcopy(model).train()
        teacher_copy = copy.deepcopy(teacher)

        def fine_tune(m, step, ratio=ratio, teacher_copy=teacher_copy):
            distill(teacher_copy, m, run.spec, run.train_ds, run.val_ds, recipe.prune_finetune, teacher_size=t_size,
                    desc=f"prune {ratio:.2f} step {step + 1} fine-tune")

        tqdm.write(f"[prune] target MACs ratio {ratio:.2f} ({config.importance}, {config.iterative_steps} steps)")
        log = prune(candidate, example, config, loss_fn=_hard_loss(run.spec.kind), batches=batches,
                    fine_tune=fine_tune)
        candidate.eval()
        macs, params = count_macs(candidate, example)
        setting = {"macs_ratio": ratio, "achieved_macs_ratio": round(macs / macs0, 4),
                   "params_ratio": round(params / params0, 4)}
        verdict = gate_torch(run, candidate, "prune", f"pruned-{ratio:.2f}", setting)
        if verdict.passed:
            return candidate, {"config": dataclasses.asdict(config),
                               "requested_macs_ratio": recipe.prune.macs_ratio, "macs": macs, "params": params,
                               "macs_before": macs0, "params_before": params0, "steps": log,
                               "gate": verdict.to_dict()}
        run.decisions[-1]["action"] = "backed off: less pruning"
    run.fail("prune", f"no MACs ratio of {recipe.backoff.prune_ratios(recipe.prune.macs_ratio)} passes the gate; "
                      "add larger ratios to backoff.macs_ratios, fine-tune longer, or drop the prune section")


# --- export -----------------------------------------------------------------------------------------------


def export_stage(run, model, path):
    """FP32 ONNX of ``model`` verified against torch on real validation images; returns the verify report."""
    export_onnx(model, path, (run.size, run.size), opset=run.recipe.export.opset,
                features=run.spec.kind == TaskKind.CLASSIFICATION)
    images = run.val_ds.images[:run.recipe.export.verify_images]
    report = verify_onnx(model, path, images, "fp32")
    if not report["passed"]:
        raise CompressError(f"ONNX Runtime disagrees with torch on {report['n_images']} validation images "
                            f"(max relative diff {report['max_rel_diff']:.2e} > {report['tolerance']}); "
                            "the export is wrong, not the model: report it with the architecture name")
    return report


# --- quantize ---------------------------------------------------------------------------------------------


def calibration_reader(run, limit):
    """Real train-split images (the ones the task uses), preprocessed by the bundle's own steps."""
    from lungedge.compress.calibration import training_reader  # onnxruntime's quantization: INT8 recipes only

    return training_reader(run.data_dir, run.spec, run.steps, INPUT_NAME, limit=limit, crop=run.crop)


def quantize_stage(run, fp32_path, qconfig, out_path, work_dir):
    """One INT8 flavour walked down the back-off ladder; returns (report, verdict) or (None, None) if dropped."""
    from lungedge.compress.quantize import quantize_onnx

    key = QUANT_KEYS[_flavour(qconfig)]
    reader = calibration_reader(run, qconfig.num_images)
    io = sensitivity.io_nodes(fp32_path)
    ranked = {}

    def ranking():
        if "nodes" not in ranked:
            ranked.update(sensitivity.rank_sensitive_nodes(fp32_path, ranked["first_qdq"], reader,
                                                           run.recipe.backoff.sensitivity_images, work_dir))
        return ranked["nodes"]

    attempts = run.recipe.backoff.quant_attempts(_method(qconfig), io, ranking)
    tried = 0
    for i, (method, exclude) in enumerate(attempts):
        tried = i + 1
        config = dataclasses.replace(qconfig, calibration_method=method,
                                     nodes_to_exclude=tuple(qconfig.nodes_to_exclude) + tuple(exclude))
        attempt_path = os.path.join(work_dir, f"{key}-{i}.onnx")
        tqdm.write(f"[quantize] {key} attempt {i + 1}: {method}, {len(config.nodes_to_exclude)} node(s) in float")
        report = quantize_onnx(fp32_path, attempt_path, reader, config)
        ranked.setdefault("first_qdq", attempt_path)
        verdict = gate_onnx(run, attempt_path, key)
        setting = {"attempt": i + 1, "calibration_method": method, "nodes_to_exclude": list(config.nodes_to_exclude)}
        if ranked.get("ranking"):
            setting["sensitivity_sqnr_db"] = {r["node"]: r["sqnr_db"] for r in ranked["ranking"]
                                              if r["node"] in exclude and r["node"] not in io}
        if verdict.passed:
            run.record("quantize", key, setting, verdict, "accepted")
            shutil.copyfile(attempt_path, out_path)
            return dict(report, path=os.path.basename(out_path), attempts=tried), verdict
        run.record("quantize", key, setting, verdict, "backed off")
    if run.decisions and run.decisions[-1]["variant"] == key:
        run.decisions[-1]["action"] = "rejected: back-off ladder exhausted"
    if ranked.get("error"):
        tqdm.write(f"[quantize] sensitivity ranking unavailable: {ranked['error']}")
    if run.recipe.backoff.on_variant_failure == "drop":
        tqdm.write(f"[quantize] {key}: no setting passes the gate; left out of the bundle (on_variant_failure=drop)")
        return None, None
    run.fail(f"quantize {key}", f"{key} fails the gate at every one of {tried} settings (calibration methods x "
                                "nodes kept in float); widen backoff, or set on_variant_failure 'drop'")


def _flavour(qconfig):
    return getattr(qconfig.flavour, "value", qconfig.flavour)


def _method(qconfig):
    return getattr(qconfig.calibration_method, "value", qconfig.calibration_method)


# --- fp16 -------------------------------------------------------------------------------------------------


def fp16_stage(run, fp32_path, out_path):
    """An FP16 ONNX copy, gated; returns (report, verdict) or (None, None) if dropped."""
    from lungedge.compress.quantize import convert_fp16

    report = convert_fp16(fp32_path, out_path)
    verdict = gate_onnx(run, out_path, "onnx-fp16")
    run.record("fp16", "onnx-fp16", {}, verdict, "accepted" if verdict.passed else "rejected")
    if verdict.passed:
        return dict(report, path=os.path.basename(out_path)), verdict
    if run.recipe.backoff.on_variant_failure == "drop":
        os.remove(out_path)
        return None, None
    run.fail("fp16", "the FP16 model fails the gate (overflowing activations?); remove fp16 from the recipe")


# --- all ONNX variants ------------------------------------------------------------------------------------


def variants_stage(run, model, staging, work):
    """Export, then every INT8 flavour and FP16, each gated; returns ({key: (report, verdict)}, verify report)."""
    recipe = run.recipe
    fp32 = os.path.join(staging, "model.onnx")
    verify = export_stage(run, model, fp32)
    fp32_verdict = gate_onnx(run, fp32, "onnx-fp32")
    run.record("export", "onnx-fp32", {"opset": recipe.export.opset}, fp32_verdict,
               "accepted" if fp32_verdict.passed else "rejected")
    if not fp32_verdict.passed:
        run.fail("export", "the FP32 ONNX model fails the gate although the torch model passed; check the export")
    variants = {"onnx-fp32": ({"path": "model.onnx", "precision": "fp32", "format": "onnx"}, fp32_verdict)}
    for qconfig in recipe.quantize:
        key = QUANT_KEYS[_flavour(qconfig)]
        filename = "model-int8.onnx" if key == "onnx-int8" else "model-int8-trt.onnx"
        report, verdict = quantize_stage(run, fp32, qconfig, os.path.join(staging, filename), work)
        if report is not None:
            variants[key] = (report, verdict)
    if recipe.fp16:
        report, verdict = fp16_stage(run, fp32, os.path.join(staging, "model-fp16.onnx"))
        if report is not None:
            variants["onnx-fp16"] = (report, verdict)
    return variants, verify
