"""Class masks to polygons: one polygon per connected region of a class, in a GeoPackage.

The mask is polygonized window by window in pixel coordinates (whole numbers, so
polygons of neighbouring windows share their edges exactly). Polygons that reach a
window seam are dissolved per class afterwards, so a lake crossing seams is one polygon;
the others go to the file (``geoseg.gpkg``) as soon as their window is done.
Pixels touching only at a corner are separate polygons (4-connectivity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes

from geoseg.atomic import atomic_output
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import InputFileError, OptionError
from geoseg.gpkg import FeatureWriter
from geoseg.raster import open_dataset, read_errors
from geoseg.styles import read_class_metadata, write_vector_style
from geoseg.windows import block_windows

log = logging.getLogger(__name__)

#: Layer name of the polygons in the GeoPackage.
LAYER = "classes"
#: Side of the square windows the mask is polygonized in (pixels).
WINDOW = 2048
#: The polygons' attributes and their types.
FIELDS = {"class_id": "int32", "class_name": "str", "area_m2": "float64", "perimeter_m": "float64"}

Progress = Callable[[int, int], None]


def vectorize_mask(
    mask_path: str | Path,
    out_gpkg: str | Path,
    *,
    classes: ClassMap | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    include_background: bool = False,
    window: int = WINDOW,
    progress: Progress | None = None,
) -> Path:
    """Write polygons of each class of a uint8 mask to layer ``classes`` of a GeoPackage.

    Attributes: ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m`` (metres even
    for a geographic CRS, measured on a UTM copy). ``min_area`` (m2) drops smaller
    polygons; ``simplify`` (metres) simplifies boundaries keeping neighbouring polygons
    gap-free. The ignore value 255 is never vectorized; class 0 is skipped when it is the
    background (named ``background``, or unnamed) unless ``include_background``, so a
    land-cover class 0 such as ``other`` keeps its polygons. ``classes`` defaults to the
    classes in the mask's tags.
    Polygons are in the mask's CRS, stored by class and then largest first. They are
    written window by window: only the polygons that reach a window seam wait in memory
    for their neighbours (all of them with ``simplify``, which simplifies the whole
    coverage at once).
    """
    if min_area < 0:
        raise OptionError(f"--min-area must be >= 0 square metres, got {min_area}")
    if simplify < 0:
        raise OptionError(f"--simplify must be >= 0 metres, got {simplify}")
    out_gpkg = Path(out_gpkg)
    with open_dataset(mask_path, what="mask raster") as dataset:
        _check_mask(dataset)
        classes = classes or read_class_metadata(dataset)
        skip_zero = not include_background and _zero_is_background(classes)
        measure = _Measures(dataset)
        seen: set[int] = set()
        written = 0
        with atomic_output(out_gpkg) as tmp:
            with FeatureWriter(
                tmp, LAYER, crs=dataset.crs, fields=FIELDS, order_by=("class_id", "area_m2 DESC")
            ) as layer:

                def write(ids: np.ndarray, pixel_geoms: np.ndarray) -> None:
                    nonlocal written
                    ids, geoms, area, perimeter = measure(ids, pixel_geoms, min_area, simplify)
                    found = set(ids.tolist())
                    seen.update(found)
                    named = ClassMap.from_ids(found) if classes is None else classes.with_ids(found)
                    names = {i: named.by_id(i).name for i in found}
                    layer.add(
                        geoms,
                        class_id=ids,
                        class_name=[names[i] for i in ids.tolist()],
                        area_m2=area,
                        perimeter_m=perimeter,
                    )
                    written += len(ids)

                with read_errors(mask_path):
                    _polygonize(dataset, not skip_zero, window, progress, write, whole=simplify > 0)
            style = ClassMap.from_ids(seen | {0}) if classes is None else classes.with_ids(seen)
            write_vector_style(tmp, LAYER, style)
    log.info("%s: %d polygons", out_gpkg, written)
    return out_gpkg


class _Measures:
    """Polygons of one mask from pixel to CRS coordinates, with their areas and perimeters."""

    def __init__(self, dataset) -> None:
        self.transform = dataset.transform
        width_m, height_m = _pixel_size_m(dataset)
        self.pixel_area_m2, self.pixel_m = width_m * height_m, min(width_m, height_m)
        self.factor = _linear_factor(dataset.crs)
        self.to_metric = None if self.factor is not None else _utm_transformer(dataset)

    def __call__(self, ids: np.ndarray, pixel_geoms: np.ndarray, min_area: float, simplify: float):
        """(ids, polygons, areas m2, perimeters m) of those kept by ``min_area``."""
        if min_area > 0 and len(pixel_geoms):
            keep = shapely.area(pixel_geoms) * self.pixel_area_m2 >= min_area
            ids, pixel_geoms = ids[keep], pixel_geoms[keep]
        if simplify > 0 and len(pixel_geoms):
            pixel_geoms = _simplify(pixel_geoms, simplify / self.pixel_m)
            keep = ~shapely.is_empty(pixel_geoms)
            ids, pixel_geoms = ids[keep], pixel_geoms[keep]
        geoms = shapely.transform(pixel_geoms, lambda xy: _apply(self.transform, xy))
        if self.to_metric is None:
            area, perimeter = (
                shapely.area(geoms) * self.factor**2,
                shapely.length(geoms) * self.factor,
            )
        else:
            metric = shapely.transform(geoms, self.to_metric)
            area, perimeter = shapely.area(metric), shapely.length(metric)
        if min_area > 0:
            keep = area >= min_area
            ids, geoms, area, perimeter = ids[keep], geoms[keep], area[keep], perimeter[keep]
        return ids, geoms, area, perimeter


def _utm_transformer(dataset):
    """From a geographic mask's CRS to a UTM zone covering it (the first, as geopandas'
    ``estimate_utm_crs`` picks), as a function of (n, 2) coordinates."""
    from pyproj import CRS, Transformer
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    area = AreaOfInterest(west, south, east, north)
    utm = CRS.from_epsg(query_utm_crs_info(datum_name="WGS 84", area_of_interest=area)[0].code)
    transformer = Transformer.from_crs(CRS.from_wkt(dataset.crs.to_wkt()), utm, always_xy=True)
    return lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))


def _zero_is_background(classes: ClassMap | None) -> bool:
    if classes is None or 0 not in classes.ids:
        return True
    return classes.by_id(0).name.lower() in {"background", "nodata", "none", "unlabeled"}


def _check_mask(dataset) -> None:
    if dataset.count != 1 or dataset.dtypes[0] != "uint8":
        raise InputFileError(
            f"{dataset.name}: expected a class mask (1 band of uint8 class ids), found "
            f"{dataset.count} band(s) of {dataset.dtypes[0]}; vectorize the mask written by "
            f"geoseg predict"
        )
    if dataset.crs is None:
        raise InputFileError(f"{dataset.name}: mask has no CRS; polygons would have no location")


def _polygonize(
    dataset,
    include_background: bool,
    size: int,
    progress: Progress | None,
    write: Callable[[np.ndarray, np.ndarray], None],
    *,
    whole: bool = False,
) -> None:
    """Pass each window's polygons (class ids, polygons in pixel coordinates of the whole
    mask) to ``write`` as they are found, and those that reach a window seam once they
    are dissolved with their neighbours; all of them in one call with ``whole``."""
    width, height = dataset.width, dataset.height
    windows = list(block_windows(width, height, size))
    inner_ids: list[np.ndarray] = []  # with ``whole``: every window's inner polygons
    inner: list[np.ndarray] = []
    seam_ids: list[np.ndarray] = []
    seams: list[np.ndarray] = []
    for n, win in enumerate(windows, start=1):
        data = dataset.read(1, window=win)
        keep = data != IGNORE_INDEX
        if not include_background:
            keep &= data != 0
        if keep.any():
            col0, row0 = int(win.col_off), int(win.row_off)
            col1, row1 = col0 + int(win.width), row0 + int(win.height)
            offset = Affine.translation(col0, row0)
            values, polygons = _polygons(shapes(data, mask=keep, transform=offset, connectivity=4))
            x0, y0, x1, y1 = shapely.bounds(polygons).T
            on_seam = (
                ((x0 <= col0) & (col0 > 0))
                | ((y0 <= row0) & (row0 > 0))
                | ((x1 >= col1) & (col1 < width))
                | ((y1 >= row1) & (row1 < height))
            )
            if whole:
                inner_ids.append(values[~on_seam])
                inner.append(polygons[~on_seam])
            elif not on_seam.all():
                write(values[~on_seam], polygons[~on_seam])
            seam_ids.append(values[on_seam])
            seams.append(polygons[on_seam])
        if progress is not None:
            progress(n, len(windows))
    ids = np.concatenate(seam_ids) if seam_ids else np.zeros(0, np.int64)
    parts = np.concatenate(seams) if seams else np.zeros(0, dtype=object)
    del seams
    for class_id in np.unique(ids):
        merged = shapely.get_parts(shapely.union_all(parts[ids == class_id]))
        merged = merged[~shapely.is_empty(merged)]
        merged = merged[shapely.get_type_id(merged) == shapely.GeometryType.POLYGON]
        inner_ids.append(np.full(len(merged), class_id, dtype=np.int64))
        inner.append(merged)
    if inner:
        ids, polygons = np.concatenate(inner_ids), np.concatenate(inner)
        if len(polygons):
            write(ids, polygons)


def _polygons(features) -> tuple[np.ndarray, np.ndarray]:
    """(values, polygons) of rasterio ``shapes`` output, built by shapely in one call: a
    Python ``shape()`` per polygon took most of the time of a large mask's vectorizing."""
    values, lengths, ring_owner = [], [], []
    chunks = []
    for number, (geom, value) in enumerate(features):
        values.append(int(value))
        for ring in geom["coordinates"]:
            chunks.append(ring)
            lengths.append(len(ring))
            ring_owner.append(number)
    if not values:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    coords = np.array([xy for ring in chunks for xy in ring], dtype=np.float64)
    rings = shapely.linearrings(coords, indices=np.repeat(np.arange(len(lengths)), lengths))
    polygons = shapely.polygons(rings, indices=np.asarray(ring_owner))
    return np.asarray(values, dtype=np.int64), polygons


def _simplify(geoms: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Simplified polygons; shared boundaries stay shared where GEOS supports coverages."""
    if hasattr(shapely, "coverage_simplify"):
        return np.asarray(shapely.coverage_simplify(geoms, tolerance_px, simplify_boundary=True))
    return np.asarray(shapely.simplify(geoms, tolerance_px, preserve_topology=True))


def _apply(transform: Affine, xy: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([a * x + b * y + c, d * x + e * y + f])


def _pixel_size_m(dataset) -> tuple[float, float]:
    """Pixel width and height in metres (approximate for a geographic CRS)."""
    res_x, res_y = abs(dataset.transform.a), abs(dataset.transform.e)
    crs = dataset.crs
    if crs.is_geographic:
        lat = np.deg2rad((dataset.bounds.top + dataset.bounds.bottom) / 2)
        return res_x * 111_320.0 * float(np.cos(lat)), res_y * 110_574.0
    factor = _linear_factor(crs)
    return res_x * factor, res_y * factor


def _linear_factor(crs) -> float | None:
    """Metres per unit of a projected rasterio CRS; None for a geographic one."""
    if crs.is_geographic:
        return None
    return crs.linear_units_factor[1] if crs.is_projected else 1.0
