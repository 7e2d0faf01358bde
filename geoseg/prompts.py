"""Prompts for promptable segmentation models: control points and boxes from water masks.

A prompt set for one chip is a ``geoseg.backend.Prompts`` in pixel coordinates of the
chip: points at pixel centres (``x = col + 0.5``, ``y = row + 0.5``, so that
``chip_transform * (x, y)`` is the map position of the centre) and boxes on pixel edges.

``prompts_from_mask`` draws prompts from any water mask (a coarse index mask or a
ground-truth label). ``auto_prompts`` draws them from a spectral index over a raster,
chip by chip, with one threshold for the whole raster. ``file_prompts`` turns a prompts
file (written by ``geoseg prompts`` or drawn in QGIS) into per-chip prompts for any raster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.backend import Prompts
from geoseg.errors import OptionError
from geoseg.indices import required_bands
from geoseg.masks import Area, dilate_mask, interior_distance, parse_threshold

log = logging.getLogger(__name__)

PER_CHOICES = ("component", "chip")


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are drawn from a water index or mask.

    Sizes are pixels unless noted. ``min_size`` and ``fill_holes`` are areas: pixels, or
    square metres as text with an ``m2`` suffix (converted per raster; needs a projected
    CRS). ``points`` positive points per component (or per chip with ``per="chip"``),
    ``negative`` negative points per chip, drawn farther than ``negative_buffer`` pixels
    from the mask. ``erode``: radius by which the mask shrinks before positive points are
    drawn, keeping them away from banks. ``perturb``: boxes' edges move by up to this many
    pixels. ``index_params`` go to the index (the HSV rule's hue, saturation, value).
    """

    index: str = "ndwi"
    threshold: str | float = "otsu"
    min_size: int | str = 200
    fill_holes: int | str = 50
    opening: int = 0
    closing: int = 0
    erode: int = 3
    points: int = 3
    negative: int = 0
    negative_buffer: int = 10
    boxes: bool = True
    perturb: int = 10
    per: str = "component"
    min_spacing: float = 2.0
    seed: int = 0
    index_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", str(self.index).lower())
        required_bands(self.index)
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        Area.parse(self.min_size, what="min_size")
        Area.parse(self.fill_holes, what="fill_holes")
        for name in (
            "opening",
            "closing",
            "erode",
            "points",
            "negative",
            "negative_buffer",
            "perturb",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise OptionError(
                    f"prompt setting {name} must be a whole number >= 0, got {value!r}"
                )
        if self.per not in PER_CHOICES:
            raise OptionError(
                f"prompt setting per must be one of {', '.join(PER_CHOICES)}, got {self.per!r}"
            )
        if self.min_spacing < 0:
            raise OptionError(f"prompt setting min_spacing must be >= 0, got {self.min_spacing}")
        object.__setattr__(self, "index_params", dict(self.index_params))

    def cleanup_pixels(self, source: Any) -> tuple[int, int]:
        """``min_size`` and ``fill_holes`` in pixels of ``source`` (anything with res, crs)."""
        from geoseg.masks import area_pixels

        return (
            area_pixels(self.min_size, source, what="--min-size"),
            area_pixels(self.fill_holes, source, what="--fill-holes"),
        )


def chip_rng(seed: int, row: int, col: int) -> np.random.Generator:
    """The random generator of chip (row, col): independent of the order chips are visited."""
    return np.random.default_rng([int(seed), int(row), int(col)])


def spaced_sample(
    coords: np.ndarray,
    n: int,
    spacing: float,
    rng: np.random.Generator,
    *,
    min_spacing: float = 1.0,
    max_tries: int = 2000,
) -> np.ndarray:
    """Indexes of up to ``n`` rows of ``coords`` (K, 2) at least ``spacing`` apart.

    Candidates are visited in random order and kept when far enough from those already
    kept; when fewer than ``n`` are found, the spacing halves, down to ``min_spacing``.
    """
    if n <= 0 or len(coords) == 0:
        return np.zeros(0, np.int64)
    if len(coords) <= n and spacing <= min_spacing:
        return np.arange(len(coords))
    order = rng.permutation(len(coords))[: max(max_tries, 20 * n)]
    chosen: list[int] = []
    spacing = max(spacing, min_spacing)
    while True:
        for i in order:
            if len(chosen) == n:
                break
            if chosen:
                gaps = np.hypot(*(coords[chosen] - coords[i]).T)
                if gaps.min() < spacing:
                    continue
            chosen.append(int(i))
        if len(chosen) == n or spacing <= min_spacing:
            break
        spacing = max(spacing / 2, min_spacing)
    return np.asarray(chosen, np.int64)


@dataclass
class ChipPrompts:
    """Prompts of one chip plus the component each point and box came from (0: negative)."""

    prompts: Prompts
    point_components: np.ndarray
    box_components: np.ndarray


def sample_prompts(
    mask: np.ndarray,
    settings: PromptSettings,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
    *,
    distance: np.ndarray | None = None,
    outside: np.ndarray | None = None,
) -> ChipPrompts:
    """Prompts of ``mask`` (H, W) bool with the component ids of points and boxes.

    ``distance``: each pixel's distance (pixels) to the nearest non-water pixel, and
    ``outside``: where negatives may go; both default to what ``mask`` alone gives, and
    are passed in when the mask was cleaned with a margin around the chip.
    """
    from skimage.measure import label, regionprops

    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    valid = np.ones(mask.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    mask = mask & valid
    if distance is None:
        distance = interior_distance(mask)
    per_chip = settings.per == "chip"
    components = mask.astype(np.int32) if per_chip else label(mask, connectivity=2)

    points: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    point_components: list[np.ndarray] = []
    boxes: list[list[float]] = []
    box_components: list[int] = []
    for region in regionprops(components):
        rows, cols = region.coords.T
        inside = distance[rows, cols] > settings.erode
        if settings.points and inside.any():
            coords = np.stack([cols[inside], rows[inside]], axis=1).astype(np.float64)
            spacing = math.sqrt(len(coords) / settings.points) / 2
            picked = spaced_sample(
                coords, settings.points, spacing, rng, min_spacing=settings.min_spacing
            )
            points.append(coords[picked] + 0.5)
            labels.append(np.ones(len(picked), np.int64))
            point_components.append(np.full(len(picked), region.label, np.int64))
        if settings.boxes:
            row0, col0, row1, col1 = region.bbox
            box = np.array([col0, row0, col1, row1], np.float64)
            if settings.perturb:
                box += rng.integers(-settings.perturb, settings.perturb + 1, size=4)
            box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
            box[2] = max(box[2], min(box[0] + 1, width))
            box[0] = min(box[0], box[2] - 1)
            box[3] = max(box[3], min(box[1] + 1, height))
            box[1] = min(box[1], box[3] - 1)
            boxes.append(box.tolist())
            box_components.append(region.label)

    if settings.negative:
        if outside is None:
            outside = ~dilate_mask(mask, settings.negative_buffer)
        outside = outside & valid
        rows, cols = np.nonzero(outside)
        if len(rows):
            coords = np.stack([cols, rows], axis=1).astype(np.float64)
            spacing = math.sqrt(len(coords) / settings.negative) / 2
            picked = spaced_sample(
                coords, settings.negative, spacing, rng, min_spacing=settings.min_spacing
            )
            points.append(coords[picked] + 0.5)
            labels.append(np.zeros(len(picked), np.int64))
            point_components.append(np.zeros(len(picked), np.int64))

    prompts = Prompts(
        points=np.concatenate(points) if points else np.zeros((0, 2)),
        labels=np.concatenate(labels) if labels else np.zeros(0),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
    )
    return ChipPrompts(
        prompts,
        np.concatenate(point_components) if point_components else np.zeros(0, np.int64),
        np.asarray(box_components, np.int64),
    )


def prompts_from_mask(
    mask: np.ndarray,
    settings: PromptSettings,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
) -> Prompts:
    """Points and boxes for a water mask (H, W) bool, in pixel coordinates of the mask.

    Per 8-connected component: ``settings.points`` positive points spread over the pixels
    farther than ``settings.erode`` from the bank (none when the component is thinner),
    and its bounding box perturbed by up to ``settings.perturb`` and clipped to the mask.
    Per mask: ``settings.negative`` negative points farther than
    ``settings.negative_buffer`` from water. Invalid pixels are never water nor sampled.
    The mask is used as given: clean it first (``geoseg.masks.clean_mask``) if needed.
    """
    return sample_prompts(mask, settings, rng, valid).prompts
