"""SegFormer through the training core: model build, loss, forward step, saving weights.

Everything else (Accelerate, chips, augmentation, splits, schedule, metrics, resume,
history, manifest) is ``geoseg.training``'s. The saved model is the best epoch's LoRA
adapter or full model plus ``geoseg_segformer.json`` (see ``model.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from geoseg.classes import IGNORE_INDEX
from geoseg.errors import OptionError
from geoseg.training import TrainingRun, TrainingTask, options_json
from geoseg_segformer.model import (
    ModelSettings,
    adapt_input_bands,
    apply_lora,
    head_modules,
    load_pretrained,
    parameter_counts,
)
from geoseg_segformer.options import DEFAULT_CHECKPOINT, SegformerOptions

#: Learning rates that suit each mode: adapters and a fresh head tolerate a large step,
#: full fine-tuning of a pretrained encoder needs a small one (SegFormer paper: 6e-5).
DEFAULT_LR = {True: 5e-4, False: 6e-5}


class SegformerTask(TrainingTask):
    """Fine-tune SegFormer (LoRA adapters or every weight) on any number of bands."""

    def __init__(self, options: SegformerOptions) -> None:
        self.options = options
        self.default_lr = DEFAULT_LR[options.lora]
        self.base_model = DEFAULT_CHECKPOINT
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
            self.base_model = _base_model_id(run.settings.model)

    def build_model(self, run: TrainingRun):
        model = load_pretrained(self.base_model, run.classes)
        self.input_conv = adapt_input_bands(model, run.dataset.band_names)
        if self.options.lora:
            trained = head_modules(model) + ([self.input_conv] if self.input_conv else [])
            model = apply_lora(model, self.options, trained)
        self.counts = trainable, total = parameter_counts(model)
        run.report(
            f"{'LoRA' if self.options.lora else 'full fine-tuning'} on {self.base_model}: "
            f"trainable parameters {trainable:,} of {total:,} ({100.0 * trainable / total:.2f}%)"
        )
        return model

    def training_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        logits = _logits(model, batch["image"], labels.shape[-2:])
        if (labels != IGNORE_INDEX).any():
            return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return logits.sum() * 0.0

    def validation_step(self, model, batch, run: TrainingRun):
        labels = batch["label"]
        logits = _logits(model, batch["image"], labels.shape[-2:])
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        return logits.argmax(dim=1), loss

    def save_weights(self, model, folder: Path, run: TrainingRun) -> None:
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
        }


def _base_model_id(model: str | None) -> str:
    """The checkpoint to start from; local folders as absolute paths, so the adapter
    records where its base lives."""
    if not model:
        return DEFAULT_CHECKPOINT
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _logits(model, images: torch.Tensor, size) -> torch.Tensor:
    logits = model(pixel_values=images).logits
    # SegFormer predicts at 1/4 resolution; the loss and scores are taken at label size.
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
