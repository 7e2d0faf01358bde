"""Segmentation scores computed in code: confusion matrix, IoU and accuracy per class."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from geoseg.classes import IGNORE_INDEX


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """(C, C) int64 torch tensor of pixel counts, rows = true class, columns = predicted."""
    import torch

    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """Mean IoU, overall accuracy, and IoU and accuracy (recall) per class.

    Classes absent from both labels and predictions get None and do not count in the mean.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    labelled = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = labelled + predicted - true_positive
    per_class = {}
    ious = []
    for i, name in enumerate(class_names):
        iou = true_positive[i] / union[i] if union[i] > 0 else math.nan
        accuracy = true_positive[i] / labelled[i] if labelled[i] > 0 else math.nan
        if not math.isnan(iou):
            ious.append(iou)
        per_class[name] = {"iou": _number(iou), "accuracy": _number(accuracy)}
    total = confusion.sum()
    return {
        "mean_iou": float(np.mean(ious)) if ious else None,
        "accuracy": float(true_positive.sum() / total) if total > 0 else None,
        "per_class": per_class,
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
