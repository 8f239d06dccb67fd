"""Fixtures for the DICOM node's tests: tiny bundles, CR and CT instances made from the dev pack's DICOM."""

import os
import sys

import pytest

pytest.importorskip("pynetdicom", reason="the dicom-node extra is not installed")
pytest.importorskip("highdicom", reason="the dicom-node extra is not installed")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "runtime"))
sys.path.insert(0, HERE)
from peers import DEV_CR, DEV_CT  # noqa: E402
from tinymodels import classifier_model, golden_writer, segmenter_model, write_bundle  # noqa: E402


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """{"xray", "xray_lung", "ct", "ct_lesion"}: tiny ONNX bundles."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "xray": write_bundle(root / "xray-cls", classifier_model(3), "classification", "xray",
                             ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid",
                             golden=golden_writer()),  # so the node's start-up self-test runs
        "xray_lung": write_bundle(root / "xray-lung", segmenter_model(1), "segmentation", "xray",
                                  ["background", "lung"], {"mask": 0.5}, kind="probabilities"),
        "ct": write_bundle(root / "ct-cls", classifier_model(2, seed=3), "classification", "ct",
                           ["covid", "non-covid"], {"covid": 0.5}, positive_label="covid"),
        "ct_lesion": write_bundle(root / "ct-lesion", segmenter_model(1, cut=1.8), "segmentation", "ct",
                                  ["background", "lesion"], {"mask": 0.5}, kind="probabilities"),
    }


@pytest.fixture
def dev_cr(dicom_dir):
    return os.path.join(dicom_dir, DEV_CR)


@pytest.fixture
def dev_ct(dicom_dir):
    return os.path.join(dicom_dir, DEV_CT)
