"""Prompts for promptable segmentation models: control points and boxes from water masks.

A prompt set for one chip is a ``Prompts`` in pixel coordinates of the
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.atomic import atomic_output
from geoseg.errors import InputFileError, MissingCRSError, OptionError, OutputError
from geoseg.indices import required_bands
from geoseg.masks import (
    Area,
    clean_mask,
    dilate_mask,
    interior_distance,
    parse_threshold,
)
from geoseg.raster import check_readable
from geoseg.water import WaterRule, fit_water_rule
from geoseg.windows import Tile, tile_grid

if TYPE_CHECKING:
    from geoseg.raster import Chip, RasterSource

__all__ = [
    "Prompts",
    "PromptSettings",
    "ChipPrompts",
    "sample_prompts",
]

log = logging.getLogger(__name__)

PER_CHOICES = ("component", "chip")


@dataclass
class Prompts:
    """Prompts for one chip, in pixel coordinates of the chip (x = column, y = row).

    ``points`` (K, 2) float32 x, y of pixel centres; ``labels`` (K,) int64, 1 positive and
    0 negative; ``boxes`` (M, 4) float32 x0, y0, x1, y1 (inclusive-exclusive pixel edges).
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")

    @property
    def empty(self) -> bool:
        return not (self.labels == 1).any() and len(self.boxes) == 0


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
    ``index`` and ``threshold`` choose the water method (``geoseg.water``): ``auto``
    follows the bands. Positive points go only where the method is confident of water,
    negative points only where it is confident of dry land.
    """

    index: str = "auto"
    threshold: str | float = "auto"
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
        if self.index not in ("auto", "multi"):
            required_bands(self.index)
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        if self.index == "multi" and self.threshold != "auto":
            raise OptionError(
                "the multi-index water rule takes no --threshold; give --index ndwi (or "
                "mndwi) with a threshold, or leave --threshold out"
            )
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
    confident: np.ndarray | None = None,
) -> ChipPrompts:
    """Prompts of ``mask`` (H, W) bool with the component ids of points and boxes.

    ``distance``: each pixel's distance (pixels) to the nearest non-water pixel, and
    ``outside``: where negatives may go; both default to what ``mask`` alone gives, and
    are passed in when the mask was cleaned with a margin around the chip.
    ``confident``: where positive points may go (default: all of ``mask``); a component
    with no confident pixel farther than ``settings.erode`` from its bank gets none.
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
        if confident is not None:
            inside &= confident[rows, cols]
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


# Prompt sources: per-chip prompts for the chips of one raster ----------------------------


class PromptSource:
    """Prompts for the chips of one raster; ``for_chip`` is all the predict engine calls."""

    def for_chip(self, chip: Chip) -> Prompts:
        """Prompts in pixel coordinates of ``chip``."""
        raise NotImplementedError


class AutoPrompts(PromptSource):
    """Prompts drawn from the water method of ``source``, fixed once for the raster.

    Each chip's mask is computed and cleaned over the chip plus a margin, so components
    and distances to the bank do not change at chip edges; the random draws of chip
    (row, col) depend only on the seed and that position. Positive points sit inside
    confident water, away from the bank; negative points on confident dry land, away
    from any water.
    """

    def __init__(
        self, source: RasterSource, settings: PromptSettings, rule: WaterRule | None = None
    ) -> None:
        self.source = source
        self.settings = settings
        self.rule = rule or fit_water_rule(
            source,
            settings.index,
            settings.threshold,
            index_params=settings.index_params,
            seed=settings.seed,
        )
        self.bands = self.rule.bands
        self.min_size, self.fill_holes = settings.cleanup_pixels(source)
        reach = max(
            settings.erode,
            settings.negative_buffer,
            settings.opening,
            settings.closing,
            math.isqrt(max(self.min_size, self.fill_holes)),
        )
        self.margin = int(min(256, max(32, 2 * reach + 2)))

    @property
    def threshold(self) -> float | None:
        """The single index's threshold for the raster (None for the multi-index rule)."""
        return self.rule.threshold

    def coarse_mask(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The cleaned water mask and valid mask of ``window`` (H, W) bool.

        Cleaned over the window plus the margin, so it agrees with the masks of
        neighbouring windows where they overlap.
        """
        evidence, mask, valid, inner = self._padded(window)
        return mask[inner], valid[inner]

    def _padded(self, window: Window):
        m = self.margin
        padded = Window(
            int(window.col_off) - m,
            int(window.row_off) - m,
            int(window.width) + 2 * m,
            int(window.height) + 2 * m,
        )
        data, valid = self.source.read(padded, self.bands)
        evidence = self.rule.evidence(data, self.bands, valid)
        mask = self._clean(evidence.water, valid)
        inner = (slice(m, m + int(window.height)), slice(m, m + int(window.width)))
        return evidence, mask, valid, inner

    def _clean(self, mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
        s = self.settings
        return clean_mask(
            mask,
            min_size=self.min_size,
            fill_holes=self.fill_holes,
            opening=s.opening,
            closing=s.closing,
            valid=valid,
        )

    def chip_prompts(self, tile: Tile) -> ChipPrompts:
        """Prompts of ``tile`` with the component each point and box belongs to."""
        evidence, mask, valid, inner = self._padded(tile.window)
        distance = interior_distance(mask)
        outside = ~dilate_mask(mask, self.settings.negative_buffer) & evidence.dry
        return sample_prompts(
            mask[inner],
            self.settings,
            chip_rng(self.settings.seed, tile.row, tile.col),
            valid[inner],
            distance=distance[inner],
            outside=outside[inner],
            confident=(evidence.confident & mask)[inner],
        )

    def for_chip(self, chip: Chip) -> Prompts:
        return self.chip_prompts(chip.tile).prompts


def auto_prompts(source: RasterSource, settings: PromptSettings) -> AutoPrompts:
    """Prompts from the water method of ``source``; fixed here, once for the raster."""
    return AutoPrompts(source, settings)


def _label_values(table: gpd.GeoDataFrame, path: Path) -> np.ndarray:
    """Point labels 1/0 from a ``label`` column; a missing column or empty value is 1."""
    if "label" not in table.columns:
        return np.ones(len(table), np.int64)
    labels = []
    for value in table["label"]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            labels.append(1)
        elif isinstance(value, str):
            text = value.strip().lower()
            if text in {"1", "positive", "pos", "water", "true", "yes", "+"}:
                labels.append(1)
            elif text in {"0", "negative", "neg", "background", "false", "no", "-"}:
                labels.append(0)
            elif text == "":
                labels.append(1)
            else:
                raise InputFileError(
                    f"{path}: point label {value!r} is neither 1 (positive) nor 0 (negative); "
                    f"fix the label column"
                )
        else:
            labels.append(1 if float(value) > 0 else 0)
    return np.asarray(labels, np.int64)


@dataclass
class PromptFeatures:
    """Georeferenced prompts: ``points`` (label, chip, component) and ``boxes`` (chip,
    component) GeoDataFrames in one CRS."""

    points: gpd.GeoDataFrame
    boxes: gpd.GeoDataFrame
    threshold: float | None = None
    chips: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def crs(self):
        return self.points.crs

    @property
    def positive(self) -> int:
        return int((self.points["label"] == 1).sum())

    @property
    def negative(self) -> int:
        return int((self.points["label"] == 0).sum())

    def to_crs(self, crs) -> PromptFeatures:
        return PromptFeatures(
            self.points.to_crs(crs),
            self.boxes.to_crs(crs),
            self.threshold,
            self.chips,
            dict(self.metadata),
        )


def _empty_points(crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "label": np.zeros(0, np.int64),
            "chip": np.zeros(0, object),
            "component": np.zeros(0, np.int64),
        },
        geometry=gpd.GeoSeries([], crs=crs),
        crs=crs,
    )


def chip_id(tile: Tile) -> str:
    """The id of a chip in prompts files: ``r<row>_c<col>`` of the tile grid."""
    return f"r{tile.row:03d}_c{tile.col:03d}"


def prompt_features(
    source: RasterSource,
    settings: PromptSettings,
    *,
    size: int | str = 512,
    overlap: int | str = 64,
    prompts: AutoPrompts | None = None,
    progress: Callable[[int], None] | None = None,
) -> PromptFeatures:
    """Automatic prompts for every chip of a tile grid, as map features in the raster CRS.

    Points sit at pixel centres. Chips overlap, so a stretch of water in an overlap gets
    points from each chip that holds it. ``progress`` is called with 1 after each chip.
    """
    import shapely

    prompts = prompts or auto_prompts(source, settings)
    grid = tile_grid(source, size, overlap)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    point_rows: dict[str, list] = {"label": [], "chip": [], "component": []}
    box_geoms: list = []
    box_rows: dict[str, list] = {"chip": [], "component": []}
    for tile in grid:
        found = prompts.chip_prompts(tile)
        name = chip_id(tile)
        p = found.prompts
        if len(p.points):
            x, y = tile.transform @ (p.points[:, 0].astype(np.float64), p.points[:, 1])
            xs.append(np.asarray(x))
            ys.append(np.asarray(y))
            point_rows["label"].extend(p.labels.tolist())
            point_rows["chip"].extend([name] * len(p.points))
            point_rows["component"].extend(found.point_components.tolist())
        # Edge chips reach past the raster (padding); their boxes stop at the raster's edge.
        right = min(tile.width, source.width - int(tile.window.col_off))
        bottom = min(tile.height, source.height - int(tile.window.row_off))
        for box, component in zip(p.boxes.astype(np.float64), found.box_components, strict=True):
            box = _clip_box(box, right, bottom)
            corners = np.array(
                [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
            )
            bx, by = tile.transform @ (corners[:, 0], corners[:, 1])
            box_geoms.append(shapely.Polygon(np.stack([bx, by], axis=1)))
            box_rows["chip"].append(name)
            box_rows["component"].append(int(component))
        if progress is not None:
            progress(1)
    crs = source.crs
    if xs:
        points = gpd.GeoDataFrame(
            {
                k: np.asarray(v, dtype=object if k == "chip" else np.int64)
                for k, v in point_rows.items()
            },
            geometry=gpd.points_from_xy(np.concatenate(xs), np.concatenate(ys)),
            crs=crs,
        )
    else:
        points = _empty_points(crs)
    boxes = gpd.GeoDataFrame(
        {
            "chip": np.asarray(box_rows["chip"], dtype=object),
            "component": np.asarray(box_rows["component"], np.int64),
        },
        geometry=gpd.GeoSeries(box_geoms, crs=crs),
        crs=crs,
    )
    metadata = {
        "source": source.path.name,
        "index": prompts.rule.method,
        "threshold": repr(prompts.threshold),
        "threshold_method": prompts.rule.how,
        "water_rule": prompts.rule.describe(),
        "chip_size": str(grid.size),
        "overlap": str(grid.overlap),
        "settings": repr(settings),
    }
    return PromptFeatures(points, boxes, prompts.threshold, len(grid), metadata)


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """A pixel box (x0, y0, x1, y1) clipped to ``width`` x ``height``, at least 1 px wide."""
    x0, x1 = np.clip(box[[0, 2]], 0, width)
    y0, y1 = np.clip(box[[1, 3]], 0, height)
    x0, y0 = min(x0, max(x1 - 1, 0)), min(y0, max(y1 - 1, 0))
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])


# Prompts files ---------------------------------------------------------------------------

PROMPT_FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def check_prompts_path(path: str | Path) -> Path:
    """``path`` if geoseg can write prompts there (.gpkg, .geojson), else ``OutputError``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as prompts.gpkg")
    if path.suffix.lower() not in PROMPT_FORMATS:
        raise OutputError(
            f"{path}: prompts are written as GeoPackage (.gpkg) or GeoJSON (.geojson); "
            f"change the file extension"
        )
    return path


def write_prompts(path: str | Path, features: PromptFeatures) -> Path:
    """Write prompts atomically: a GeoPackage with layers ``points`` and ``boxes`` in the
    features' CRS, or one GeoJSON FeatureCollection in EPSG:4326 (RFC 7946) whose features
    carry ``prompt`` = point or box.

    In a GeoPackage, the ``points`` layer's metadata records the index, threshold and
    settings that drew the prompts.
    """
    import pyogrio

    from geoseg.styles import GPKG_OPTIONS, write_prompt_styles

    path = check_prompts_path(path)
    driver = PROMPT_FORMATS[path.suffix.lower()]
    with atomic_output(path) as tmp:
        if driver == "GPKG":
            pyogrio.write_dataframe(
                features.points,
                tmp,
                layer="points",
                driver="GPKG",
                geometry_type="Point",
                layer_metadata=features.metadata or None,
                dataset_options=GPKG_OPTIONS,
            )
            pyogrio.write_dataframe(
                features.boxes,
                tmp,
                layer="boxes",
                driver="GPKG",
                geometry_type="Polygon",
                append=True,
            )
            write_prompt_styles(tmp)
        else:
            wgs84 = features.to_crs("EPSG:4326")
            points = wgs84.points.assign(prompt="point")
            boxes = wgs84.boxes.assign(prompt="box")
            table = pd.concat([points, boxes], ignore_index=True)
            table = gpd.GeoDataFrame(table, geometry="geometry", crs="EPSG:4326")
            table["label"] = table["label"].astype("Int64")
            pyogrio.write_dataframe(table, tmp, driver="GeoJSON", layer_options={"RFC7946": "YES"})
    return path


def read_prompts(path: str | Path) -> PromptFeatures:
    """Points and boxes from a prompts file in its own CRS (any vector format GDAL reads).

    Every layer is read: points (and multipoints) are point prompts, labelled by a
    ``label`` column (1 positive, 0 negative; missing means positive); polygons are boxes
    (their bounding boxes). Chip ids are kept when present but not needed.
    """
    import pyogrio

    path = check_readable(path, what="prompts")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InputFileError(
            f"{path}: not a vector file geoseg can read ({str(exc).splitlines()[0]}); give a "
            f"GeoPackage or GeoJSON of prompts"
        ) from None
    point_tables: list[gpd.GeoDataFrame] = []
    box_tables: list[gpd.GeoDataFrame] = []
    crs = None
    for layer in layers:
        table = gpd.read_file(path, layer=layer, engine="pyogrio")
        if table.empty or "geometry" not in table:
            continue
        if table.crs is None:
            raise MissingCRSError(
                f"{path}: layer {layer!r} has no CRS; assign the CRS of the coordinates "
                f"(in QGIS: Layer > Set CRS) and save again"
            )
        crs = crs or table.crs
        table = table[~table.geometry.is_empty & table.geometry.notna()].to_crs(crs)
        if "prompt" in table.columns and "label" in table.columns:
            table.loc[table["prompt"].astype(str) == "box", "label"] = None
        table = table.explode(index_parts=False, ignore_index=True)
        kinds = table.geometry.geom_type
        points = table[kinds == "Point"]
        if len(points):
            point_tables.append(
                gpd.GeoDataFrame(
                    {
                        "label": _label_values(points, path),
                        "chip": points["chip"].astype(object).to_numpy()
                        if "chip" in points
                        else np.full(len(points), None, object),
                        "component": np.zeros(len(points), np.int64),
                    },
                    geometry=points.geometry.to_numpy(),
                    crs=crs,
                )
            )
        polygons = table[kinds == "Polygon"]
        if len(polygons):
            box_tables.append(
                gpd.GeoDataFrame(
                    {
                        "chip": polygons["chip"].astype(object).to_numpy()
                        if "chip" in polygons
                        else np.full(len(polygons), None, object),
                        "component": np.zeros(len(polygons), np.int64),
                    },
                    geometry=polygons.geometry.to_numpy(),
                    crs=crs,
                )
            )
        ignored = len(table) - len(points) - len(polygons)
        if ignored:
            log.warning(
                "%s: layer %s: ignored %d features that are neither points nor polygons",
                path,
                layer,
                ignored,
            )
    if not point_tables and not box_tables:
        raise InputFileError(
            f"{path}: holds no point or polygon features; draw prompts as points (with a "
            f"label column, 1 water / 0 not water) or as boxes (polygons)"
        )
    points = (
        gpd.GeoDataFrame(pd.concat(point_tables, ignore_index=True), crs=crs)
        if point_tables
        else _empty_points(crs)
    )
    boxes = (
        gpd.GeoDataFrame(pd.concat(box_tables, ignore_index=True), crs=crs)
        if box_tables
        else gpd.GeoDataFrame({"chip": [], "component": []}, geometry=gpd.GeoSeries([], crs=crs))
    )
    return PromptFeatures(points, boxes)


class FilePrompts(PromptSource):
    """Prompts from a file, mapped onto chips of a raster in any CRS.

    A point belongs to every chip that contains it; a box to every chip it overlaps, by
    at least a pixel each way, clipped to the chip.
    """

    def __init__(self, features: PromptFeatures, crs) -> None:
        if crs is None:
            raise MissingCRSError("the raster has no CRS, so prompts cannot be placed on it")
        self.features = features
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._in_crs(crs)

    def _in_crs(self, crs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point x, y (N, 2), labels (N,) and box bounds (M, 4) in map units of ``crs``."""
        import shapely

        key = CRS.from_user_input(crs).to_wkt()
        if key not in self._cache:
            points = self.features.points.to_crs(crs)
            xy = shapely.get_coordinates(points.geometry.to_numpy())
            boxes = self.features.boxes
            if len(boxes) and not boxes.crs.equals(crs):
                # Densify first so the reprojected outline, and its envelope, bend as it should.
                width = np.maximum(
                    np.ptp(boxes.geometry.bounds.to_numpy()[:, [0, 2]], axis=1),
                    np.ptp(boxes.geometry.bounds.to_numpy()[:, [1, 3]], axis=1),
                )
                dense = shapely.segmentize(boxes.geometry.to_numpy(), np.maximum(width, 1e-9) / 16)
                boxes = gpd.GeoSeries(dense, crs=boxes.crs).to_crs(crs)
            else:
                boxes = boxes.geometry
            bounds = boxes.bounds.to_numpy().reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
            labels = self.features.points["label"].to_numpy(np.int64)
            self._cache[key] = (xy.reshape(-1, 2), labels, bounds)
        return self._cache[key]

    def for_chip(self, chip: Chip) -> Prompts:
        return self.for_tile(chip.tile)

    def for_tile(self, tile: Tile) -> Prompts:
        """Prompts of the chip of ``tile`` in its pixel coordinates."""
        xy, labels, bounds = self._in_crs(tile.crs)
        inverse = ~tile.transform
        height, width = tile.shape
        points = np.zeros((0, 2))
        kept = np.zeros(0, np.int64)
        if len(xy):
            px, py = inverse @ (xy[:, 0], xy[:, 1])
            px, py = np.asarray(px), np.asarray(py)
            inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
            points = np.stack([px[inside], py[inside]], axis=1)
            kept = labels[inside]
        boxes = np.zeros((0, 4))
        if len(bounds):
            corners_x = bounds[:, [0, 2, 2, 0]]
            corners_y = bounds[:, [1, 1, 3, 3]]
            cx, cy = inverse @ (corners_x.ravel(), corners_y.ravel())
            cx = np.asarray(cx).reshape(-1, 4)
            cy = np.asarray(cy).reshape(-1, 4)
            boxes = np.stack(
                [
                    np.clip(cx.min(1), 0, width),
                    np.clip(cy.min(1), 0, height),
                    np.clip(cx.max(1), 0, width),
                    np.clip(cy.max(1), 0, height),
                ],
                axis=1,
            )
            boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        return Prompts(points=points, labels=kept, boxes=boxes)


def file_prompts(path: str | Path, source: RasterSource) -> FilePrompts:
    """Prompts from a GeoPackage or GeoJSON file, reprojected onto the grid of ``source``."""
    return FilePrompts(read_prompts(path), source.crs)
