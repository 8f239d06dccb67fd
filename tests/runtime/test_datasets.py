"""Dataset indexes: the dev pack's manifests, folder-per-class trees, image/mask pairs; patient-level splits."""

import os

import cv2
import numpy as np
import pytest

from lungedge.runtime.datasets import (
    Record,
    check_patient_splits,
    read_class_folders,
    read_image_mask_pairs,
    read_manifest_csv,
    read_nifti_pairs,
    select,
    split_for,
)
from lungedge.runtime.errors import InputError


@pytest.mark.parametrize("name,labels", [("xray-cls", {"covid", "normal", "pneumonia"}),
                                         ("ct-cls", {"covid", "noncovid"})])
def test_dev_pack_classification_manifests(name, labels, request, manifest_rows):
    folder = request.getfixturevalue(name.replace("-", "_") + "_dir")
    records = read_manifest_csv(folder)
    rows = manifest_rows(folder)
    assert len(records) == len(rows) > 0  # every manifest row becomes a record (counts come from the data)
    assert sorted(os.path.join(folder, r["file"]) for r in rows) == sorted(r.image for r in records)
    assert {r.label for r in records} == labels
    assert all(os.path.isfile(r.image) for r in records[:50])
    splits = {s: {r.patient_id for r in select(records, s)} for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])


def test_dev_pack_segmentation_manifest(xray_seg_dir, manifest_rows):
    records = read_manifest_csv(xray_seg_dir)
    assert len(records) == len(manifest_rows(xray_seg_dir)) > 0 and all(r.mask and os.path.isfile(r.mask) for r in records)


def test_patient_in_two_splits_is_refused():
    recs = [Record("a.png", "p1", "train"), Record("b.png", "p1", "test")]
    with pytest.raises(InputError, match="per patient"):
        check_patient_splits(recs)


def test_split_for_is_deterministic_and_roughly_70_15_15():
    splits = [split_for(f"patient-{i}") for i in range(3000)]
    assert splits == [split_for(f"patient-{i}") for i in range(3000)]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.70) < 0.04 and abs(frac["val"] - 0.15) < 0.03


def write_png(path, value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((40, 40), value, np.uint8))


def test_class_folders_keep_patients_together(tmp_path):
    for i in range(30):
        for k in range(3):  # three images per patient
            write_png(str(tmp_path / "pneumonia" / f"person{i}_virus_{k}.jpeg.png"))
        write_png(str(tmp_path / "normal" / f"IM-{i:04d}-0001.png"))
    records = read_class_folders(str(tmp_path), patient_sep="_")
    assert len(records) == 120
    by_patient = {}
    for r in records:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r.label for r in records} == {"normal", "pneumonia"}


def test_class_folders_with_split_dirs(tmp_path):
    write_png(str(tmp_path / "train" / "covid" / "a.png"))
    write_png(str(tmp_path / "test" / "normal" / "b.png"))
    records = read_class_folders(str(tmp_path))
    assert {(r.split, r.label) for r in records} == {("train", "covid"), ("test", "normal")}


def test_image_mask_pairs(tmp_path):
    for i in range(5):
        write_png(str(tmp_path / "images" / f"case{i}.png"))
        write_png(str(tmp_path / "masks" / f"case{i}_mask.png"), 1)
    write_png(str(tmp_path / "images" / "orphan.png"))
    records = read_image_mask_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert len(records) == 5 and all(r.mask.endswith("_mask.png") for r in records)


def test_empty_class_tree_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        read_class_folders(str(tmp_path))


def test_nifti_pairs(tmp_path):
    nib = pytest.importorskip("nibabel")
    for d in ("img", "msk"):
        os.makedirs(tmp_path / d)
    for i in range(3):
        vol = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4))
        nib.save(vol, str(tmp_path / "img" / f"case{i}.nii.gz"))
        nib.save(vol, str(tmp_path / "msk" / f"case{i}.nii.gz"))
    records = read_nifti_pairs(str(tmp_path / "img"), str(tmp_path / "msk"))
    assert [os.path.basename(r.image) for r in records] == [f"case{i}.nii.gz" for i in range(3)]
    assert records[0].patient_id == "case0"
