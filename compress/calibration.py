"""INT8 calibration data: real training images run through the bundle's own preprocessing steps.

``CalibrationReader`` is the one calibration reader of the kit: an onnxruntime ``CalibrationDataReader``
(``get_next() -> {input_name: (B, 1, H, W)}`` or None, ``rewind()``), so ``quantize_static`` takes it as is,
``batches()`` yields the same arrays for a TensorRT calibrator, and ``head(n)`` feeds the quantization
sensitivity ranking its first images: every consumer sees identical inputs, preprocessed exactly as at the
bedside. ``training_reader`` builds it over the train split of a dev-pack folder for a task.

It takes image files only, as paths or dataset ``Record``s. Arrays, tensors and existing readers are refused
(random or synthetic calibration data gives scales that fit no patient), as are records of a split other than
train unless ``splits`` allows it, and fewer than ``MIN_IMAGES`` distinct images. ``describe()`` is what the
bundle manifest records under ``provenance.calibration``: the count, the split and a sha256 of the sorted file
names (never the names themselves: they can carry patient identifiers).
"""

import copy
import hashlib
import math
import os

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lungedge.compress.errors import CalibrationError
from lungedge.runtime.datasets import Record, read_manifest_csv, select
from lungedge.runtime.enums import TaskKind
from lungedge.runtime.errors import InputError
from lungedge.runtime.preprocess import check_steps, preprocess

try:  # read_any picks the reader by format (PNG/JPEG/TIFF, DICOM, NIfTI)
    from lungedge.runtime.io import read_any as _read
except ImportError:  # older runtime: PNG/JPEG/TIFF only
    from lungedge.runtime.io.image import read_image as _read

# Fewer images than this give ranges that one odd image can swing; ORT and TensorRT advise hundreds.
MIN_IMAGES = 16


def _image_path(item, splits):
    """(absolute path, split or None) of one item; refuses anything that is not an image file reference."""
    if isinstance(item, Record):
        if splits is not None and item.split not in splits:
            raise CalibrationError(f"a calibration record is from the {item.split!r} split; calibrate on training "
                                   "images (select(records, split='train')) or allow it explicitly with "
                                   f"splits={splits + (item.split,)}")
        path, split = item.image, item.split
    elif isinstance(item, (str, os.PathLike)):
        path, split = os.fspath(item), None
    else:
        raise CalibrationError(f"calibration takes image file paths or dataset Records, got {type(item).__name__}; "
                               "random, synthetic or in-memory arrays are refused: point it at real training images")
    if not path or not os.path.isfile(path):
        raise CalibrationError(f"calibration image {os.path.basename(str(path))!r} does not exist or is not a file")
    return os.path.abspath(path), split


def _order_key(name):
    # A stable pseudo-random order: a ``limit`` then takes a spread of the set, not the first folder or class.
    return hashlib.sha1(name.encode("utf-8")).hexdigest(), name


class CalibrationReader(CalibrationDataReader):
    """Batches of preprocessed real images for ONNX Runtime's quantizer and the TensorRT calibrator.

    ``records_or_paths``: dataset Records or image paths (a list, not a single path); ``steps``: the bundle's
    preprocessing steps; ``limit``: use at most this many images (a fixed spread of the set); ``splits``: the
    Record splits accepted (None accepts any; plain paths carry no split and are taken as given).
    """

    def __init__(self, records_or_paths, steps, input_name="image", batch_size=1, limit=None, splits=("train",),
                 progress=False, crop=None):
        if isinstance(records_or_paths, (str, os.PathLike, bytes, Record)) or hasattr(records_or_paths, "shape"):
            raise CalibrationError("pass a list of image paths or dataset Records; arrays, tensors and single paths "
                                   "are refused")
        if isinstance(records_or_paths, CalibrationDataReader) or isinstance(records_or_paths, dict):
            raise CalibrationError("calibration builds its inputs from image files; an existing reader or feed dict "
                                   "is refused")
        if int(batch_size) < 1:
            raise CalibrationError(f"batch_size must be >= 1, got {batch_size}")
        if limit is not None and int(limit) < MIN_IMAGES:
            raise CalibrationError(f"limit {limit} is below the {MIN_IMAGES}-image minimum for calibration")
        steps = [dict(s) for s in steps]
        check_steps(steps)
        splits = None if splits is None else tuple(splits)
        seen = {}
        for item in records_or_paths:
            path, split = _image_path(item, splits)
            seen.setdefault(os.path.realpath(path), (path, split))
        if len(seen) < MIN_IMAGES:
            raise CalibrationError(f"{len(seen)} distinct calibration images; at least {MIN_IMAGES} real training "
                                   "images are needed (a few hundred is better)")
        root = os.path.commonpath([os.path.dirname(p) for p, _ in seen.values()])
        items = sorted(((os.path.relpath(p, root).replace(os.sep, "/"), p, s) for p, s in seen.values()),
                       key=lambda t: _order_key(t[0]))
        if limit is not None:
            items = items[:int(limit)]
        self.names = [name for name, _, _ in items]
        self.paths = [path for _, path, _ in items]
        self.splits_used = sorted({s for _, _, s in items if s is not None})
        self.has_unsplit = any(s is None for _, _, s in items)
        self.steps = steps
        self.crop = crop  # runtime.pipelines.LungCrop for bundles trained on lung crops
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self.progress = progress
        self._shape = None
        self._iter = None
        self._bar = None

    @classmethod
    def __subclasshook__(cls, subclass):
        # ORT's hook makes anything with a get_next() pass isinstance(); only real subclasses count here.
        return NotImplemented

    @property
    def count(self):
        """Number of distinct images used."""
        return len(self.paths)

    def __len__(self):
        """Number of batches (the last one may be short)."""
        return math.ceil(self.count / self.batch_size)

    def load(self, index):
        """The preprocessed (1, H, W) float32 array of image ``index``."""
        name = os.path.basename(self.paths[index])
        try:
            array, meta = _read(self.paths[index])
            if np.ndim(array) != 2:
                raise CalibrationError(f"calibration image {index} ({name}) is a volume of shape {np.shape(array)}; "
                                       "calibrate on 2-D images or slices exported as images")
            if self.crop is not None:
                array, meta, _ = self.crop(array, meta, {"file": name})
            out, _ = preprocess(array, meta, self.steps)
        except InputError as exc:
            raise CalibrationError(f"calibration image {index} cannot be used: {exc}") from None
        if self._shape is None:
            self._shape = out.shape
        elif out.shape != self._shape:
            raise CalibrationError(f"calibration image {index} ({name}) preprocesses to {out.shape}, not {self._shape}; "
                                   "the steps must end in a fixed size (letterbox)")
        return out

    def batches(self, drop_last=False):
        """Yield (B, 1, H, W) float32 batches in a fixed order; ``drop_last`` skips a short final batch."""
        for start in range(0, self.count, self.batch_size):
            stop = min(start + self.batch_size, self.count)
            if drop_last and stop - start < self.batch_size:
                return
            yield np.stack([self.load(i) for i in range(start, stop)])

    def get_next(self):
        """onnxruntime's protocol: the next ``{input_name: batch}``, or None at the end."""
        if self._iter is None:
            self._iter = self.batches()
            if self.progress:
                from tqdm import tqdm

                self._bar = tqdm(total=len(self), desc="calibration", unit="batch", leave=False)
        batch = next(self._iter, None)
        if self._bar is not None:
            if batch is None:
                self._bar.close()
                self._bar = None
            else:
                self._bar.update(1)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):
        """Start again from the first batch (the quantizer may read the data more than once)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._iter = None

    def head(self, n_images):
        """A reader of the first ``n_images`` only: the same order and batches, rewound, without a progress bar."""
        view = copy.copy(self)
        view.names, view.paths = self.names[:int(n_images)], self.paths[:int(n_images)]
        view.progress, view._iter, view._bar = False, None, None
        return view

    def files_sha256(self):
        """sha256 of the sorted file names (relative to their common folder), one per line."""
        return hashlib.sha256("\n".join(sorted(self.names)).encode("utf-8")).hexdigest()

    def describe(self):
        """Plain-data record of the calibration set for the bundle manifest."""
        split = "+".join(self.splits_used + (["unrecorded"] if self.has_unsplit else []))
        return {"count": self.count, "files_sha256": self.files_sha256(), "split": split,
                "batch_size": self.batch_size, "input_name": self.input_name}


def training_reader(data_dir, spec, steps, input_name, limit=None, crop=None):
    """A progress-reporting reader (batches of 8) over the train split of ``data_dir`` that ``spec`` uses.

    Classification takes the images whose label is one of the task's, segmentation the images with a mask
    (the records ``models.data.load_split`` trains on).
    """
    records = select(read_manifest_csv(data_dir), split="train")
    if spec.kind == TaskKind.CLASSIFICATION:
        records = [r for r in records if r.label in spec.labels]
    else:
        records = [r for r in records if r.mask]
    return CalibrationReader(records, steps, input_name=input_name, batch_size=8, limit=limit, progress=True,
                             crop=crop)
