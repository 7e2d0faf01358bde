"""Chips of a ``geoseg tile`` dataset as normalised tensors, and per-band statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.dataset import ChipDataset, ChipRecord
from geoseg.errors import LabelsError


def band_statistics(
    dataset: ChipDataset,
    records: Sequence[ChipRecord],
    progress: Callable[[int], None] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation of each band over the valid pixels of ``records``.

    In raw source units, in ``dataset.band_names`` order. A band without spread gets a
    standard deviation of 1 so normalising it never divides by zero.
    """
    bands = len(dataset.band_names)
    total = np.zeros(bands, np.float64)
    squares = np.zeros(bands, np.float64)
    count = 0
    for record in records:
        data, valid = dataset.read_image(record)
        pixels = data[:, valid].astype(np.float64)
        total += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
        if progress is not None:
            progress(1)
    if count == 0:
        raise LabelsError(f"{dataset.root}: the training chips hold no valid pixels")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-6] = 1.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def dataset_classes(dataset: ChipDataset, records: Sequence[ChipRecord]) -> ClassMap:
    """The chip set's classes, or generic ones for the ids its labels hold."""
    if dataset.classes is not None:
        return dataset.classes
    ids: set[int] = set()
    for record in records:
        ids.update(int(v) for v in np.unique(dataset.read_label(record)))
    ids.discard(IGNORE_INDEX)
    if not ids:
        raise LabelsError(f"{dataset.root}: the label chips hold no class ids, only 255 (ignore)")
    return ClassMap.from_ids(ids)


def class_lookup(classes: ClassMap) -> np.ndarray:
    """(256,) uint8 table from class id to output channel; 255 for ids outside ``classes``."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for channel, info in enumerate(classes):
        table[info.id] = channel
    return table


class ChipTensors(torch.utils.data.Dataset):
    """Normalised image (B, H, W) float32, channel labels (H, W) int64 and valid mask (H, W)."""

    def __init__(
        self,
        dataset: ChipDataset,
        records: Sequence[ChipRecord],
        mean: Sequence[float],
        std: Sequence[float],
        classes: ClassMap,
    ) -> None:
        self.dataset = dataset
        self.records = list(records)
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.lookup = class_lookup(classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        data, valid = self.dataset.read_image(record)
        image = (data.astype(np.float32) - self.mean) / self.std
        image[:, ~valid] = 0
        label = self.lookup[self.dataset.read_label(record)]
        label[~valid] = IGNORE_INDEX
        return (
            torch.from_numpy(np.ascontiguousarray(image)),
            torch.from_numpy(label.astype(np.int64)),
            torch.from_numpy(valid),
        )
