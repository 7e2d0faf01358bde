"""Augmentations that are safe for overhead imagery.

Overhead scenes have no "up": flips and 90-degree rotations give equally valid images.
Colour jitter is done per band (brightness shift and contrast scale in units of the
band's standard deviation), so it extends to near-infrared and any other band.
"""

from __future__ import annotations


def augment_batch(images, labels, valid, generator, jitter: float = 0.1):
    """Randomly flipped, rotated and jittered copies of a batch.

    ``images`` (N, B, H, W) float, normalised per band; ``labels`` (N, H, W) int64;
    ``valid`` (N, H, W) bool. Invalid pixels stay 0 after jitter. ``generator``: a
    ``torch.Generator`` on the CPU, so runs are reproducible from the seed.
    """
    import torch

    n, bands = images.shape[:2]
    square = images.shape[-1] == images.shape[-2]
    draws = torch.rand((n, 3), generator=generator)
    turns = torch.randint(0, 4, (n,), generator=generator)
    out_images, out_labels, out_valid = [], [], []
    for i in range(n):
        image, label, mask = images[i], labels[i], valid[i]
        if draws[i, 0] < 0.5:
            image, label, mask = image.flip(-1), label.flip(-1), mask.flip(-1)
        if draws[i, 1] < 0.5:
            image, label, mask = image.flip(-2), label.flip(-2), mask.flip(-2)
        if square and turns[i]:
            k = int(turns[i])
            image = torch.rot90(image, k, dims=(-2, -1))
            label = torch.rot90(label, k, dims=(-2, -1))
            mask = torch.rot90(mask, k, dims=(-2, -1))
        out_images.append(image)
        out_labels.append(label)
        out_valid.append(mask)
    images = torch.stack(out_images)
    labels = torch.stack(out_labels)
    valid = torch.stack(out_valid)
    if jitter > 0:
        shape = (n, bands, 1, 1)
        contrast = 1 + (torch.rand(shape, generator=generator) * 2 - 1) * jitter
        brightness = (torch.rand(shape, generator=generator) * 2 - 1) * jitter
        contrast, brightness = contrast.to(images), brightness.to(images)
        images = (images * contrast + brightness) * valid[:, None].to(images.dtype)
    return images.contiguous(), labels.contiguous(), valid.contiguous()
