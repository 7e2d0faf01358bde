"""Resizing 8-bit chips with PIL, so a model sees what its image processor gives it.

Hugging Face image processors resize 8-bit images with PIL: a separable filter with
fixed-point weights, each pass rounded back to 8 bits. torch's float interpolation
differs from that by one 8-bit level on a good share of pixels, so geoseg resizes 8-bit
chips with PIL itself, band by band (PIL treats the bands of an RGB image independently,
with the same weights), and only then moves them to the model's device.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["resize_8bit"]

#: PIL's resample codes, as image processors record them.
RESAMPLE_CODES = (0, 2, 3, 4)  # nearest, bilinear, bicubic, box


def resize_8bit(
    images: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    resample: int = 2,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """8-bit chips (..., H, W) resized to (height, width) as PIL does; float32 0..255 values.

    ``images`` hold whole numbers in 0..255 (any dtype). ``resample`` is PIL's code (0
    nearest, 2 bilinear, 3 bicubic, 4 box), as image processors record it.
    """
    from PIL import Image

    if resample not in RESAMPLE_CODES:
        raise ValueError(f"PIL resample code {resample} is not supported (0, 2, 3 or 4)")
    array = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    *lead, in_h, in_w = array.shape
    planes = np.clip(np.rint(array), 0, 255).astype(np.uint8).reshape(-1, in_h, in_w)
    if (in_h, in_w) == (height, width):
        out = planes
    else:
        out = np.empty((len(planes), height, width), np.uint8)
        for plane, target in zip(planes, out, strict=True):
            resized = Image.fromarray(plane).resize((width, height), resample=resample)
            target[...] = np.asarray(resized)
    return torch.from_numpy(out.reshape(*lead, height, width)).to(device, torch.float32)
