"""Bundle assembly helpers: provenance commit, default artifact, plain-JSON manifest values."""

import re

import numpy as np

from lungedge.compress.assemble import _jsonable, default_artifact, git_commit


def test_git_commit_names_head_and_marks_a_dirty_tree_with_plus():
    commit = git_commit()
    # '+dirty' is the compress convention (benchmarks/bundles.py wrote '-dirty'); None outside a git checkout.
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)


def test_default_artifact_is_the_smallest_precision_on_onnxruntime():
    arts = {"onnx-fp32": {"backend": "onnxruntime", "precision": "fp32"},
            "onnx-int8-trt": {"backend": "tensorrt-source", "precision": "int8"},
            "onnx-fp16": {"backend": "onnxruntime", "precision": "fp16"}}
    assert default_artifact(arts) == "onnx-fp16"
    assert default_artifact(dict(arts, **{"onnx-int8": {"backend": "onnxruntime", "precision": "int8"}})) == "onnx-int8"


def test_jsonable_gives_plain_types():
    out = _jsonable({1: (np.float32(0.5), np.int64(3)), "nan": float("nan"), "ok": [True, None, "x"]})
    assert out == {"1": [0.5, 3], "nan": None, "ok": [True, None, "x"]}
    assert type(out["1"][0]) is float and type(out["1"][1]) is int
