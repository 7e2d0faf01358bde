"""Training of the ``hf-classifier`` backend: one class per chip through geoseg's core.

Apart from ``classify`` so that registering the backend (``geoseg backends``, any
``geoseg predict``) does not import torch.
"""

from __future__ import annotations

import torch.nn.functional as F

from geoseg.classes import IGNORE_INDEX
from geoseg.training import TrainingRun
from geoseg_segformer.classify import (
    CLASSIFIER_LR,
    DEFAULT_CLASSIFIER,
    TASK,
    classification_logits,
)
from geoseg_segformer.train import SegmentationTask, _running_batch_statistics


class ClassificationTask(SegmentationTask):
    """Fine-tune an image classifier on one class per chip (LoRA or every weight)."""

    model_task = TASK
    default_checkpoint = DEFAULT_CLASSIFIER
    learning_rates = CLASSIFIER_LR
    labels = "chips"

    def training_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        with _running_batch_statistics(model, single=len(labels) == 1):
            logits = classification_logits(model, batch["image"])
        if (labels != IGNORE_INDEX).any():
            return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return logits.sum() * 0.0

    def validation_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        logits = classification_logits(model, batch["image"])
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        return logits.argmax(dim=1), loss
