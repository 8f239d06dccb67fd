"""Recipes: what to do to a baseline, as a JSON file read into frozen dataclasses.

Schema (every level rejects unknown keys; absent keys take the defaults below)::

    name         "xray-cls-student"             recipe name (goes into the bundle name)
    task         "xray-cls"                     runtime.tasks name
    description  ""                             free text
    student      "student_m" | "none"           registry architecture distilled from the baseline; "none"
                                                compresses the baseline itself
    input_size   0                              square input side; 0 = the baseline's
    seed         0
    distill      DistillConfig | null           required when student is not "none"
    prune        PruneConfig | null             macs_ratio, importance, global_pruning, round_to, iterative_steps
    prune_finetune  DistillConfig | null        KD from the unpruned model after each pruning step
    quantize     [QuantConfig, ...]             INT8 variants, one per flavour: "ort_cpu" (artifact onnx-int8)
                                                and "tensorrt" (onnx-int8-trt); calibration_method, num_images
                                                (real train-split images), per_channel, percentile,
                                                nodes_to_exclude, reduce_range
    fp16         false                          also ship an FP16 ONNX variant
    export       {"opset": 17, "verify_images": 32, "golden_images": 4}
    gate         GateConfig                     tolerated validation drops and the threshold rule
    backoff      BackoffConfig                  what to try when a stage fails the gate

The recipe used is written, as ``to_dict()``, into the bundle's ``provenance.recipe``.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from lungedge.compress.distill import DistillConfig
from lungedge.compress.errors import ConfigError, RecipeError
from lungedge.compress.gate import GateConfig
from lungedge.compress.prune import PruneConfig
from lungedge.models.registry import ARCHITECTURES, kind_of
from lungedge.runtime.tasks import TASKS

RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ON_FAILURE = ("fail", "drop")
# Artifact key of each INT8 flavour in the bundle.
QUANT_KEYS = {"ort_cpu": "onnx-int8", "tensorrt": "onnx-int8-trt"}


def _check_keys(cls, d, where):
    if not isinstance(d, dict):
        raise RecipeError(f"{where} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise RecipeError(f"unknown {where} keys {sorted(unknown)}; known: {sorted(names)}")


def _build(cls, d, where):
    """``cls.from_dict(d)`` with any error re-raised as RecipeError naming the recipe section."""
    try:
        return cls.from_dict(d)
    except RecipeError:
        raise
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    verify_images: int = 32  # real validation images for the torch-vs-ONNX check
    golden_images: int = 4  # real validation images in golden.npz for the on-device self-test

    def __post_init__(self):
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17 (QDQ per-channel and dynamic batch), got {self.opset}")
        if self.verify_images < 1 or self.golden_images < 1:
            raise ConfigError("verify_images and golden_images must be >= 1")

    @classmethod
    def from_dict(cls, d):
        _check_keys(cls, d, "export")
        return cls(**d)


@dataclass(frozen=True)
class BackoffConfig:
    """The ladders walked when a stage fails the gate, in order, each attempt recorded.

    Pruning: the recipe's macs_ratio first, then each larger ratio of ``macs_ratios`` (less pruning).
    INT8: for each exclusion level (none; then the first conv and the head kept in float when
    ``exclude_io``; then 1..``max_sensitive_nodes`` more nodes by measured sensitivity) each calibration
    method of ``calibration_methods`` is tried, the recipe's own method first. ``max_attempts`` caps one
    variant's ladder. ``on_variant_failure``: "fail" raises GateFailed when a requested variant never
    passes; "drop" leaves it out of the bundle (recorded in the manifest's gate log).
    """

    macs_ratios: Tuple[float, ...] = (0.6, 0.75, 0.9)
    calibration_methods: Tuple[str, ...] = CALIBRATION_METHODS
    exclude_io: bool = True
    max_sensitive_nodes: int = 4
    sensitivity_images: int = 16
    max_attempts: int = 12
    on_variant_failure: str = "fail"

    def __post_init__(self):
        object.__setattr__(self, "macs_ratios", tuple(float(r) for r in self.macs_ratios))
        object.__setattr__(self, "calibration_methods", tuple(self.calibration_methods))
        if any(not 0.0 < r <= 1.0 for r in self.macs_ratios):
            raise ConfigError(f"backoff macs_ratios must lie in (0, 1], got {list(self.macs_ratios)}")
        bad = [m for m in self.calibration_methods if m not in CALIBRATION_METHODS]
        if bad:
            raise ConfigError(f"unknown calibration methods {bad}; known: {CALIBRATION_METHODS}")
        if self.on_variant_failure not in ON_FAILURE:
            raise ConfigError(f"on_variant_failure must be one of {ON_FAILURE}, got {self.on_variant_failure!r}")
        if self.max_attempts < 1 or self.max_sensitive_nodes < 0 or self.sensitivity_images < 1:
            raise ConfigError("max_attempts and sensitivity_images must be >= 1, max_sensitive_nodes >= 0")

    @classmethod
    def from_dict(cls, d):
        _check_keys(cls, d, "backoff")
        return cls(**d)

    def prune_ratios(self, first):
        """MACs ratios to try: the recipe's, then every larger ladder ratio in increasing order."""
        return [float(first)] + sorted({r for r in self.macs_ratios if r > first})

    def quant_attempts(self, first_method, io_nodes, ranked_nodes):
        """Yield (calibration method, nodes kept in float) in the order tried, at most ``max_attempts``.

        io_nodes: the first conv and the head; ranked_nodes: the other nodes, most sensitive first, or a
        callable returning them (called only once the ladder gets that far: ranking costs a model run).
        """
        methods = [first_method] + [m for m in self.calibration_methods if m != first_method]
        base = list(io_nodes) if self.exclude_io else []

        def levels():
            yield []
            if base:
                yield base
            if self.max_sensitive_nodes:
                ranked = ranked_nodes() if callable(ranked_nodes) else ranked_nodes
                extra = [n for n in ranked if n not in base]
                for k in range(1, min(self.max_sensitive_nodes, len(extra)) + 1):
                    yield base + extra[:k]

        count = 0
        for exclude in levels():
            for method in methods:
                yield method, list(exclude)
                count += 1
                if count >= self.max_attempts:  # stop before the next level (which may need the ranking)
                    return


def _quant_config_class():
    try:
        from lungedge.compress.quantize import QuantConfig
    except ImportError as exc:  # onnxruntime quantization missing: recipes with INT8 cannot be read
        raise RecipeError(f"INT8 recipes need lungedge.compress.quantize ({exc})") from None
    return QuantConfig


def _quant_to_dict(q):
    return q.to_dict() if hasattr(q, "to_dict") else dataclasses.asdict(q)


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    description: str = ""
    student: str = "none"
    input_size: int = 0
    seed: int = 0
    distill: Optional[DistillConfig] = None
    prune: Optional[PruneConfig] = None
    prune_finetune: Optional[DistillConfig] = None
    quantize: tuple = ()
    fp16: bool = False
    export: ExportConfig = field(default_factory=ExportConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise RecipeError("recipe needs a non-empty name")
        if self.task not in TASKS:
            raise RecipeError(f"unknown task {self.task!r}; known: {sorted(TASKS)}")
        kind = TASKS[self.task].kind
        if self.student != "none":
            if self.student not in ARCHITECTURES:
                raise RecipeError(f"unknown student {self.student!r}; known: {sorted(ARCHITECTURES)} or 'none'")
            if kind_of(self.student) != kind:
                raise RecipeError(f"student {self.student} is a {kind_of(self.student)} model; task {self.task} "
                                  f"needs {kind}")
            if self.distill is None:
                raise RecipeError(f"student {self.student} starts untrained: the recipe needs a 'distill' section")
        elif self.distill is not None:
            raise RecipeError("'distill' needs a student architecture; with student 'none' leave distill null")
        if self.prune is not None and self.prune_finetune is None:
            raise RecipeError("a 'prune' section needs 'prune_finetune': a pruned net falls to chance until "
                              "fine-tuned (KD from the unpruned model)")
        if self.input_size < 0 or (self.input_size and self.input_size < 16):
            raise RecipeError(f"input_size must be 0 (the baseline's) or >= 16, got {self.input_size}")
        flavours = [getattr(q.flavour, "value", q.flavour) for q in self.quantize]
        unknown = [f for f in flavours if f not in QUANT_KEYS]
        if unknown:
            raise RecipeError(f"quantize flavours {unknown} unknown; known: {sorted(QUANT_KEYS)}")
        if len(set(flavours)) != len(flavours):
            raise RecipeError(f"quantize lists a flavour twice: {flavours}; one variant per flavour")

    @classmethod
    def from_dict(cls, d):
        """Build from plain data (a parsed JSON file); unknown keys at any level raise RecipeError."""
        _check_keys(cls, d, "recipe")
        missing = [k for k in ("name", "task") if k not in d]
        if missing:
            raise RecipeError(f"recipe lacks {missing}")
        kw = dict(d)
        for key in ("distill", "prune_finetune"):
            if kw.get(key) is not None:
                kw[key] = _build(DistillConfig, kw[key], key)
        if kw.get("prune") is not None:
            kw["prune"] = _build(PruneConfig, kw["prune"], "prune")
        quant = kw.get("quantize") or []
        if not isinstance(quant, list):
            raise RecipeError("quantize must be a list of QuantConfig objects")
        if quant:
            qcls = _quant_config_class()
            kw["quantize"] = tuple(_build(qcls, q, f"quantize[{i}]") for i, q in enumerate(quant))
        else:
            kw["quantize"] = ()
        for key, sub in (("export", ExportConfig), ("gate", GateConfig),
                         ("backoff", BackoffConfig)):
            if key in kw:
                kw[key] = _build(sub, kw[key] if kw[key] is not None else {}, key)
        try:
            return cls(**kw)
        except RecipeError:
            raise
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"recipe {d.get('name')!r}: {exc}") from None

    def to_dict(self):
        """Plain data, the inverse of ``from_dict`` (written into the manifest's provenance)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "quantize":
                value = [_quant_to_dict(q) for q in value]
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = value
        for key in ("backoff",):
            out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in out[key].items()}
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def recipe_path(name_or_path):
    """A recipe file: an existing path, else ``compress/recipes/NAME.json``."""
    if os.path.isfile(name_or_path):
        return name_or_path
    candidate = os.path.join(RECIPES_DIR, os.path.basename(name_or_path))
    candidate = candidate if candidate.endswith(".json") else candidate + ".json"
    if os.path.isfile(candidate):
        return candidate
    raise RecipeError(f"no recipe file {name_or_path!r} and no shipped recipe of that name; shipped: {list_recipes()}")


def list_recipes():
    """Names of the recipes shipped in compress/recipes/."""
    if not os.path.isdir(RECIPES_DIR):
        return []
    return sorted(n[:-5] for n in os.listdir(RECIPES_DIR) if n.endswith(".json"))


def load_recipe(name_or_path):
    """Read a recipe from a JSON file path or a shipped recipe name."""
    path = recipe_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        return Recipe.from_dict(data)
    except RecipeError as exc:
        raise RecipeError(f"{os.path.basename(path)}: {exc}") from None
