"""The ``sam`` backend: Segment Anything prompted by spectral indices or user prompts.

``load`` takes a model folder written by ``geoseg train --backend sam`` (base checkpoint
plus tuned decoder, band choice, 8-bit stretch and prompt settings) or a bare SAM
checkpoint for zero-shot use. Prediction computes each prompted chip's image embedding
once, decodes all of the chip's prompts in one batch and merges their masks by score;
chips without prompts are background and never reach the encoder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch, resolve_device
from geoseg.classes import ClassMap
from geoseg.errors import BackendError, WeightsError
from geoseg_sam.options import SamOptions

if TYPE_CHECKING:
    from geoseg.raster import RasterSource

log = logging.getLogger(__name__)

CHIP_SIZE = 512
#: Windows read to measure a per-raster stretch for zero-shot use on non-8-bit imagery.
STRETCH_WINDOWS = 16
STRETCH_WINDOW_SIZE = 256


class SamBackend(Backend):
    name = "sam"
    description = (
        "Segment Anything: frozen encoders, trainable mask decoder, spectral or file prompts"
    )
    Options = SamOptions

    def __init__(self, options: SamOptions | None = None) -> None:
        super().__init__(options)
        self.model = None
        self.frame = None
        self.settings: dict[str, Any] | None = None
        self.stretch = None
        self.raster_stretch = None
        self.device = "cpu"
        self.class_name = "water"
        self.multimask = self.options.multimask
        self.bands: tuple[str, ...] = self.options.bands

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            binary=True,
            needs_prompts=True,
            trains=True,
            bands=SamOptions().bands,
            chip_size=CHIP_SIZE,
        )

    def loaded_capabilities(self) -> Capabilities:
        """Capabilities with the bands this instance reads (the trained model's, once loaded)."""
        return Capabilities(
            binary=True,
            needs_prompts=True,
            trains=True,
            bands=self.bands,
            chip_size=CHIP_SIZE,
        )

    def load(self, model: str | None, device: str = "auto") -> None:
        """Load a trained model folder or a bare SAM checkpoint (hub id or folder)."""
        from geoseg_sam.model import load_decoder, load_sam
        from geoseg_sam.preprocess import BandStretch
        from geoseg_sam.train import DECODER_FILE, SETTINGS_FILE

        self.device = resolve_device(device)
        folder = Path(model).expanduser() if model else None
        if folder is not None and (folder / SETTINGS_FILE).is_file():
            try:
                settings = json.loads((folder / SETTINGS_FILE).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise WeightsError(
                    f"{folder / SETTINGS_FILE}: unreadable ({exc}); retrain the model"
                ) from None
            if not (folder / DECODER_FILE).is_file():
                raise WeightsError(
                    f"{folder}: no {DECODER_FILE} yet (training stopped before the first epoch "
                    f"ended); resume it with geoseg train --resume"
                )
            sam, frame = load_sam(settings["base_model"])
            load_decoder(sam, folder / DECODER_FILE)
            self.settings = settings
            self.stretch = BandStretch.from_json(settings["stretch"])
            self.bands = tuple(settings["bands"])
            self.class_name = settings.get("class_name", "water")
            self.multimask = settings.get("multimask", self.options.multimask)
        else:
            sam, frame = load_sam(model)
        self.model = sam.to(self.device).eval()
        self.frame = frame

    def classes(self) -> ClassMap:
        return ClassMap.from_names(["background", self.class_name])

    def prompt_settings(self) -> Mapping[str, Any] | None:
        """Spectral prompts drawn like the training prompts (without box perturbation)."""
        saved = (self.settings or {}).get("prompt", {})
        auto = (self.settings or {}).get("auto_prompts", {})
        kind = saved.get("kind", self.options.prompt)
        return {
            "index": self.options.index or auto.get("index", "auto"),
            "threshold": self.options.threshold or auto.get("threshold", "auto"),
            "points": 0 if kind == "boxes" else int(saved.get("positive", self.options.positive)),
            "negative": int(saved.get("negative", self.options.negative)),
            "boxes": kind == "boxes",
            "erode": int(saved.get("erode", self.options.erode_radius)),
            "perturb": 0,
        }

    def begin_raster(self, source: RasterSource) -> None:
        """Zero-shot: 8-bit imagery as it is (SAM's own pipeline), other imagery stretched
        between ``percentiles`` measured over this raster (``stretch`` overrides either)."""
        from geoseg_sam.preprocess import BandStretch, select_bands

        self.raster_stretch = None
        if self.stretch is not None:
            return
        mode = self.options.stretch
        if mode is None:
            mode = "off" if np.dtype(source.dtype) == np.uint8 else "percentile"
        if mode == "off":
            self.raster_stretch = BandStretch.identity(self.bands)
            return
        from rasterio.windows import Window

        rng = np.random.default_rng(0)
        size = min(STRETCH_WINDOW_SIZE, source.width, source.height)
        rows = np.linspace(0, source.height - size, int(np.sqrt(STRETCH_WINDOWS))).astype(int)
        cols = np.linspace(0, source.width - size, int(np.sqrt(STRETCH_WINDOWS))).astype(int)

        def windows():
            for row in np.unique(rows):
                for col in np.unique(cols):
                    data, valid = source.read(Window(int(col), int(row), size, size))
                    yield (
                        select_bands(data, source.band_names, self.bands, source=str(source.path)),
                        valid,
                    )

        self.raster_stretch = BandStretch.fit(windows(), self.bands, self.options.percentiles, rng)

    def predict(self, batch: ChipBatch) -> np.ndarray:
        """(N, 2, H, W) float32 probabilities of background and the model's class."""
        import torch

        from geoseg_sam.decode import segment_chip
        from geoseg_sam.model import image_embeddings
        from geoseg_sam.preprocess import BandStretch, select_bands

        if self.model is None:
            raise BackendError("the sam backend was not loaded; call load(model, device) first")
        count, _, height, width = batch.images.shape
        probabilities = np.zeros((count, 2, height, width), np.float32)
        probabilities[:, 0] = 1.0
        if batch.prompts is None:
            raise BackendError(
                "the sam backend needs prompts: pass --prompts auto or a prompts file"
            )
        prompted = [i for i, p in enumerate(batch.prompts) if not p.empty]
        if not prompted:
            return probabilities
        source = str(batch.source) if batch.source is not None else "chip"
        data = select_bands(batch.images[prompted], batch.band_names, self.bands, source=source)
        stretch = self.stretch or self.raster_stretch or BandStretch.identity(self.bands)
        images = stretch.apply(data, batch.valid[prompted])
        with torch.no_grad():
            pixel_values = self.frame.pixel_values(images, self.device)
            embeddings = image_embeddings(self.model, pixel_values)
            for j, i in enumerate(prompted):
                water = segment_chip(
                    self.model,
                    embeddings[j],
                    batch.prompts[i],
                    self.frame,
                    height,
                    width,
                    self.multimask,
                )
                water = water.cpu().numpy()
                probabilities[i, 1] = water
                probabilities[i, 0] = 1.0 - water
        return probabilities

    def training_task(self):
        """The mask decoder trains through geoseg's training core with the SAM task."""
        from geoseg_sam.train import SamTask

        return SamTask(self.options)

    def export_onnx(self, model, path, settings):
        """SAM is not exported: its masks come from per-chip prompts."""
        raise BackendError(
            "backend 'sam' does not export to ONNX: its masks depend on per-chip point and "
            "box prompts computed by geoseg, which neither an ONNX graph nor Deepness provides; "
            "export a segformer model instead"
        )
