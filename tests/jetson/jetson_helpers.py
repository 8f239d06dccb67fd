"""Helpers of the Jetson-side tests (a module of its own: ``conftest`` is a name every test folder uses)."""

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
JETSON = os.path.join(REPO, "jetson")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "runtime"))  # the runtime tests' tiny ONNX models

from tinymodels import xray_classifier_bundle as make_bundle  # noqa: E402,F401 (the bundle fixture)


def ci():
    return os.environ.get("CI", "").lower() == "true"


def need_tool(name):
    """Path of a command-line tool (PATH, then beside this Python: the dev extra installs some into the venv);
    skip without it, except under CI=true where its absence fails the test."""
    sibling = os.path.join(os.path.dirname(sys.executable), name)
    path = sibling if os.access(sibling, os.X_OK) else shutil.which(name)
    if path is None:
        if ci():
            pytest.fail(f"{name} is not installed; CI must install it (see jetson/README.md, 'Checks')")
        pytest.skip(f"{name} is not installed")
    return path

