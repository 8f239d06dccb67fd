"""Fixtures for the runtime tests: tiny bundles in tmp_path (helpers live in tinymodels.py)."""

import os
import sys

import pytest

# tinymodels sits beside this file; make it importable under any pytest --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tinymodels import classifier_model, golden_writer, segmenter_model, write_bundle  # noqa: E402


@pytest.fixture
def xray_cls_bundle(tmp_path):
    return write_bundle(tmp_path / "xray-cls", classifier_model(3), "classification", "xray",
                        ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                        golden=golden_writer())


@pytest.fixture
def xray_lung_bundle(tmp_path):
    return write_bundle(tmp_path / "xray-lung", segmenter_model(1), "segmentation", "xray",
                        ["background", "lung"], {"mask": 0.5}, kind="probabilities")


@pytest.fixture
def ct_cls_bundle(tmp_path):
    return write_bundle(tmp_path / "ct-cls", classifier_model(2, seed=3), "classification", "ct",
                        ["covid", "non-covid"], {"covid": 0.5}, positive_label="covid")


@pytest.fixture
def ct_lesion_bundle(tmp_path):
    return write_bundle(tmp_path / "ct-lesion", segmenter_model(1, cut=1.8), "segmentation", "ct",
                        ["background", "lesion"], {"mask": 0.5}, kind="probabilities")


@pytest.fixture
def write_png(tmp_path):
    """Callable(name, array) writing an image with OpenCV into tmp_path; returns its path."""
    import cv2

    def write(name, array):
        path = str(tmp_path / name)
        assert cv2.imwrite(path, array), path
        return path
    return write
