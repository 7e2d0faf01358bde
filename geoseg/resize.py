"""Resizing 8-bit chips exactly as PIL does, so a model sees what its image processor gives it.

Hugging Face image processors resize 8-bit images with PIL (or with torchvision's uint8
kernel, which reproduces PIL): a separable filter whose weights are rounded to 22-bit
fixed point, each pass rounded back to 8 bits. torch's float interpolation differs from
that by one 8-bit level on a good share of pixels, so this module computes PIL's integer
weights and applies them as matrices (exact in float64, on any device).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["resize_8bit"]

#: PIL's fixed-point precision for 8-bit images (32 bits minus 8 for the value, 2 spare).
PRECISION_BITS = 22


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


#: Filter and support (in input pixels at scale 1) by PIL resample code.
FILTERS = {2: (_bilinear, 1.0), 3: (_bicubic, 2.0), 4: (_box, 0.5)}
NEAREST = 0


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int, resample: int) -> np.ndarray:
    """PIL's fixed-point weights (out_size, in_size) of one axis (``precompute_coeffs``)."""
    weights = np.zeros((out_size, in_size), np.float64)
    if resample == NEAREST:
        # PIL's ImagingScaleAffine: the source coordinate accumulates step by step.
        scale = in_size / out_size
        source = scale * 0.5
        for out in range(out_size):
            weights[out, min(max(int(source), 0), in_size - 1)] = 1 << PRECISION_BITS
            source += scale
        return weights
    kernel, support = FILTERS[resample]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    for out in range(out_size):
        center = (out + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = [kernel((x - center + 0.5) / filter_scale) for x in range(low, high)]
        total = sum(taps)
        for offset, tap in enumerate(taps):
            value = (tap / total if total else tap) * (1 << PRECISION_BITS)
            weights[out, low + offset] = (
                math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)
            )
    return weights


def _pass(pixels: torch.Tensor, weights: np.ndarray, axis: int) -> torch.Tensor:
    """One PIL pass along ``axis`` (-1 columns, -2 rows) of float64 8-bit values."""
    matrix = torch.from_numpy(weights).to(pixels.device)
    summed = pixels @ matrix.T if axis == -1 else matrix @ pixels
    return torch.floor((summed + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(
        0, 255
    )


def resize_8bit(
    images: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    resample: int = 2,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """8-bit chips (..., H, W) resized to (height, width) as PIL does; float32 0..255 values.

    ``resample`` is PIL's code (0 nearest, 2 bilinear, 3 bicubic, 4 box), as image
    processors record it. PIL filters first the axis that leaves the smaller
    intermediate image (columns on a tie).
    """
    pixels = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    pixels = pixels.to(device, torch.float64)
    in_h, in_w = pixels.shape[-2:]
    if resample not in FILTERS and resample != NEAREST:
        raise ValueError(f"PIL resample code {resample} is not supported (0, 2, 3 or 4)")
    if resample == NEAREST:
        rows = _weights(in_h, height, NEAREST).argmax(axis=1)
        cols = _weights(in_w, width, NEAREST).argmax(axis=1)
        return pixels[..., rows, :][..., cols].float()
    steps = [(-1, in_w, width), (-2, in_h, height)]
    if in_w * height < width * in_h:
        steps.reverse()
    for axis, before, after in steps:
        if before != after:
            pixels = _pass(pixels, _weights(before, after, resample), axis)
    return pixels.float()
