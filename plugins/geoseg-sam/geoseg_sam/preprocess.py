"""From raw chip bands to SAM's input: band choice, 8-bit stretch, resize and normalise.

SAM was trained on 8-bit RGB photographs. Three bands are chosen by name, stretched to
0..255 between per-band percentiles measured once over the training set (saved with the
model), then resized so the longest side equals the model's input size, normalised and
padded at the bottom and right, exactly as ``SamImageProcessor`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.errors import BandError
from geoseg.resize import resize_8bit

#: ImageNet statistics, SamImageProcessor's defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Pixels sampled per chip when measuring the stretch, to bound memory on big datasets.
STRETCH_SAMPLES_PER_CHIP = 4096


def select_bands(
    data: np.ndarray, band_names: Sequence[str], wanted: Sequence[str], *, source: str = "chip"
) -> np.ndarray:
    """The bands ``wanted`` of ``data`` (..., B, H, W), in that order."""
    names = [str(n).lower() for n in band_names]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise BandError(
            f"{source}: the SAM model reads bands {','.join(wanted)} but there is no "
            f"{','.join(missing)} among {','.join(names) or 'no named bands'}; name the bands "
            f"with --bands (e.g. --bands naip) or train with --option bands=..."
        )
    return np.take(data, [names.index(w) for w in wanted], axis=-3)


@dataclass(frozen=True)
class BandStretch:
    """Linear stretch of three bands to 0..255 between ``low`` and ``high`` source values."""

    bands: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def identity(cls, bands: Sequence[str]) -> BandStretch:
        """The stretch that leaves 8-bit data as it is."""
        return cls(tuple(bands), (0.0,) * len(bands), (255.0,) * len(bands))

    @classmethod
    def fit(
        cls,
        chips: Iterable[tuple[np.ndarray, np.ndarray]],
        bands: Sequence[str],
        percentiles: tuple[float, float],
        rng: np.random.Generator,
    ) -> BandStretch:
        """Percentile stretch from ``(data (3, H, W), valid (H, W))`` pairs (bands already chosen)."""
        samples: list[np.ndarray] = []
        for data, valid in chips:
            pixels = data[:, valid]
            if pixels.shape[1] > STRETCH_SAMPLES_PER_CHIP:
                keep = rng.choice(pixels.shape[1], STRETCH_SAMPLES_PER_CHIP, replace=False)
                pixels = pixels[:, keep]
            samples.append(pixels.astype(np.float64))
        if not samples or sum(s.shape[1] for s in samples) == 0:
            raise BandError(
                "no valid pixels to measure the 8-bit stretch from; check the chips' nodata"
            )
        values = np.concatenate(samples, axis=1)
        low = np.percentile(values, percentiles[0], axis=1)
        high = np.percentile(values, percentiles[1], axis=1)
        high = np.maximum(high, low + 1e-6)
        return cls(tuple(bands), tuple(map(float, low)), tuple(map(float, high)))

    def apply(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """uint8 (..., 3, H, W) from source values (..., 3, H, W); invalid pixels become 0."""
        low = np.asarray(self.low, np.float32).reshape(-1, 1, 1)
        high = np.asarray(self.high, np.float32).reshape(-1, 1, 1)
        scaled = (data.astype(np.float32) - low) * (255.0 / (high - low))
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        if valid is not None:
            out = out * np.expand_dims(valid, -3).astype(np.uint8)
        return out

    def to_json(self) -> dict:
        return {"bands": list(self.bands), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_json(cls, data: dict) -> BandStretch:
        return cls(tuple(data["bands"]), tuple(data["low"]), tuple(data["high"]))


@dataclass(frozen=True)
class ModelInput:
    """SAM's input frame: square ``size`` pixels, normalised with ``mean`` / ``std`` (0..1 scale).

    Every step follows ``SamProcessor`` and ``SamImageProcessor.post_process_masks``, so a
    checkpoint sees chips and prompts as in its authors' pipeline: the 8-bit chip resized
    as PIL does, prompt coordinates scaled per axis, and masks upsampled to the padded
    input, cropped and resampled onto the chip.
    """

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape of a (height, width) chip once its longest side is ``size``."""
        scale = self.size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def axis_scales(self, height: int, width: int) -> tuple[float, float]:
        """x and y factors from chip to model frame (each axis rounds on its own)."""
        new_h, new_w = self.resized_shape(height, width)
        return new_w / width, new_h / height

    def pixel_values(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Normalised float32 (N, 3, size, size) from uint8 chips (N, 3, H, W)."""
        height, width = images.shape[-2:]
        new_h, new_w = self.resized_shape(height, width)
        # SamImageProcessor's default (and only sensible) filter: bilinear.
        pixels = resize_8bit(images, new_h, new_w, device=device)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        pixels = (pixels / 255.0 - mean) / std
        return F.pad(pixels, (0, self.size - new_w, 0, self.size - new_h))

    def points(self, points: np.ndarray, height: int, width: int) -> np.ndarray:
        """Chip points (K, 2) x, y in SAM's frame.

        geoseg's chip coordinates put pixel centres at +0.5; SAM's put them on integers
        (its prompt encoder adds the 0.5 back), and ``SamProcessor`` scales those.
        """
        scale_x, scale_y = self.axis_scales(height, width)
        scaled = points.astype(np.float32) - 0.5
        scaled[..., 0] *= scale_x
        scaled[..., 1] *= scale_y
        return scaled

    def boxes(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """Chip boxes (M, 4) on pixel edges in SAM's frame: the corner pixels, scaled."""
        scale_x, scale_y = self.axis_scales(height, width)
        scaled = boxes.astype(np.float32).copy()
        scaled[..., 2:] -= 1.0
        scaled[..., 0::2] *= scale_x
        scaled[..., 1::2] *= scale_y
        return scaled

    def low_res_shape(self, low_res: int, height: int, width: int) -> tuple[int, int]:
        """The part of a ``low_res`` square decoder mask that covers the chip (not padding)."""
        new_h, new_w = self.resized_shape(height, width)
        return max(1, round(new_h * low_res / self.size)), max(
            1, round(new_w * low_res / self.size)
        )

    def masks_to_chip(self, low_res: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Decoder logits (..., L, L) resampled onto the chip (..., height, width).

        As ``post_process_masks``: up to the padded input size, cropped to the resized
        chip, then onto the chip (resampling straight from the low-res crop differs by
        up to a few hundredths in the logits).
        """
        lead = low_res.shape[:-2]
        size = low_res.shape[-1]
        flat = low_res.reshape(-1, 1, size, size).float()
        new_h, new_w = self.resized_shape(height, width)
        flat = F.interpolate(
            flat, size=(self.size, self.size), mode="bilinear", align_corners=False
        )
        flat = flat[..., :new_h, :new_w]
        flat = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
        return flat.reshape(*lead, height, width)

    def targets_to_low_res(self, masks: torch.Tensor, low_res: int) -> torch.Tensor:
        """Chip masks (T, H, W) in 0..1 as fractions on the decoder's (T, L, L) grid (0 in padding)."""
        height, width = masks.shape[-2:]
        crop_h, crop_w = self.low_res_shape(low_res, height, width)
        small = F.interpolate(masks[:, None].float(), size=(crop_h, crop_w), mode="area")[:, 0]
        return F.pad(small, (0, low_res - crop_w, 0, low_res - crop_h))
