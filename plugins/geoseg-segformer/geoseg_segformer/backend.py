"""The ``hf`` backend: classes per pixel from any Hugging Face semantic-segmentation model.

``segformer`` is the same backend under its earlier name (SegFormer is the default base
checkpoint of both); a model folder records which name trained it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch, resolve_device
from geoseg.classes import ClassMap
from geoseg.errors import BackendError, BandError, WeightsError
from geoseg_segformer.options import SegmentationOptions

log = logging.getLogger(__name__)


class HFSegmentationBackend(Backend):
    """Any ``AutoModelForSemanticSegmentation`` checkpoint on any bands."""

    name = "hf"
    description = (
        "Any Hugging Face semantic-segmentation checkpoint (SegFormer, UperNet, BEiT, DPT, "
        "MobileViTV2, ...); trains LoRA adapters (or the full model) on geoseg tile chip "
        "sets, any number of bands"
    )
    Options = SegmentationOptions

    def __init__(self, options: SegmentationOptions | None = None) -> None:
        super().__init__(options)
        self._net: Any = None
        self._settings: Any = None
        self._chip_size: int | None = None
        self._input: Any = None
        self._device = "cpu"

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Multi-class, trains; any bands (the model's, once loaded)."""
        return Capabilities(binary=False, trains=True, chip_size=512)

    def loaded_capabilities(self) -> Capabilities:
        """After ``load``: ``bands`` are the model's bands in input order and ``chip_size``
        the size it was trained on (ViT-style position embeddings)."""
        bands = tuple(self._settings.band_names) if self._settings else ()
        return Capabilities(
            binary=False, trains=True, bands=bands, chip_size=self._chip_size or 512
        )

    def load(self, model: str | None, device: str = "auto") -> None:
        if not model:
            raise WeightsError(
                f"{self.name} needs --model: a folder written by geoseg train, or a fine-tuned "
                "segmentation checkpoint (hub id or folder) such as "
                "nvidia/segformer-b0-finetuned-ade-512-512"
            )
        from geoseg.manifest import read_manifest
        from geoseg_segformer.model import SETTINGS_FILE, load_for_prediction, load_image_processor
        from geoseg_segformer.processor import checkpoint_input

        self._device = resolve_device(device)
        self._net, self._settings = load_for_prediction(str(model), self._device)
        # A checkpoint geoseg did not train sees chips as its image processor shows it images.
        trained = (Path(str(model)).expanduser() / SETTINGS_FILE).is_file()
        self._input = None if trained else checkpoint_input(load_image_processor(str(model)))
        manifest = read_manifest(model) if Path(str(model)).expanduser().is_dir() else None
        self._chip_size = (manifest or {}).get("chip_size")
        log.info(
            "%s: %s on %s, bands %s, classes %s",
            self.name, model, self._device, ",".join(self._settings.band_names),
            ",".join(self._settings.classes.names),
        )  # fmt: skip

    @property
    def model_settings(self):
        """The loaded model's settings (bands, normalisation, classes, base checkpoint)."""
        if self._settings is None:
            raise BackendError(f"{self.name}: call load(model) before predicting")
        return self._settings

    def classes(self) -> ClassMap:
        return self.model_settings.classes

    def predict(self, batch: ChipBatch) -> np.ndarray:
        import torch

        from geoseg_segformer.model import segmentation_logits
        from geoseg_segformer.processor import resize_chips

        settings = self.model_settings
        images = self._select_bands(batch)
        height, width = images.shape[-2:]
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            pixels = pixels.to(self._device)
            valid = torch.from_numpy(np.ascontiguousarray(batch.valid)).to(self._device)
            if self._input is not None:
                shape = self._input.model_shape(height, width)
                pixels, valid = resize_chips(pixels, valid, shape, self._input.resample)
            mean = torch.tensor(settings.mean, dtype=torch.float32, device=self._device)
            std = torch.tensor(settings.std, dtype=torch.float32, device=self._device)
            pixels = (pixels - mean[:, None, None]) / std[:, None, None]
            pixels *= valid[:, None]
            if self._input is not None and self._input.flip_channels:
                pixels = pixels.flip(1)  # RGB to BGR, after normalising (MobileViT's order)
            # Most of these models predict at reduced resolution: upsampled to the chip
            # before the engine blends overlapping chips.
            logits = segmentation_logits(self._net, pixels, (height, width))
            return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32, copy=False)

    def _select_bands(self, batch: ChipBatch) -> np.ndarray:
        return select_bands(batch, tuple(self.model_settings.band_names))

    def export_onnx(self, model, path, settings):
        """``geoseg export``: LoRA merged, normalisation baked in, softmax at chip size."""
        from geoseg_segformer.export import export_segformer

        return export_segformer(model, path, settings)

    def training_task(self):
        """Training runs through geoseg's training core with the segmentation task."""
        from geoseg_segformer.train import SegmentationTask

        return SegmentationTask(self.options)


class SegformerBackend(HFSegmentationBackend):
    """The ``hf`` backend under its earlier name: nothing but the name differs."""

    name = "segformer"
    description = (
        "SegFormer land-cover classes (the hf backend under its earlier name: any "
        "Hugging Face segmentation checkpoint); LoRA or full fine-tuning, any bands"
    )


def select_bands(batch: ChipBatch, wanted: tuple[str, ...]) -> np.ndarray:
    """The batch's images (N, B, H, W) with the bands ``wanted``, in that order."""
    given = tuple(batch.band_names)
    if given == wanted:
        return batch.images
    missing = [b for b in wanted if b not in given]
    if missing:
        raise BandError(
            f"{batch.source or 'the source'}: the model reads bands {', '.join(wanted)} but "
            f"the source has {', '.join(given)}; name its bands with --bands, e.g. "
            + ",".join(f"{b}={i}" for i, b in enumerate(wanted, start=1))
        )
    return batch.images[:, [given.index(b) for b in wanted]]
