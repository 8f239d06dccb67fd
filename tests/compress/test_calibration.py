"""CalibrationReader: real training images through the bundle's preprocessing; everything else refused."""

import hashlib
import os
import random
import shutil

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

from lungedge.compress.calibration import MIN_IMAGES, CalibrationReader, training_reader
from lungedge.compress.errors import CalibrationError
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.io.image import read_image
from lungedge.runtime.preprocess import preprocess, xray_steps

STEPS = xray_steps(48)


@pytest.fixture
def train_records(xray_cls_dir):
    return select(read_manifest_csv(xray_cls_dir), split="train")


def test_reader_is_an_ort_data_reader_with_preprocessed_batches(train_records):
    reader = CalibrationReader(train_records, STEPS, batch_size=5, limit=17)
    assert isinstance(reader, CalibrationDataReader)
    assert reader.count == 17 and len(reader) == 4
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed)
    assert [f["image"].shape for f in feeds] == [(5, 1, 48, 48)] * 3 + [(2, 1, 48, 48)]
    assert all(f["image"].dtype == np.float32 and set(f) == {"image"} for f in feeds)
    assert reader.get_next() is None  # stays exhausted until rewound
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["image"], feeds[0]["image"])
    # The same arrays as the runtime's own preprocessing of the same file.
    array, meta = read_image(reader.paths[0])
    np.testing.assert_array_equal(feeds[0]["image"][0], preprocess(array, meta, STEPS)[0])
    # batches() is the same stream for the TensorRT calibrator; drop_last keeps whole batches only.
    batches = list(reader.batches(drop_last=True))
    assert len(batches) == 3 and all(np.array_equal(b, f["image"]) for b, f in zip(batches, feeds))


def test_head_feeds_the_first_images_in_the_same_batches(train_records):
    """The sensitivity ranking's feed: the first n images of the one reader, iterable as ORT iterates it."""
    reader = CalibrationReader(train_records, STEPS, batch_size=5, limit=17)
    head = reader.head(7)
    assert head.count == 7 and not head.progress
    fed = [f["image"] for f in head]  # ORT's qdq_loss_debug iterates the reader
    assert [b.shape[0] for b in fed] == [5, 2]
    full = list(reader.batches())
    np.testing.assert_array_equal(fed[0], full[0])
    np.testing.assert_array_equal(fed[1], full[1][:2])
    head.rewind()
    np.testing.assert_array_equal(head.get_next()["image"], fed[0])
    assert reader.count == 17  # the full reader is untouched


def test_training_reader_takes_the_task_images_of_the_train_split(xray_cls_dir):
    from lungedge.runtime.tasks import task

    spec = task("xray-cls")
    reader = training_reader(xray_cls_dir, spec, STEPS, "image", limit=20)
    assert reader.count == 20 and reader.batch_size == 8 and reader.describe()["split"] == "train"
    labels = {os.path.realpath(r.image): r.label for r in read_manifest_csv(xray_cls_dir)}
    assert all(labels[os.path.realpath(p)] in spec.labels for p in reader.paths)


def test_describe_is_order_independent_and_hashes_names(train_records):
    a = CalibrationReader(train_records, STEPS, limit=20)
    shuffled = list(train_records)
    random.Random(1).shuffle(shuffled)
    b = CalibrationReader(shuffled, STEPS, limit=20)
    assert a.paths == b.paths and a.describe() == b.describe()
    d = a.describe()
    assert d["count"] == 20 and d["split"] == "train" and d["batch_size"] == 1
    assert d["files_sha256"] == hashlib.sha256("\n".join(sorted(a.names)).encode()).hexdigest()
    assert not any("/" in str(v) or ".png" in str(v) for v in d.values())  # no file names in the manifest


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).normal(size=(32, 1, 48, 48)).astype(np.float32),
    [np.zeros((48, 48), np.float32)] * 32,
    {"image": np.zeros((32, 1, 48, 48), np.float32)},
], ids=["array", "list-of-arrays", "feed-dict"])
def test_random_or_in_memory_data_is_refused(data):
    with pytest.raises(CalibrationError, match="(?i)refused|image file"):
        CalibrationReader(data, STEPS)


def test_tensor_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(CalibrationError):
        CalibrationReader(torch.rand(32, 1, 48, 48), STEPS)


def test_too_few_images_are_refused(train_records):
    with pytest.raises(CalibrationError, match=f"at least {MIN_IMAGES}"):
        CalibrationReader(train_records[:MIN_IMAGES - 1], STEPS)
    # Duplicates count once.
    with pytest.raises(CalibrationError, match=f"at least {MIN_IMAGES}"):
        CalibrationReader(train_records[:MIN_IMAGES - 1] + train_records[:1], STEPS)
    with pytest.raises(CalibrationError, match="minimum"):
        CalibrationReader(train_records, STEPS, limit=MIN_IMAGES - 1)
    assert CalibrationReader(train_records[:MIN_IMAGES], STEPS).count == MIN_IMAGES


def test_other_splits_need_explicit_permission(xray_cls_dir):
    records = read_manifest_csv(xray_cls_dir)
    val = select(records, split="val")
    with pytest.raises(CalibrationError, match="'val' split"):
        CalibrationReader(val, STEPS)
    assert CalibrationReader(val, STEPS, splits=("train", "val")).describe()["split"] == "val"


def test_plain_paths_are_taken_and_marked_unrecorded(train_records):
    reader = CalibrationReader([r.image for r in train_records[:16]], STEPS)
    assert reader.describe()["split"] == "unrecorded"


def test_missing_and_unreadable_files(train_records, tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationReader([r.image for r in train_records[:16]] + [str(tmp_path / "gone.png")], STEPS)
    paths = []
    for i, rec in enumerate(train_records[:MIN_IMAGES]):
        paths.append(str(tmp_path / f"img{i:02d}.png"))
        shutil.copy(rec.image, paths[-1])
    with open(paths[3], "wb") as fh:
        fh.write(b"not an image at all")
    reader = CalibrationReader(paths, STEPS, batch_size=MIN_IMAGES)
    with pytest.raises(CalibrationError, match="cannot be used"):
        reader.get_next()
