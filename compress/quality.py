"""Quality-control calibration written into every bundle: per-artifact OOD statistics, area bands, view.

Classifiers: for each artifact ONNX Runtime runs (fp32, int8, fp16 - their features differ), the pooled
features of the training split fit class-conditional Gaussians with a shared covariance
(``lungedge.runtime.ood.fit_gaussians``), stored as ``ood-<artifact>.npz``; the Mahalanobis and energy
thresholds are the ``OOD_ACCEPTANCE`` quantiles of the validation split's scores through the same artifact.
Segmenters: a plausible band of each foreground label's area fraction from the training masks.
"""

import os

import numpy as np

from lungedge.compress.export import FEATURE_NAME
from lungedge.runtime.bundle import sha256_file
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
    return quality
