import csv
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("LUNGEDGE_DATA", os.path.join(ROOT, "..", "shared", "data"))


def data_dir(name):
    """Path of a dev-pack folder; skip without it, but fail under CI=true where the data must be present."""
    path = os.path.join(DATA, name)
    if not os.path.isfile(os.path.join(path, "manifest.csv")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dev pack folder {path} is missing under CI=true; CI must run with ../shared beside the repo")
        pytest.skip(f"dev pack folder {path} not present (set LUNGEDGE_DATA to the folder holding xray-cls etc.)")
    return path


@pytest.fixture
def xray_cls_dir():
    return data_dir("xray-cls")


@pytest.fixture
def xray_seg_dir():
    return data_dir("xray-seg")


@pytest.fixture
def ct_cls_dir():
    return data_dir("ct-cls")


@pytest.fixture
def ct_seg_dir():
    return data_dir("ct-seg")


@pytest.fixture
def dicom_dir():
    return data_dir("dicom")


@pytest.fixture
def manifest_rows():
    """Reader of a dev-pack folder's manifest.csv rows (counts in tests come from the data, never hard-coded)."""
    return read_manifest_rows


def read_manifest_rows(folder):
    """The rows of a dev-pack folder's manifest.csv read with the csv module alone (counts come from the data)."""
    with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
