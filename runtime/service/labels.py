"""How logs name an input and describe its result without patient identifiers (file names can carry them)."""

import hashlib

from lungedge.runtime.enums import TaskKind
from lungedge.runtime.service.atomic import split_name


def input_label(name, log_names=False):
    """How logs name an input: a short hash of its file name, or the name itself with ``log_names``."""
    if log_names:
        return name
    return "input-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def verdict(result):
    """One log phrase for a result: its label, "segmented", a CT study, or why it was not assessed."""
    if result.get("assessed") is False:
        return f"not assessed ({result.get('reason', '')})"
    if result.get("task") == TaskKind.CLASSIFICATION:
        return f"label {result['label']}"
    if result.get("task") == TaskKind.SEGMENTATION:
        return "segmented"
    return f"CT study, {result.get('slices')} slices"


def scrub(message, name, label):
    """The message with the input's file name (and its stem) replaced by its label."""
    for text in sorted({name, split_name(name)[0]}, key=len, reverse=True):
        if text:
            message = message.replace(text, label)
    return message
