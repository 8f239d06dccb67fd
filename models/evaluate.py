"""Predictions of a torch model over a dataset, and the metrics training, distillation and the gate score them by."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from lungedge.models.data import IGNORE
from lungedge.runtime.enums import TaskKind


@torch.no_grad()
def predict(model, dataset, batch_size=32):
    """Class probabilities (N, C) or foreground probabilities (N, H, W) for a whole dataset."""
    model.eval()
    outs = []
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        y = model(x)
        outs.append(torch.softmax(y, 1) if y.shape[1] > 1 and y.ndim == 2 else torch.sigmoid(y[:, 0]))
    return torch.cat(outs).numpy()


def evaluate(spec, outputs, targets, threshold=None):
    """Validation/test metrics (kit metrics module); the threshold is fitted on validation when None."""
    from lungedge import metrics as M

    if spec.kind == TaskKind.CLASSIFICATION:
        pos = spec.labels.index(spec.positive_label)
        y = (targets == pos).astype(int)
        scores = outputs[:, pos]
        if threshold is None:
            threshold = float(M.fit_threshold(y, scores, rule="youden"))
        rep = M.classification_report(y, scores, threshold)
        out = {"threshold": threshold, "auc": rep["auc"], "positive": spec.positive_label,
               "sensitivity": rep["sensitivity"], "specificity": rep["specificity"],
               "precision": rep["precision"], "accuracy": rep["accuracy"], "f1": rep["f1"], "f2": rep["f2"]}
        if len(spec.labels) > 2:
            out["per_class"] = M.per_class_report(targets, outputs, list(spec.labels))
            out["macro_auc"] = out["per_class"]["macro"]["auc"]
        out["score"] = out.get("macro_auc", out["auc"])
        return out
    threshold = 0.5 if threshold is None else threshold
    dices = []
    for prob, mask in zip(outputs, targets):
        valid = mask != IGNORE
        dices.append(M.dice((prob >= threshold) & valid, (mask == 1) & valid))
    return {"threshold": threshold, "dice": float(np.mean(dices)), "dice_std": float(np.std(dices)),
            "score": float(np.mean(dices))}
