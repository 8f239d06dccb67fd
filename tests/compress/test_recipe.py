"""Recipes: shipped files load and round-trip; unknown keys and inconsistent settings are refused at every level."""

import argparse
import json

import pytest

from lungedge.compress.cli import apply_flags
from lungedge.compress.errors import RecipeError
from lungedge.compress.recipe import BackoffConfig, Recipe, list_recipes, load_recipe, recipe_path

TASK_RECIPES = ("xray-cls", "ct-cls", "xray-seg", "ct-seg")


def minimal(**changes):
    d = {"name": "t", "task": "xray-cls", "student": "student_s", "distill": {"epochs": 1}}
    d.update(changes)
    return d


def test_shipped_recipes_load_and_round_trip():
    names = list_recipes()
    assert set(TASK_RECIPES) | {"demo", "test-gate-fail", "test-gate-recover"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe, name
    for name in TASK_RECIPES:
        recipe = load_recipe(name)
        assert recipe.task == name and (recipe.student != "none" or recipe.prune is not None)
        assert {q.flavour for q in recipe.quantize} == {"ort_cpu", "tensorrt"}


def test_load_by_path_and_by_name(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(minimal(name="mine")))
    assert load_recipe(str(path)).name == "mine"
    assert recipe_path("demo").endswith("recipes/demo.json")
    assert load_recipe("demo.json") == load_recipe("demo")
    with pytest.raises(RecipeError, match="shipped"):
        load_recipe("no-such-recipe")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(str(bad))


@pytest.mark.parametrize("section,payload", [
    (None, {"colour": "red"}),
    ("distill", {"epochs": 1, "temprature": 2}),
    ("prune", {"macs_ratio": 0.5, "global": True}),
    ("prune_finetune", {"epochs": 1, "lr_max": 1}),
    ("export", {"opset": 17, "dynamic": True}),
    ("gate", {"auc_drop": 0.01, "auc": 0.02}),
    ("backoff", {"macs_ratio": [0.8]}),
])
def test_unknown_keys_are_refused_at_every_level(section, payload):
    d = minimal(prune={"macs_ratio": 0.5}, prune_finetune={"epochs": 1})
    if section is None:
        d.update(payload)
    else:
        d[section] = payload
    with pytest.raises(RecipeError, match="unknown"):
        Recipe.from_dict(d)


def test_unknown_quantize_keys_are_refused():
    with pytest.raises(RecipeError, match=r"quantize\[1\].*unknown"):
        Recipe.from_dict(minimal(quantize=[{"flavour": "ort_cpu"}, {"flavour": "tensorrt", "symmetric": True}]))


@pytest.mark.parametrize("changes,message", [
    ({"task": "lung-cancer"}, "unknown task"),
    ({"student": "vgg16"}, "unknown student"),
    ({"student": "unet_student"}, "segmentation model"),
    ({"distill": None}, "needs a 'distill' section"),
    ({"student": "none"}, "leave distill null"),
    ({"prune": {"macs_ratio": 0.5}}, "prune_finetune"),
    ({"prune": {"macs_ratio": 1.5}, "prune_finetune": {}}, "macs_ratio"),
    ({"quantize": [{"flavour": "ort_cpu"}, {"flavour": "ort_cpu"}]}, "twice"),
    ({"quantize": [{"flavour": "openvino"}]}, "flavour"),
    ({"quantize": {"flavour": "ort_cpu"}}, "list"),
    ({"input_size": 7}, "input_size"),
    ({"export": {"opset": 13}}, "opset"),
    ({"gate": {"threshold_rule": "best"}}, "threshold_rule"),
    ({"backoff": {"calibration_methods": ["kl"]}}, "calibration methods"),
    ({"backoff": {"on_variant_failure": "ignore"}}, "on_variant_failure"),
    ({"name": ""}, "name"),
])
def test_inconsistent_recipes_are_refused(changes, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(minimal(**changes))


def test_missing_name_or_task():
    with pytest.raises(RecipeError, match="lacks"):
        Recipe.from_dict({"name": "x"})


def test_prune_ladder_only_goes_towards_less_pruning():
    b = BackoffConfig(macs_ratios=[0.9, 0.4, 0.75, 0.6])
    assert b.prune_ratios(0.6) == [0.6, 0.75, 0.9]
    assert b.prune_ratios(0.95) == [0.95]


def test_quant_ladder_order_and_lazy_ranking():
    calls = []

    def ranking():
        calls.append(1)
        return ["io-first", "n3", "n1", "n2"]

    b = BackoffConfig(calibration_methods=["minmax", "entropy"], max_sensitive_nodes=2, max_attempts=12)
    got = list(b.quant_attempts("entropy", ["io-first", "io-last"], ranking))
    assert got == [("entropy", []), ("minmax", []),
                   ("entropy", ["io-first", "io-last"]), ("minmax", ["io-first", "io-last"]),
                   ("entropy", ["io-first", "io-last", "n3"]), ("minmax", ["io-first", "io-last", "n3"]),
                   ("entropy", ["io-first", "io-last", "n3", "n1"]), ("minmax", ["io-first", "io-last", "n3", "n1"])]
    assert calls == [1]
    # A ladder that stops before the sensitivity level never pays for the ranking.
    calls.clear()
    short = BackoffConfig(calibration_methods=["minmax"], max_attempts=2)
    assert list(short.quant_attempts("minmax", ["a", "b"], ranking)) == [("minmax", []), ("minmax", ["a", "b"])]
    assert calls == []
    no_io = BackoffConfig(calibration_methods=["minmax"], exclude_io=False, max_sensitive_nodes=1)
    assert list(no_io.quant_attempts("minmax", ["a", "b"], ["c"])) == [("minmax", []), ("minmax", ["c"])]


def test_cli_flags_only_map_onto_the_recipe():
    recipe = load_recipe("xray-cls")
    args = argparse.Namespace(student=None, input_size=96, epochs=3, macs_ratio=0.8, no_int8=True, fp16=False,
                              threshold_rule="youden")
    got = apply_flags(recipe, args)
    assert (got.input_size, got.distill.epochs, got.prune.macs_ratio, got.quantize, got.gate.threshold_rule) == \
        (96, 3, 0.8, (), "youden")
    assert got.distill.temperature == recipe.distill.temperature and got.fp16 == recipe.fp16
    none = apply_flags(recipe, argparse.Namespace(student="none", input_size=None, epochs=None, macs_ratio=None,
                                                  no_int8=False, fp16=False, threshold_rule=None))
    assert none.student == "none" and none.distill is None
    with pytest.raises(RecipeError, match="distills nothing"):
        apply_flags(none, argparse.Namespace(student=None, input_size=None, epochs=2, macs_ratio=None,
                                             no_int8=False, fp16=False, threshold_rule=None))


def test_config_errors_are_typed_and_still_value_errors():
    from lungedge.compress.distill import DistillConfig
    from lungedge.compress.engine import EngineConfig
    from lungedge.compress.errors import CompressError, ConfigError
    from lungedge.compress.gate import GateConfig
    from lungedge.compress.prune import PruneConfig
    from lungedge.compress.quantize import QuantConfig

    bad = [lambda: DistillConfig(alpha=2.0), lambda: DistillConfig.from_dict({"alfa": 0.5}),
           lambda: PruneConfig(importance="l3"), lambda: QuantConfig(flavour="tflite"),
           lambda: GateConfig(threshold_rule="best"), lambda: EngineConfig(precision="int4"),
           lambda: BackoffConfig(on_variant_failure="retry")]
    for make in bad:
        with pytest.raises(ConfigError) as err:
            make()
        assert isinstance(err.value, ValueError) and isinstance(err.value, CompressError)


def test_a_bad_section_names_itself_in_the_recipe_error():
    with pytest.raises(RecipeError, match="prune: importance 'l3'"):
        Recipe.from_dict({"name": "x", "task": "xray-cls", "prune": {"importance": "l3"},
                          "prune_finetune": {"epochs": 1}})
