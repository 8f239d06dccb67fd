"""Quality-control calibration written into every bundle: per-artifact OOD statistics, area bands, view.

Classifiers: for each artifact ONNX Runtime runs (fp32, int8, fp16 - their features differ), the pooled
features of the training split fit class-conditional Gaussians with a shared covariance
(``lungedge.runtime.ood.fit_gaussians``), stored as ``ood-<artifact>.npz``; the Mahalanobis and energy
thresholds are the ``OOD_ACCEPTANCE`` quantiles of the validation split's scores through the same artifact.
X-ray classifiers trained on lung crops also get lung-field bands (``lungedge.runtime.lung_fields``) from the
lung masks of their training and validation films.
Segmenters: a plausible band of each foreground label's area fraction from the training masks.

An existing bundle gets (or renews) its lung-field bands without a rebuild::

    python -m lungedge.compress.quality lung-fields --bundle B --lung-bundle L --data ../shared/data/xray-cls
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
from lungedge.runtime.ood import calibrate, energy, fit_gaussians, mahalanobis

# Fraction of validation images each OOD score accepts (two scores: about 98% pass both).
OOD_ACCEPTANCE = 0.99
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
                       threads=None):
    """(means, precision, entry-without-path) of one artifact's OOD check."""
    _, train_features = artifact_outputs(path, train_images, threads=threads)
    means, precision = (a.astype(np.float32) for a in fit_gaussians(train_features, train_labels, n_classes))
    val_logits, val_features = artifact_outputs(path, val_images, threads=threads)
    val = {"mahalanobis": mahalanobis(val_features, means, precision), "energy": energy(val_logits)}
    thresholds = {k: calibrate(v, acceptance) for k, v in val.items()}
    accepted = float(np.mean((val["mahalanobis"] <= thresholds["mahalanobis"])
                             & (val["energy"] <= thresholds["energy"])))
    entry = {"feature_output": FEATURE_NAME, "thresholds": thresholds, "acceptance": acceptance,
             "val_accepted_both": accepted, "feature_dim": int(train_features.shape[1]),
             "fitted_on": f"train split, {len(train_images)} images", "calibrated_on": f"val split, {len(val_images)} images"}
    return means, precision, entry


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
                                                     threads=threads or run.threads)
        name = f"ood-{key}.npz"
        np.savez(os.path.join(bundle_dir, name), means=means.astype(np.float32),
                 precision=precision.astype(np.float32))
        entry.update(path=name, sha256=sha256_file(os.path.join(bundle_dir, name)))
        ood[key] = entry
    quality["ood"] = ood
    if run.crop is not None and spec.modality == "xray":
        paths = [r.image for r in run.train_ds.records + run.val_ds.records]
        quality["lung_fields"] = lung_field_calibration(run.crop.segmenter, paths)
    return quality


def fit_lung_fields(bundle_dir, lung_bundle, data_dir, splits=("train", "val"), acceptance=LUNG_FIELD_ACCEPTANCE,
                    threads=None):
    """Fit (or renew) an existing classifier bundle's ``quality.lung_fields`` and rewrite its manifest."""
    from tqdm import tqdm

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
    progress = lambda it: tqdm(it, desc="lung masks", unit="img", file=sys.stderr, leave=False)  # noqa: E731
    entry = lung_field_calibration(segmenter, paths, acceptance, "+".join(splits), progress)
    manifest["quality"] = dict(manifest.get("quality") or {}, lung_fields=entry)
    write_manifest(bundle.root, manifest)
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
    a = p.parse_args(argv)
    entry = fit_lung_fields(a.bundle, a.lung_bundle, a.data, tuple(a.splits), a.acceptance, a.threads)
    print(f"quality.lung_fields of {a.bundle}: {entry['fitted_on']}, accepted {entry['accepted']:.4f}, "
          f"bands {entry['bands']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
