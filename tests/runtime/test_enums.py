"""The closed sets as enums: each member is its string everywhere a string goes, and bad values name the set."""

import json

import pytest

from lungedge.runtime.enums import ArtifactKey, BackendName, Modality, Precision, TaskKind, precision_rank
from lungedge.runtime.errors import LungedgeError, UnknownName
from lungedge.runtime.tasks import IGNORE, TASKS, task


@pytest.mark.parametrize("member, value", [(TaskKind.CLASSIFICATION, "classification"), (Modality.CT, "ct"),
                                           (BackendName.OPENVINO, "openvino"), (Precision.INT8, "int8"),
                                           (ArtifactKey.ONNX_INT8_TRT, "onnx-int8-trt")])
def test_a_member_is_its_value_in_every_context(member, value):
    assert member == value and value == member
    assert str(member) == value and f"{member}" == value and f"{member:>{len(value) + 1}}" == " " + value
    assert json.dumps({"k": member}) == json.dumps({"k": value})
    assert {value: 1}[member] == 1 and type(member)(value) is member


def test_parse_accepts_values_and_members_and_names_the_set_otherwise():
    assert Precision.parse("fp16") is Precision.FP16 and Precision.parse(Precision.FP16) is Precision.FP16
    with pytest.raises(UnknownName, match=r"unknown precision 'fp64'; choose one of int8, fp16, fp32"):
        Precision.parse("fp64", "precision")
    with pytest.raises(KeyError):  # callers that caught a dict's KeyError still do
        BackendName.parse("cuda")


def test_precisions_rank_smallest_first_and_unknown_last():
    assert sorted(["fp32", "int8", "bf16", "fp16"], key=precision_rank) == ["int8", "fp16", "fp32", "bf16"]


def test_unknown_task_is_a_typed_key_error_with_a_plain_message():
    with pytest.raises(UnknownName) as exc:
        task("xray-det")
    assert isinstance(exc.value, (KeyError, LungedgeError))
    assert str(exc.value) == "unknown task 'xray-det'; known: ct-cls, ct-seg, xray-cls, xray-seg"


def test_task_specs_use_the_enums():
    assert {t.kind for t in TASKS.values()} == set(TaskKind) and {t.modality for t in TASKS.values()} == set(Modality)
    assert task("xray-cls").kind is TaskKind.CLASSIFICATION and IGNORE == 255
