"""Preview PNGs: a decimated view of a raster with a mask outline, points and boxes on it.

The image is read as an overview bounded by ``max_size`` pixels on its longest side, never
at full resolution. True colour when red, green and blue bands exist, else a false colour
from three bands; each band stretched between its 2nd and 98th percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.enums import Resampling

from geoseg.atomic import atomic_output
from geoseg.errors import OutputError

if TYPE_CHECKING:
    from geoseg.prompts import AutoPrompts, PromptFeatures
    from geoseg.raster import RasterSource
    from geoseg.windows import TileGrid

#: Band combinations tried in order, with how the legend calls them.
COMPOSITES: tuple[tuple[tuple[str, str, str], str], ...] = (
    (("red", "green", "blue"), "true colour"),
    (("swir1", "nir", "red"), "false colour swir1/nir/red"),
    (("nir", "red", "green"), "false colour nir/red/green"),
    (("swir1", "nir", "green"), "false colour swir1/nir/green"),
)

MASK_COLOUR = (0, 255, 255)
CHIP_COLOUR = (230, 230, 230)
POSITIVE_COLOUR = (40, 230, 40)
NEGATIVE_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 230, 0)


@dataclass
class Overview:
    """A decimated read of a raster: ``data`` (B, h, w), ``valid`` (h, w), its ``transform``."""

    data: np.ndarray
    valid: np.ndarray
    transform: Affine
    band_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (the raster CRS) to continuous pixel coordinates of the overview."""
        col, row = ~self.transform @ (np.asarray(x, np.float64), np.asarray(y, np.float64))
        return np.asarray(col), np.asarray(row)


def overview_shape(width: int, height: int, max_size: int = 2048) -> tuple[int, int]:
    """(rows, cols) of an overview whose longest side is at most ``max_size``."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_overview(source: RasterSource, names: Sequence[str], max_size: int = 2048) -> Overview:
    """Bands ``names`` of ``source`` decimated (averaged) to at most ``max_size`` pixels."""
    rows, cols = overview_shape(source.width, source.height, max_size)
    indexes = source.band_map.indexes(names, source=str(source.path))
    dataset = source.dataset
    data = dataset.read(
        indexes, out_shape=(len(indexes), rows, cols), resampling=Resampling.average
    )
    valid = dataset.dataset_mask(out_shape=(rows, cols), resampling=Resampling.nearest) > 0
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).all(axis=0)
    transform = source.transform @ Affine.scale(source.width / cols, source.height / rows)
    return Overview(data, valid, transform, tuple(names))


def composite_bands(band_names: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Three bands to show and a legend name: true colour, else a false colour."""
    for bands, name in COMPOSITES:
        if all(b in band_names for b in bands):
            return bands, name
    if len(band_names) >= 3:
        bands = tuple(band_names[:3])
        return bands, "false colour " + "/".join(bands)
    return (band_names[0],), f"grey {band_names[0]}"


def stretch(data: np.ndarray, valid: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Bands (B, h, w) to uint8 (h, w, 3), each stretched between percentiles of valid pixels."""
    out = np.zeros((*valid.shape, 3), np.uint8)
    bands = [data[i] for i in range(len(data))]
    if len(bands) == 1:
        bands = bands * 3
    for i, band in enumerate(bands[:3]):
        values = band[valid].astype(np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        lo, hi = np.percentile(values, [low, high])
        scaled = (band.astype(np.float64) - lo) / max(hi - lo, 1e-12)
        out[..., i] = np.clip(np.nan_to_num(scaled) * 255, 0, 255).astype(np.uint8)
    out[~valid] = (40, 40, 40)
    return out


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` (h, w) bool within ``width`` pixels of its edge."""
    from scipy.ndimage import binary_erosion

    if not mask.any():
        return mask
    inner = binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def draw_preview(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    chips: np.ndarray | None = None,
    legend: str = "",
):
    """A PIL image of ``image`` (h, w, 3) uint8 with prompts drawn in its pixel coordinates.

    ``points`` (K, 2) x, y with ``labels`` (K,) 1/0; ``boxes`` and ``chips`` (M, 4) x0, y0,
    x1, y1. Small images are enlarged (nearest) so markers and outlines stay legible.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = image.shape[:2]
    zoom = max(1, min(4, math.floor(1400 / max(height, width))))
    canvas = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
    if mask is not None:
        big = np.repeat(np.repeat(mask, zoom, axis=0), zoom, axis=1)
        canvas[mask_outline(big, max(2, zoom))] = MASK_COLOUR
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(canvas.shape[:2]) / 600))
    if chips is not None:
        for x0, y0, x1, y1 in np.asarray(chips, np.float64).reshape(-1, 4) * zoom:
            _dashed_rectangle(draw, (x0, y0, x1 - 1, y1 - 1), CHIP_COLOUR, dash=8)
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4) * zoom:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOUR, width=line)
    if points is not None and len(points):
        radius = max(4, round(max(canvas.shape[:2]) / 250))
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels)
        # Negatives first so positives, the prompts that matter most, stay on top.
        for label in (0, 1):
            colour = POSITIVE_COLOUR if label == 1 else NEGATIVE_COLOUR
            for x, y in np.asarray(points, np.float64)[labels == label] * zoom:
                draw.ellipse(
                    [x - radius, y - radius, x + radius, y + radius],
                    fill=colour,
                    outline=(0, 0, 0),
                    width=max(1, line // 2),
                )
    if legend:
        font = ImageFont.load_default(size=14)
        lines = legend.splitlines()
        step = 18
        text_width = max(draw.textlength(t, font=font) for t in lines) + 12
        draw.rectangle([0, 0, text_width, step * len(lines) + 8], fill=(0, 0, 0))
        for i, text in enumerate(lines):
            draw.text((6, 4 + step * i), text, fill=(255, 255, 255), font=font)
    return picture


def _dashed_rectangle(draw, box: tuple[float, float, float, float], colour, dash: int = 8) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, at in (
        (x0, x1, True, y0),
        (x0, x1, True, y1),
        (y0, y1, False, x0),
        (y0, y1, False, x1),
    ):
        for start in np.arange(a, b, 2 * dash):
            end = min(start + dash, b)
            draw.line(
                [(start, at), (end, at)] if horizontal else [(at, start), (at, end)],
                fill=colour,
                width=1,
            )


def write_preview(path: str | Path, picture) -> Path:
    """Save a PIL image as PNG atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"{path}: previews are PNG files; give a name ending in .png")
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def prompts_preview(
    path: str | Path,
    source: RasterSource,
    features: PromptFeatures,
    *,
    auto: AutoPrompts | None = None,
    grid: TileGrid | None = None,
    max_size: int = 2048,
) -> Path:
    """Write a PNG of ``source`` with the prompts of ``features`` (in the raster CRS).

    ``grid``'s chips are drawn dashed. With ``auto``, its coarse mask is outlined, recomputed
    on the overview with the raster's threshold and cleanup sizes scaled to the overview.
    """
    import shapely

    from geoseg.masks import clean_mask

    shown, composite = composite_bands(source.band_names)
    needed = list(dict.fromkeys([*shown, *(auto.bands if auto else ())]))
    view = read_overview(source, needed, max_size)
    image = stretch(view.data[[needed.index(b) for b in shown]], view.valid)

    mask = None
    legend = [f"{source.path.name}: {composite}"]
    if auto is not None:
        bands = list(auto.bands)
        evidence = auto.rule.evidence(
            view.data[[needed.index(b) for b in bands]], bands, view.valid
        )
        shrink = (view.transform.a * view.transform.e) / (source.transform.a * source.transform.e)
        mask = clean_mask(
            evidence.water,
            min_size=int(auto.min_size / shrink),
            fill_holes=int(auto.fill_holes / shrink),
            valid=view.valid,
        )
        legend.append(f"mask ({auto.rule.describe()}): cyan outline")

    points = features.points.to_crs(source.crs) if len(features.points) else features.points
    xy = shapely.get_coordinates(points.geometry.to_numpy()).reshape(-1, 2)
    px, py = view.to_pixels(xy[:, 0], xy[:, 1])
    boxes = np.zeros((0, 4))
    if len(features.boxes):
        bounds = features.boxes.to_crs(source.crs).geometry.bounds.to_numpy()
        x0, y0 = view.to_pixels(bounds[:, 0], bounds[:, 3])
        x1, y1 = view.to_pixels(bounds[:, 2], bounds[:, 1])
        boxes = np.stack(
            [np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], axis=1
        )
    labels = points["label"].to_numpy(np.int64) if len(points) else np.zeros(0, np.int64)
    legend.append(
        f"points: {int((labels == 1).sum())} positive (green), "
        f"{int((labels == 0).sum())} negative (red); boxes: {len(boxes)} (yellow)"
    )
    chips = None
    if grid is not None:
        scale = np.array(
            [view.transform.a / source.transform.a, view.transform.e / source.transform.e] * 2
        )
        chips = (
            np.array(
                [
                    [
                        t.window.col_off,
                        t.window.row_off,
                        t.window.col_off + t.width,
                        t.window.row_off + t.height,
                    ]
                    for t in grid
                ],
                np.float64,
            )
            / scale
        )
        legend.append(f"chips: {len(grid)} of {grid.size} px, overlap {grid.overlap} px (dashed)")
    picture = draw_preview(
        image,
        mask=mask,
        points=np.stack([px, py], axis=1),
        labels=labels,
        boxes=boxes,
        chips=chips,
        legend="\n".join(legend),
    )
    return write_preview(path, picture)
