"""A plain checkpoint's image processor, applied to chips the way Hugging Face applies it.

A checkpoint that geoseg did not train (a hub id or a folder written by
``save_pretrained``) was evaluated by its authors through its ``AutoImageProcessor``:
8-bit RGB resized to the processor's size with its filter, rescaled, normalised, and for
some (MobileViT) turned to BGR; ``post_process_semantic_segmentation`` then resamples the
logits onto the image. geoseg does the same on every chip, on the device: the resize is
PIL's, exactly (``geoseg.resize``); mean and std are the processor's, in 8-bit units
(``model.image_normalization``). Models trained by geoseg see their chips as they were
trained, at chip size with per-band statistics, and never come here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: PIL's bilinear filter, the processors' usual default.
BILINEAR = 2


@dataclass
class CheckpointInput:
    """The size and filter a checkpoint's processor resizes a chip to, and its channel order.

    ``processor`` is the loaded image processor; the shape it gives a (height, width)
    chip is measured once per chip shape on a blank image (each processor family has
    its own size rules: fixed height and width, shortest edge, multiples of 32, ...).
    """

    processor: Any
    resample: int = BILINEAR
    resize: bool = True
    flip_channels: bool = False
    _shapes: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict, repr=False)

    def model_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the pixel values the processor makes of such a chip."""
        if not self.resize:
            return height, width
        key = (height, width)
        if key not in self._shapes:
            blank = np.zeros((height, width, 3), np.uint8)
            pixel_values = self.processor(images=blank, return_tensors="np")["pixel_values"]
            self._shapes[key] = tuple(int(n) for n in pixel_values.shape[-2:])
        return self._shapes[key]


def checkpoint_input(processor) -> CheckpointInput | None:
    """How ``processor`` (an image processor, or None) shapes chips; None when it has none."""
    if processor is None:
        return None
    resample = getattr(processor, "resample", None)
    resample = BILINEAR if resample is None else int(resample)
    if resample not in (0, 2, 3, 4):
        log.warning(
            "image processor filter %s is not PIL's nearest, bilinear, bicubic or box; "
            "resizing chips bilinear",
            resample,
        )
        resample = BILINEAR
    return CheckpointInput(
        processor=processor,
        resample=resample,
        resize=bool(getattr(processor, "do_resize", False)),
        flip_channels=bool(getattr(processor, "do_flip_channel_order", False)),
    )


def resize_chips(images, valid, shape: tuple[int, int], resample: int):
    """Chips (N, B, H, W) float32 and their valid masks (N, H, W) resized to ``shape``.

    8-bit data (whole values in 0..255) goes through PIL's exact 8-bit filter, as the
    processor would resize it; anything else is resized in floating point with the same
    filter (the processor would refuse it, or read it as 8-bit and clip it).
    """
    import torch
    import torch.nn.functional as F

    from geoseg.resize import resize_8bit

    height, width = shape
    if tuple(images.shape[-2:]) == shape:
        return images, valid
    eight_bit = bool(((images >= 0) & (images <= 255) & (images == torch.round(images))).all())
    if eight_bit:
        resized = resize_8bit(images, height, width, resample, device=images.device)
    else:
        mode = {0: "nearest", 3: "bicubic"}.get(resample, "bilinear")
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        resized = F.interpolate(images, size=shape, mode=mode, **kwargs)
    resized_valid = F.interpolate(valid[:, None].float(), size=shape, mode="nearest")[:, 0] > 0.5
    return resized, resized_valid
