"""Hugging Face segmentation models through the training core: build, loss, saving weights.

Everything else (Accelerate, chips, augmentation, splits, schedule, metrics, resume,
history, manifest) is ``geoseg.training``'s. The saved model is the best epoch's LoRA
adapter or full model plus ``geoseg_segformer.json`` (see ``model.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from geoseg.classes import IGNORE_INDEX
from geoseg.errors import OptionError
from geoseg.training import Normalization, TrainingRun, TrainingTask, options_json
from geoseg_segformer.model import (
    RGB,
    ModelSettings,
    adapt_input_bands,
    apply_lora,
    head_modules,
    image_normalization,
    load_pretrained,
    parameter_counts,
    quiet_transformers,
    segmentation_logits,
)
from geoseg_segformer.options import DEFAULT_CHECKPOINT, SegmentationOptions

#: Learning rates that suit each mode: adapters and a fresh head tolerate a large step,
#: full fine-tuning of a pretrained encoder needs a small one (SegFormer paper: 6e-5).
DEFAULT_LR = {True: 5e-4, False: 6e-5}


def checkpoint_normalization(checkpoint: str, band_names) -> Normalization:
    """The checkpoint's image-processor normalisation (8-bit units) for ``band_names``:
    red, green and blue get their own, any other band the mean of the three (as its
    patch-embedding filter starts from their mean)."""
    mean, std = image_normalization(checkpoint, 3)
    pick = {band: i for i, band in enumerate(RGB)}
    return Normalization(
        tuple(mean[pick[b]] if b in pick else sum(mean) / 3 for b in band_names),
        tuple(std[pick[b]] if b in pick else sum(std) / 3 for b in band_names),
    )


class SegmentationTask(TrainingTask):
    """Fine-tune a semantic-segmentation checkpoint (LoRA adapters or every weight) on
    any number of bands."""

    #: The model task (``model.AUTO_CLASSES``), its default base checkpoint and learning rates.
    model_task = "segmentation"
    default_checkpoint = DEFAULT_CHECKPOINT
    learning_rates = DEFAULT_LR

    def __init__(self, options: SegmentationOptions) -> None:
        self.options = options
        self.default_lr = self.learning_rates[options.lora]
        self.base_model = self.default_checkpoint
        self.input_conv: str | None = None
        self.counts = (0, 0)

    def setup(self, run: TrainingRun) -> None:
        if run.resumed is not None:
            self.base_model = run.resumed["base_model"]
            if bool(run.resumed["lora"]) != self.options.lora:
                raise OptionError(
                    f"lora={str(self.options.lora).lower()} differs from the interrupted run "
                    f"(lora={str(bool(run.resumed['lora'])).lower()}); resume with the same options"
                )
        else:
            self.base_model = _base_model_id(run.settings.model, self.default_checkpoint)
        if self.options.normalization == "checkpoint":
            run.normalization = checkpoint_normalization(self.base_model, run.dataset.band_names)

    def build_model(self, run: TrainingRun):
        model = load_pretrained(self.base_model, run.classes, task=self.model_task)
        self.input_conv = adapt_input_bands(model, run.dataset.band_names)
        if self.options.lora:
            trained = head_modules(model) + ([self.input_conv] if self.input_conv else [])
            model = apply_lora(model, self.options, trained)
        self.counts = trainable, total = parameter_counts(model)
        architecture = type(model.get_base_model() if self.options.lora else model).__name__
        run.report(
            f"{'LoRA' if self.options.lora else 'full fine-tuning'} on {self.base_model} "
            f"({architecture}): trainable parameters {trainable:,} of {total:,} "
            f"({100.0 * trainable / total:.2f}%)"
        )
        return model

    def training_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        with _running_batch_statistics(model, single=len(labels) == 1):
            logits = segmentation_logits(model, batch["image"], labels.shape[-2:])
        if (labels != IGNORE_INDEX).any():
            return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return logits.sum() * 0.0

    def validation_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        logits = segmentation_logits(model, batch["image"], labels.shape[-2:])
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        return logits.argmax(dim=1), loss

    def save_weights(self, model, folder: Path, run: TrainingRun) -> None:
        with quiet_transformers():  # no "Writing model shards" bar between epoch lines
            model.save_pretrained(str(folder))
        # peft writes a template model card; the plugin README documents the folder.
        (folder / "README.md").unlink(missing_ok=True)
        pattern = "adapter_*" if self.options.lora else "*.safetensors"
        self.settings(run, weights_bytes=sum(f.stat().st_size for f in folder.glob(pattern))).write(
            folder
        )

    def settings(self, run: TrainingRun, **extra: Any) -> ModelSettings:
        trainable, total = self.counts
        return ModelSettings(
            base_model=self.base_model,
            band_names=run.dataset.band_names,
            classes=run.classes,
            mean=run.normalization.mean,
            std=run.normalization.std,
            lora=self.options.lora,
            input_conv=self.input_conv,
            extra={
                "task": self.model_task,
                "trainable_parameters": trainable,
                "total_parameters": total,
                "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
                "options": options_json(self.options),
                **extra,
            },
        )

    def state(self, run: TrainingRun) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "lora": self.options.lora,
            "input_conv": self.input_conv,
            "trainable_parameters": self.counts[0],
            "total_parameters": self.counts[1],
        }


@contextlib.contextmanager
def _running_batch_statistics(model, *, single: bool) -> Iterator[None]:
    """For a batch of one chip, batch-norm layers use their running statistics: the pooled
    (1x1) branches of UperNet, BEiT and DeepLabV3 heads cannot normalise over one value,
    and a chip set's last batch often holds a single chip."""
    from torch import nn

    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    if not single or not norms:
        yield
        return
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()


#: The task's earlier name.
SegformerTask = SegmentationTask


def _base_model_id(model: str | None, default: str = DEFAULT_CHECKPOINT) -> str:
    """The checkpoint to start from; local folders as absolute paths, so the adapter
    records where its base lives."""
    if not model:
        return default
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model
