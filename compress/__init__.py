"""lungedge.compress: the torch side. Baseline -> distill -> prune -> ONNX -> INT8/FP16 -> accuracy gate -> bundle.

The stages are importable one by one; the names below load their module on first use (PEP 562), so
``import lungedge.compress.errors`` stays light. Stage functions named like their module (``distill``, ``prune``,
``gate``) are not re-exported: ``from lungedge.compress.distill import distill``. ::

    from lungedge.compress import compress, load_recipe
    bundle = compress(load_recipe("xray-cls"), "runs/xray-cls-densenet121", "../shared/data/xray-cls", "bundles/x")
"""

import importlib

_EXPORTS = {
    "compress": "lungedge.compress.pipeline",
    "export_baseline": "lungedge.compress.pipeline",
    "Recipe": "lungedge.compress.recipe",
    "BackoffConfig": "lungedge.compress.recipe",
    "ExportConfig": "lungedge.compress.recipe",
    "load_recipe": "lungedge.compress.recipe",
    "list_recipes": "lungedge.compress.recipe",
    "DistillConfig": "lungedge.compress.distill",
    "PruneConfig": "lungedge.compress.prune",
    "GateConfig": "lungedge.compress.gate",
    "GateVerdict": "lungedge.compress.gate",
    "QuantConfig": "lungedge.compress.quantize",
    "quantize_onnx": "lungedge.compress.quantize",
    "convert_fp16": "lungedge.compress.quantize",
    "CalibrationReader": "lungedge.compress.calibration",
    "export_onnx": "lungedge.compress.export",
    "verify_onnx": "lungedge.compress.export",
    "EngineConfig": "lungedge.compress.engine",
    "build_engine": "lungedge.compress.engine",
    "CompressError": "lungedge.compress.errors",
    "GateFailed": "lungedge.compress.errors",
    "RecipeError": "lungedge.compress.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungedge.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
