"""Quality-control calibration written into every bundle: per-artifact OOD statistics, area bands, view.

Classifiers: for each artifact ONNX Runtime runs (fp32, int8, fp16 - their features differ), the pooled
features of the training split fit class-conditional Gaussians with a shared covariance
(``lungedge.runtime.ood.fit_gaussians``), stored as ``ood-<artifact>.npz``; the Mahalanobis and energy
thresholds start at the ``OOD_ACCEPTANCE`` quantiles of the validation split's scores through the same artifact
and are relaxed until every source of the validation split accepts at least ``OOD_MIN_SOURCE_ACCEPTANCE``
(``lungedge.runtime.ood.calibrate_per_group``; the bench's acceptance target is per source, not pooled).
X-ray classifiers trained on lung crops also get lung-field bands (``lungedge.runtime.lung_fields``) from the
lung masks of their training and validation films.
Classifiers also get an orientation check (``lungedge.runtime.orientation_check``: inverted grey levels, and for
X-rays quarter or half turns) fitted on their own training images and copies of them transformed, thresholds on
the validation split.
Segmenters: a plausible band of each foreground label's area fraction from the training masks.

An existing bundle gets (or renews) its lung-field bands, or its OOD thresholds (the training split's
Gaussians are kept; only the validation split is read), without a rebuild::

    python -m lungedge.compress.quality lung-fields --bundle B --lung-bundle L --data ../shared/data/xray-cls
    python -m lungedge.compress.quality ood --bundle B --lung-bundle L --data ../shared/data/xray-cls

An existing classifier gets (or renews) its orientation check the same way::

    python -m lungedge.compress.quality orientation --bundle B --data ../shared/data/xray-cls

A bundle also gets a modality check (``lungedge.runtime.modality_check``: refuse an image of the pack's other
modality) from the training splits of its own and the other modality's folders, its threshold from its own
validation split::

    python -m lungedge.compress.quality modality --bundle bundles/ct-cls --data ../shared/data/ct-cls \
        --other ../shared/data/xray-cls
"""

import argparse
import os
import sys

import numpy as np

from lungedge.compress.export import FEATURE_NAME
from lungedge.runtime.bundle import Bundle, sha256_file, write_manifest
from lungedge.runtime.datasets import read_manifest_csv, select
from lungedge.runtime.io import read_any
from lungedge.runtime.lung_fields import (
    LUNG_FIELD_ACCEPTANCE,
    accepted_fraction,
    fit_bands,
    lung_field_scores,
)
from lungedge.runtime.ood import SCORES, calibrate_per_group, energy, fit_gaussians, mahalanobis

# Fraction of validation images each OOD score accepts (two scores: about 98% pass both).
OOD_ACCEPTANCE = 0.99
# ... and the least every source of the validation split must accept with all scores together.
OOD_MIN_SOURCE_ACCEPTANCE = 0.99
OOD_RULE = "pooled_then_relax"
# Area band: training masks' 0.5-99.5 percentiles of the area fraction, widened by these factors.
AREA_QUANTILES = (0.005, 0.995)
AREA_MARGIN = (0.5, 1.5)


def artifact_outputs(path, images, batch_size=32, threads=None):
    """(logits, features) of an ONNX artifact with a feature output over (N, 1, H, W) images."""
    from lungedge.runtime.backends import create_backend

    logits, features = [], []
    with create_backend("onnxruntime", path, threads=threads) as backend:
        first = backend.output_names[0]
        for i in range(0, len(images), batch_size):
            out = backend.run_outputs(images[i:i + batch_size], [first, FEATURE_NAME])
            logits.append(out[first])
            features.append(out[FEATURE_NAME].reshape(len(out[first]), -1))
    return np.concatenate(logits), np.concatenate(features)


def calibrate_artifact(path, train_images, train_labels, val_images, n_classes, acceptance=OOD_ACCEPTANCE,
                       threads=None, val_sources=None, min_source_acceptance=OOD_MIN_SOURCE_ACCEPTANCE,
                       scores=SCORES):
    """(means, precision, entry-without-path) of one artifact's OOD check."""
    _, train_features = artifact_outputs(path, train_images, threads=threads)
    means, precision = (a.astype(np.float32) for a in fit_gaussians(train_features, train_labels, n_classes))
    entry = ood_thresholds(path, means, precision, val_images, val_sources, acceptance, min_source_acceptance,
                           scores, threads)
    entry.update(feature_output=FEATURE_NAME, feature_dim=int(train_features.shape[1]),
                 fitted_on=f"train split, {len(train_images)} images")
    return means, precision, entry


def ood_thresholds(path, means, precision, val_images, val_sources=None, acceptance=OOD_ACCEPTANCE,
                   min_source_acceptance=OOD_MIN_SOURCE_ACCEPTANCE, scores=SCORES, threads=None):
    """The thresholds part of an artifact's ``quality.ood`` entry, calibrated on validation images.

    ``val_sources`` (one name per image, e.g. the dev pack's ``source`` column): every source then accepts at
    least ``min_source_acceptance``; without them (or with a floor of None) the pooled quantiles stand alone.
    """
    unknown = set(scores) - set(SCORES)
    if not scores or unknown:
        raise ValueError(f"scores must be a non-empty subset of {SCORES}, got {list(scores)}")
    val_logits, val_features = artifact_outputs(path, val_images, threads=threads)
    every = {"mahalanobis": mahalanobis(val_features, means, precision), "energy": energy(val_logits)}
    val = {k: every[k] for k in SCORES if k in scores}
    per_source = val_sources is not None and min_source_acceptance is not None
    groups = [str(s or "unknown") for s in val_sources] if per_source else ["all"] * len(val_images)
    thresholds, counts = calibrate_per_group(val, groups, acceptance, min_source_acceptance if per_source else 0.0)
    accepted = sum(a for a, _ in counts.values()) / float(len(groups))
    entry = {"thresholds": thresholds, "acceptance": acceptance, "val_accepted_both": accepted,
             "calibrated_on": f"val split, {len(val_images)} images"}
    if per_source:
        entry.update(rule=OOD_RULE, min_source_acceptance=min_source_acceptance,
                     val_accepted_by_source={g: {"accepted": a, "n": n, "rate": round(a / n, 6)}
                                             for g, (a, n) in counts.items()})
    return entry


def area_bands(masks, labels):
    """{label: [low, high]} plausible area fractions of each foreground label from training masks."""
    masks = np.asarray(masks)
    foreground = [(1, labels[-1])] if len(labels) == 2 else list(enumerate(labels))[1:]
    bands = {}
    for value, label in foreground:
        fractions = (masks == value).reshape(len(masks), -1).mean(axis=1)
        low, high = np.quantile(fractions, AREA_QUANTILES)
        bands[label] = [round(float(low) * AREA_MARGIN[0], 6), round(min(1.0, float(high) * AREA_MARGIN[1]), 6)]
    return bands


def lung_mask_scores(segmenter, paths, progress=None):
    """The lung-field statistics of each film (``lungedge.runtime.lung_fields``) from ``segmenter``'s masks."""
    scores = []
    for path in progress(paths) if progress else paths:
        array, meta = read_any(path)
        lung = segmenter.predict_images([(array, meta, {"file": os.path.basename(path)})], check_quality=False)[0]
        scores.append(lung_field_scores(lung["mask"], array))
    return scores


def lung_field_calibration(segmenter, paths, acceptance=LUNG_FIELD_ACCEPTANCE, splits="train+val", progress=None):
    """The manifest's ``quality.lung_fields`` entry: bands fitted on the lung masks of in-distribution films."""
    scores = lung_mask_scores(segmenter, paths, progress)
    bands = fit_bands(scores, acceptance)
    return {"segmenter": segmenter.name, "segmenter_manifest_sha256": segmenter.bundle.manifest_sha256,
            "acceptance": acceptance, "bands": bands, "accepted": round(accepted_fraction(scores, bands), 6),
            "fitted_on": f"{splits} splits, {len(paths)} images"}


def quality_calibration(run, bundle_dir, artifacts, threads=None):
    """The manifest's ``quality`` block for a bundle being built (writes ``ood-<key>.npz`` files)."""
    from lungedge.runtime.quality import display_window

    spec = run.spec
    quality = {"view": "frontal" if spec.modality == "xray" else "any"}
    if spec.kind != "classification":
        quality["area"] = area_bands(run.train_ds.targets, list(spec.labels))
        return quality
    ood = {}
    for key, art in artifacts.items():
        if art["backend"] != "onnxruntime":
            continue  # a TensorRT source model: the engine built from it on the device has no calibration yet
        means, precision, entry = calibrate_artifact(os.path.join(bundle_dir, art["path"]), run.train_ds.images,
                                                     run.train_ds.targets, run.val_ds.images, len(spec.labels),
                                                     threads=threads or run.threads,
                                                     val_sources=getattr(run.val_ds, "sources", None))
        name = f"ood-{key}.npz"
        np.savez(os.path.join(bundle_dir, name), means=means.astype(np.float32),
                 precision=precision.astype(np.float32))
        entry.update(path=name, sha256=sha256_file(os.path.join(bundle_dir, name)))
        ood[key] = entry
    quality["ood"] = ood
    quality["orientation_check"] = orientation_calibration([r.image for r in run.train_ds.records],
                                                           [r.image for r in run.val_ds.records], spec.modality,
                                                           display_window({"preprocessing": run.steps}))
    if run.crop is not None and spec.modality == "xray":
        paths = [r.image for r in run.train_ds.records + run.val_ds.records]
        quality["lung_fields"] = lung_field_calibration(run.crop.segmenter, paths)
    return quality


def _set_quality(bundle, manifest, **entries):
    """Rewrite ``bundle``'s manifest with ``entries`` set in its ``quality`` block (the rest kept)."""
    manifest["quality"] = dict(manifest.get("quality") or {}, **entries)
    write_manifest(bundle.root, manifest)


def _progress(desc):
    """A progress bar over images on stderr, gone when done."""
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, unit="img", file=sys.stderr, leave=False)


def fit_lung_fields(bundle_dir, lung_bundle, data_dir, splits=("train", "val"), acceptance=LUNG_FIELD_ACCEPTANCE,
                    threads=None):
    """Fit (or renew) an existing classifier bundle's ``quality.lung_fields`` and rewrite its manifest."""
    from lungedge.runtime.predictor import Predictor

    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    if manifest["task"] != "classification" or manifest["modality"] != "xray":
        raise ValueError(f"{bundle_dir}: lung-field bands belong to X-ray classification bundles")
    segmenter = Predictor.from_bundle(lung_bundle, threads=threads)
    crop = manifest.get("input_crop")
    if crop and crop.get("segmenter_manifest_sha256") != segmenter.bundle.manifest_sha256:
        raise ValueError(f"{bundle_dir} was trained on crops by segmenter {crop.get('segmenter')!r}, not "
                         f"{segmenter.name!r}: fit the bands with that lung bundle")
    labels = set(manifest["labels"])
    records = [r for split in splits for r in select(read_manifest_csv(data_dir), split) if r.label in labels]
    paths = [r.image for r in records]
    progress = _progress("lung masks")
    entry = lung_field_calibration(segmenter, paths, acceptance, "+".join(splits), progress)
    _set_quality(bundle, manifest, lung_fields=entry)
    return entry


def split_images(manifest, data_dir, split, crop=None, progress=None):
    """(images (N, 1, H, W), sources) of one split of a dev-pack folder, read, lung-cropped and preprocessed
    exactly as ``lungedge compress`` prepares its calibration images (``models.data.TaskDataset``)."""
    from lungedge.runtime.io.image import read_image
    from lungedge.runtime.preprocess import preprocess

    labels = set(manifest["labels"])
    records = [r for r in select(read_manifest_csv(data_dir), split) if r.label in labels]
    if not records:
        raise ValueError(f"{data_dir} has no {split} images with the bundle's labels")
    images = []
    for rec in progress(records) if progress else records:
        array, meta = read_image(rec.image)
        if crop is not None:
            array, meta, _ = crop(array, meta, {"file": os.path.basename(rec.image)})
        images.append(preprocess(array, meta, manifest["preprocessing"])[0])
    return np.stack(images).astype(np.float32), [r.extra.get("source", "") for r in records]


def refit_ood(bundle_dir, data_dir, lung_bundle=None, split="val", acceptance=OOD_ACCEPTANCE,
              min_source_acceptance=OOD_MIN_SOURCE_ACCEPTANCE, scores=SCORES, threads=None):
    """Recalibrate an existing classifier bundle's ``quality.ood`` thresholds on ``split`` (never test) and
    rewrite its manifest; each artifact keeps the Gaussians fitted on the training split (``ood-<key>.npz``)."""
    from lungedge.runtime.pipelines import LungCrop, input_crop
    from lungedge.runtime.predictor import Predictor

    if split == "test":
        raise ValueError("OOD thresholds are calibrated on the validation split, never on the test split")
    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    ood = dict((manifest.get("quality") or {}).get("ood") or {})
    if manifest["task"] != "classification" or not ood:
        raise ValueError(f"{bundle_dir}: no quality.ood to recalibrate (build the bundle with lungedge compress)")
    crop = None
    trained_crop = input_crop(manifest)
    if trained_crop is not None:
        if not lung_bundle:
            raise ValueError(f"{bundle_dir} was trained on lung crops: give its lung bundle (--lung-bundle)")
        crop = LungCrop(Predictor.from_bundle(lung_bundle, threads=threads), trained_crop.get("margin", 0.05))
        crop.check(trained_crop)
    progress = _progress(f"{split} images")
    images, sources = split_images(manifest, data_dir, split, crop, progress)
    for key, entry in ood.items():
        with np.load(os.path.join(bundle.root, entry["path"])) as stats:
            means, precision = stats["means"], stats["precision"]
        fresh = ood_thresholds(bundle.path_of(key), means, precision, images, sources, acceptance,
                               min_source_acceptance, scores, threads)
        fresh["calibrated_on"] = f"{split} split, {len(images)} images"
        kept = {k: v for k, v in entry.items() if k not in ("rule", "min_source_acceptance", "val_accepted_by_source")}
        ood[key] = dict(kept, **fresh)
    _set_quality(bundle, manifest, ood=ood)
    return ood


def _describer(hu_window=None):
    """descriptor(array, meta) of one 2-D image as ``QualityControl`` takes it (HU through ``hu_window``)."""
    from lungedge.runtime.modality_check import descriptor
    from lungedge.runtime.quality import HU_WINDOW, stats_image

    return lambda array, meta: descriptor(stats_image(array, meta, hu_window or HU_WINDOW)[0])


def _images_2d(paths, progress=None):
    """(array, meta) of each file, a volume as its middle slice."""
    out = []
    for path in progress(paths) if progress else paths:
        array, meta = read_any(path)[:2]
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[array.shape[0] // 2]
        out.append((array, meta))
    return out


def modality_descriptors(data_dir, split, progress=None, hu_window=None):
    """Modality-check descriptors of every image of one split of a dev-pack folder, read as the runtime reads
    an input (before any lung crop or preprocessing; HU through ``hu_window``, the bundle's display window)."""
    records = select(read_manifest_csv(data_dir), split)
    if not records:
        raise ValueError(f"{data_dir} has no {split} images")
    describe = _describer(hu_window)
    return np.stack([describe(a, m) for a, m in _images_2d([r.image for r in records], progress)])


def orientation_calibration(train_paths, val_paths, modality, hu_window=None, progress=None):
    """The manifest's ``quality.orientation_check`` entry from the bundle's own training and validation images
    (``lungedge.runtime.orientation_check``; the transforms of ``KINDS[modality]``)."""
    from lungedge.runtime.orientation_check import KINDS, fit_check

    describe = _describer(hu_window)
    train = _images_2d(train_paths, progress)
    val = np.stack([describe(a, m) for a, m in _images_2d(val_paths, progress)])
    entry = fit_check(train, val, describe, kinds=KINDS[modality])
    entry["fitted_on"] = f"train split, {len(train_paths)} images and their {' and '.join(KINDS[modality])} copies"
    entry["calibrated_on"] = f"val split, {len(val_paths)} images"
    return entry


def fit_orientation(bundle_dir, data_dir, split="val"):
    """Fit (or renew) a bundle's ``quality.orientation_check`` and rewrite its manifest."""
    from lungedge.runtime.quality import display_window

    if split == "test":
        raise ValueError("the orientation thresholds are calibrated on the validation split, never on the test split")
    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    labels = set(manifest.get("labels") or [])
    rows = read_manifest_csv(data_dir)
    train = [r.image for r in select(rows, "train") if not labels or r.label in labels]
    val = [r.image for r in select(rows, split) if not labels or r.label in labels]
    if not train or not val:
        raise ValueError(f"{data_dir} has no train or {split} images with the bundle's labels")
    entry = orientation_calibration(train, val, manifest["modality"], display_window(manifest), _progress("orientation"))
    _set_quality(bundle, manifest, orientation_check=entry)
    return entry


def fit_modality(bundle_dir, data_dir, other_dir, acceptance=None, split="val"):
    """Fit (or renew) a bundle's ``quality.modality_check`` and rewrite its manifest."""
    from lungedge.runtime.modality_check import ACCEPTANCE, fit_check
    from lungedge.runtime.quality import display_window

    if split == "test":
        raise ValueError("the modality threshold is calibrated on the validation split, never on the test split")
    bundle = Bundle.load(bundle_dir)
    manifest = dict(bundle.manifest)
    modality = manifest["modality"]
    other = {"xray": "ct", "ct": "xray"}[modality]

    window = display_window(manifest)
    own_train = modality_descriptors(data_dir, "train", _progress(f"{modality} train"), window)
    own_val = modality_descriptors(data_dir, split, _progress(f"{modality} {split}"), window)
    other_train = modality_descriptors(other_dir, "train", _progress(f"{other} train"), window)
    entry = fit_check(own_train, other_train, own_val, modality, other,
                      ACCEPTANCE if acceptance is None else acceptance)
    entry["fitted_on"] = (f"train splits of {os.path.basename(os.path.normpath(data_dir))} ({len(own_train)}, "
                          f"{modality}) and {os.path.basename(os.path.normpath(other_dir))} ({len(other_train)}, "
                          f"{other})")
    entry["calibrated_on"] = f"{split} split, {len(own_val)} images"
    _set_quality(bundle, manifest, modality_check=entry)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lungedge.compress.quality",
                                description="Fit quality-control calibration into an existing bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    lf = sub.add_parser("lung-fields", help="lung-field bands of an X-ray classifier (quality.lung_fields)")
    lf.add_argument("--bundle", required=True, help="X-ray classification bundle (its manifest is rewritten)")
    lf.add_argument("--lung-bundle", required=True, help="the lung segmentation bundle the pipeline runs with")
    lf.add_argument("--data", required=True, help="dev-pack style folder (manifest.csv) of in-distribution films")
    lf.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to fit on (never the test split)")
    lf.add_argument("--acceptance", type=float, default=LUNG_FIELD_ACCEPTANCE)
    lf.add_argument("--threads", type=int, default=None)
    od = sub.add_parser("ood", help="OOD thresholds of a classifier (quality.ood) with a floor per source")
    od.add_argument("--bundle", required=True, help="classification bundle built by lungedge compress (rewritten)")
    od.add_argument("--data", required=True, help="dev-pack style folder (manifest.csv with a source column)")
    od.add_argument("--lung-bundle", help="the lung bundle a lung-crop classifier was trained with")
    od.add_argument("--split", default="val", help="split to calibrate on (never the test split)")
    od.add_argument("--acceptance", type=float, default=OOD_ACCEPTANCE, help="pooled acceptance of each score")
    od.add_argument("--min-source-acceptance", type=float, default=OOD_MIN_SOURCE_ACCEPTANCE,
                    help="least acceptance of every source (all scores together); negative: pooled only")
    od.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES, help="scores to check")
    od.add_argument("--threads", type=int, default=None)
    mo = sub.add_parser("modality", help="modality check (quality.modality_check): refuse the other modality")
    mo.add_argument("--bundle", required=True, help="bundle whose manifest is rewritten")
    mo.add_argument("--data", required=True, help="dev-pack style folder of the bundle's modality (train, val)")
    mo.add_argument("--other", required=True, help="dev-pack style folder of the other modality (its train split)")
    mo.add_argument("--acceptance", type=float, default=None, help="validation acceptance (default 0.99)")
    oc = sub.add_parser("orientation", help="orientation check (quality.orientation_check): refuse inverted or "
                                            "rotated images")
    oc.add_argument("--bundle", required=True, help="bundle whose manifest is rewritten")
    oc.add_argument("--data", required=True, help="dev-pack style folder of the bundle's images (train, val)")
    a = p.parse_args(argv)
    if a.command == "orientation":
        entry = fit_orientation(a.bundle, a.data)
        for kind, check in sorted(entry["checks"].items()):
            print(f"quality.orientation_check[{kind}] of {a.bundle}: threshold {check['threshold']:.4g} accepts "
                  f"{check['val_accepted']:.4f} of the {entry['calibrated_on']}, refuses "
                  f"{check['train_transformed_refused']:.4f} of the {kind} training copies")
        return 0
    if a.command == "modality":
        entry = fit_modality(a.bundle, a.data, a.other, a.acceptance)
        print(f"quality.modality_check of {a.bundle}: {entry['fitted_on']}; threshold {entry['threshold']:.4g} "
              f"accepts {entry['val_accepted']:.4f} of the {entry['calibrated_on']}, refuses "
              f"{entry['other_train_refused']:.4f} of the other modality's training images")
        return 0
    if a.command == "ood":
        floor = None if a.min_source_acceptance < 0 else a.min_source_acceptance
        ood = refit_ood(a.bundle, a.data, a.lung_bundle, a.split, a.acceptance, floor, tuple(a.scores), a.threads)
        for key, entry in sorted(ood.items()):
            by_source = ", ".join(f"{g} {v['accepted']}/{v['n']}"
                                  for g, v in (entry.get("val_accepted_by_source") or {}).items())
            print(f"quality.ood[{key}] of {a.bundle}: thresholds {entry['thresholds']}, {entry['calibrated_on']} "
                  f"accepted {entry['val_accepted_both']:.4f}" + (f" ({by_source})" if by_source else ""))
        return 0
    entry = fit_lung_fields(a.bundle, a.lung_bundle, a.data, tuple(a.splits), a.acceptance, a.threads)
    print(f"quality.lung_fields of {a.bundle}: {entry['fitted_on']}, accepted {entry['accepted']:.4f}, "
          f"bands {entry['bands']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
