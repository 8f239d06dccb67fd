"""What a classifier looks at: occlusion sensitivity of P(positive), and how much of it falls on the lungs.

Each image's network input is covered patch by patch (a grid of ``patch`` x ``patch`` squares filled with the
image's padding value), and the drop in P(positive) is that patch's importance. ``lung_share`` is the share of
the positive importance (drops above zero) inside the lungs, beside ``lung_area``, the share of the input the
lungs cover: a model that reads lung opacities puts more than its area's worth of importance there; one that
reads source markers (burned-in text, borders, collimation) does not. Pure numpy around any
``predict(batch) -> (N, C) probabilities`` callable, so torch models and ONNX bundles are judged alike.
"""

import numpy as np


def occlusion_map(predict, x, positive, patch=16, fill=None, batch=64):
    """(rows, cols) importance grid: P(positive) of ``x`` minus P(positive) with each patch covered.

    x: one preprocessed input (1, H, W); fill: the value patches get (default: the input's minimum, i.e. the
    letterbox padding).
    """
    x = np.asarray(x, np.float32)
    _, h, w = x.shape
    fill = float(x.min()) if fill is None else float(fill)
    base = float(predict(x[None])[0, positive])
    cells = [(r, c) for r in range(0, h, patch) for c in range(0, w, patch)]
    drops = np.zeros(len(cells), np.float64)
    for start in range(0, len(cells), batch):
        chunk = cells[start:start + batch]
        occluded = np.repeat(x[None], len(chunk), axis=0)
        for k, (r, c) in enumerate(chunk):
            occluded[k, :, r:r + patch, c:c + patch] = fill
        drops[start:start + len(chunk)] = base - predict(occluded)[:, positive]
    return drops.reshape(len(range(0, h, patch)), len(range(0, w, patch)))


def lung_share(importance, lung_mask, patch=16):
    """(share of positive importance on patches that are mostly lung, share of patches that are mostly lung)."""
    mask = np.asarray(lung_mask, bool)
    rows, cols = importance.shape
    on_lung = np.zeros_like(importance, bool)
    for i in range(rows):
        for j in range(cols):
            cell = mask[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
            on_lung[i, j] = cell.size > 0 and cell.mean() >= 0.5
    positive = np.clip(importance, 0.0, None)
    total = positive.sum()
    share = float(positive[on_lung].sum() / total) if total > 0 else None
    return share, float(on_lung.mean())


def attention_summary(predict, inputs, lung_masks, positive, patch=16):
    """Mean lung share of the positive importance over images with any, and the mean lung area share."""
    shares, areas = [], []
    for x, mask in zip(inputs, lung_masks):
        share, area = lung_share(occlusion_map(predict, x, positive, patch), mask, patch)
        areas.append(area)
        if share is not None:
            shares.append(share)
    return {"lung_share_of_importance": float(np.mean(shares)) if shares else None,
            "lung_share_of_area": float(np.mean(areas)) if areas else None, "n_images": len(areas),
            "n_with_importance": len(shares), "patch": patch}
