"""The ``hf-classifier`` backend: one class per chip from any Hugging Face image classifier.

Any ``AutoModelForImageClassification`` checkpoint (ViT, ConvNeXt, Swin, ResNet, BEiT,
DeiT, ...) answers "which class is this chip?" with a probability per class: the backend
kind ``"chips"`` (``geoseg.chip_predict`` writes chip footprints and a coarse class
raster). Training runs through geoseg's training core on a chip set tiled with
``--chip-labels`` or ``--class-folders``: LoRA adapters on the attention query/value
projections (or the pointwise layers of a convolutional backbone) with the classifier
head trained in full, or every weight (``lora=false``), on any number of bands (the patch
embedding widened as for segmentation, ``model.adapt_input_bands``).

A trained model folder is the segmentation backend's layout (``model.py``): a peft
adapter (``adapter_model.safetensors``: LoRA weights, the head, a widened embedding) or
a full model, ``geoseg_segformer.json`` (its ``task`` is ``classification``) and the
manifest. A hub checkpoint or ``save_pretrained`` folder that geoseg did not train
reads 8-bit red, green, blue through the checkpoint's own ``AutoImageProcessor``, so
its answers are those of transformers' pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch, resolve_device
from geoseg.classes import ClassMap
from geoseg.config import option
from geoseg.errors import BackendError, BandError, WeightsError
from geoseg.weights import refuse_pickles
from geoseg_segformer.backend import select_bands
from geoseg_segformer.model import (
    SETTINGS_FILE,
    ModelSettings,
    _interpolates,
    _load_adapter,
    checkpoint_settings,
    checkpoint_source,
    load_pretrained,
    quiet_transformers,
)
from geoseg_segformer.options import SegmentationOptions

log = logging.getLogger(__name__)

#: Base checkpoint when ``geoseg train`` gets no ``--model``.
DEFAULT_CLASSIFIER = "google/vit-base-patch16-224-in21k"
#: Chip size for a checkpoint whose config names no image size.
DEFAULT_CHIP = 224
#: Adapters and a fresh head take a large step (the LoRA ViT recipe: 5e-3); full
#: fine-tuning of a pretrained encoder a small one.
CLASSIFIER_LR = {True: 5e-3, False: 5e-5}
TASK = "classification"


@dataclass(frozen=True)
class ClassificationOptions(SegmentationOptions):
    """The segmentation options (LoRA ``r``, ``alpha``, ``dropout``, ``lora_targets``, the
    training core's), with the best epoch picked by chip accuracy."""

    monitor: Literal["mean_iou", "overall_accuracy", "val_loss"] = option(
        "overall_accuracy",
        applies="train",
        help="The metric that picks the best epoch: overall_accuracy (the share of chips "
        "classed right), mean_iou or val_loss.",
    )


def classification_logits(model, pixel_values):
    """Class logits (N, C) float32 for chips (N, B, H, W) of any size (ViT-style position
    embeddings interpolated to the chip)."""
    kwargs = {"interpolate_pos_encoding": True} if _interpolates(model) else {}
    return model(pixel_values=pixel_values, **kwargs).logits.float()


@dataclass
class LoadedClassifier:
    """A classifier ready to predict: the model, its settings, and the image processor
    that prepares its input (None: geoseg's per-band standardisation)."""

    net: Any
    settings: ModelSettings
    processor: Any = None
    chip_size: int = DEFAULT_CHIP


def load_classifier(model: str, device: str = "cpu") -> LoadedClassifier:
    """``model``: a folder written by ``geoseg train --backend hf-classifier``, or any image
    classifier (hub id or folder) with a trained head, read through its image processor."""
    from geoseg.manifest import read_manifest

    folder = Path(model).expanduser()
    refuse_pickles(folder, model_class="AutoModelForImageClassification")
    if (folder / SETTINGS_FILE).is_file():
        settings = ModelSettings.read(folder)
        if settings.extra.get("task", "segmentation") != TASK:
            raise WeightsError(
                f"{model}: a segmentation model (geoseg train --backend hf); predict it with "
                "--backend hf"
            )
        if settings.lora:
            net = _load_adapter(folder, settings, merge=True, task=TASK)
        else:
            net = load_pretrained(str(folder), task=TASK)
        chip = (read_manifest(folder) or {}).get("chip_size") or _config_size(net.config)
        return LoadedClassifier(net.to(device).eval(), settings, None, int(chip))
    net = load_pretrained(model, task=TASK)
    settings = checkpoint_settings(model, net, task=TASK)
    processor = _image_processor(model) if len(settings.band_names) == 3 else None
    return LoadedClassifier(net.to(device).eval(), settings, processor, _config_size(net.config))


def _image_processor(model: str):
    """The checkpoint's ``AutoImageProcessor``, or None when it has none."""
    from transformers import AutoImageProcessor

    try:
        with quiet_transformers():
            return AutoImageProcessor.from_pretrained(checkpoint_source(model, task=TASK))
    except (OSError, ValueError, KeyError) as exc:
        log.debug("%s: no image processor (%s); ImageNet normalisation", model, exc)
        return None


def _config_size(config) -> int:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = max(size)
    return int(size) if size else DEFAULT_CHIP


class HFClassifierBackend(Backend):
    """Any ``AutoModelForImageClassification`` checkpoint: one class per chip, any bands."""

    name = "hf-classifier"
    description = (
        "One class per chip from any Hugging Face image classifier (ViT, ConvNeXt, Swin, "
        "ResNet, ...); trains LoRA adapters (or the full model) on chips labelled by "
        "geoseg tile --chip-labels or --class-folders, any number of bands"
    )
    Options = ClassificationOptions

    def __init__(self, options: ClassificationOptions | None = None) -> None:
        super().__init__(options)
        self._loaded: LoadedClassifier | None = None
        self._device = "cpu"

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Chips, multi-class, trains; any bands (the model's, once loaded)."""
        return Capabilities(kind="chips", trains=True, chip_size=DEFAULT_CHIP)

    def loaded_capabilities(self) -> Capabilities:
        """After ``load``: the model's bands in input order and the chip size it was trained
        on (a hub checkpoint's image size)."""
        if self._loaded is None:
            return self.capabilities()
        return Capabilities(
            kind="chips",
            trains=True,
            bands=tuple(self._loaded.settings.band_names),
            chip_size=self._loaded.chip_size,
        )

    def load(self, model: str | None, device: str = "auto") -> None:
        if not model:
            raise WeightsError(
                f"{self.name} needs --model: a folder written by geoseg train, or a fine-tuned "
                "image-classification checkpoint (hub id or folder)"
            )
        self._device = resolve_device(device)
        self._loaded = load_classifier(str(model), self._device)
        settings = self._loaded.settings
        log.info(
            "%s: %s on %s, bands %s, classes %s",
            self.name, model, self._device, ",".join(settings.band_names),
            ",".join(settings.classes.names),
        )  # fmt: skip

    @property
    def loaded(self) -> LoadedClassifier:
        if self._loaded is None:
            raise BackendError(f"{self.name}: call load(model) before predicting")
        return self._loaded

    def classes(self) -> ClassMap:
        return self.loaded.settings.classes

    def predict(self, batch: ChipBatch) -> np.ndarray:
        """Class probabilities (N, C) float32, one row per chip."""
        import torch

        loaded = self.loaded
        images = select_bands(batch, tuple(loaded.settings.band_names))
        if loaded.processor is not None:
            pixels = self._processed(images, batch)
        else:
            mean = np.asarray(loaded.settings.mean, np.float32)[None, :, None, None]
            std = np.asarray(loaded.settings.std, np.float32)[None, :, None, None]
            pixels = (images.astype(np.float32, copy=False) - mean) / std
            pixels = torch.from_numpy(np.ascontiguousarray(pixels * batch.valid[:, None]))
        with torch.inference_mode():
            logits = classification_logits(loaded.net, pixels.to(self._device))
            return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32, copy=False)

    def _processed(self, images: np.ndarray, batch: ChipBatch):
        """Chips prepared by the checkpoint's image processor, as transformers' pipeline
        does: 8-bit red, green, blue, height x width x 3."""
        if images.size and (images.min() < 0 or images.max() > 255):
            raise BandError(
                f"{batch.source or 'the source'}: {self.loaded.settings.base_model} is a plain "
                "checkpoint that reads 8-bit red, green, blue, but the chips hold values "
                f"{images.min():g}..{images.max():g}; fine-tune it on these bands with "
                "geoseg train --backend hf-classifier"
            )
        chips = [np.ascontiguousarray(c.transpose(1, 2, 0)).astype(np.uint8) for c in images]
        processed = self.loaded.processor(images=chips, return_tensors="pt")
        return processed["pixel_values"]

    def training_task(self):
        """Training runs through geoseg's training core with one class per chip."""
        # Imported here: torch loads only to train, not when the backend is registered.
        from geoseg_segformer.classify_train import ClassificationTask

        return ClassificationTask(self.options)
