"""Bundle assembly helpers: provenance commit, default artifact (both from the runtime, used by compress)."""

import re

from lungedge.compress.assemble import default_artifact, git_commit


def test_git_commit_names_head_and_marks_a_dirty_tree_with_plus():
    commit = git_commit()
    # '+dirty' is the one convention (runtime.provenance; a second builder once wrote '-dirty'); None outside git.
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)


def test_default_artifact_is_the_smallest_precision_on_onnxruntime():
    arts = {"onnx-fp32": {"backend": "onnxruntime", "precision": "fp32"},
            "onnx-int8-trt": {"backend": "tensorrt-source", "precision": "int8"},
            "onnx-fp16": {"backend": "onnxruntime", "precision": "fp16"}}
    assert default_artifact(arts) == "onnx-fp16"
    assert default_artifact(dict(arts, **{"onnx-int8": {"backend": "onnxruntime", "precision": "int8"}})) == "onnx-int8"
