"""Class masks to polygons: one polygon per connected region of a class, in a GeoPackage.

The mask is polygonized window by window in pixel coordinates (whole numbers, so
polygons of neighbouring windows share their edges exactly). Polygons that reach a
window seam are dissolved per class afterwards, so a lake crossing seams is one polygon.
Pixels touching only at a corner are separate polygons (4-connectivity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes

from geoseg.atomic import atomic_output
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import InputFileError, OptionError
from geoseg.raster import open_dataset, read_errors
from geoseg.styles import GPKG_OPTIONS, read_class_metadata, write_vector_style
from geoseg.windows import block_windows

log = logging.getLogger(__name__)

#: Layer name of the polygons in the GeoPackage.
LAYER = "classes"
#: Side of the square windows the mask is polygonized in (pixels).
WINDOW = 2048

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
    Polygons are in the mask's CRS.
    """
    if min_area < 0:
        raise OptionError(f"--min-area must be >= 0 square metres, got {min_area}")
    if simplify < 0:
        raise OptionError(f"--simplify must be >= 0 metres, got {simplify}")
    out_gpkg = Path(out_gpkg)
    with open_dataset(mask_path, what="mask raster") as dataset:
        _check_mask(dataset)
        classes = classes or read_class_metadata(dataset)
        transform, crs = dataset.transform, dataset.crs
        pixel_m = _pixel_size_m(dataset)
        skip_zero = not include_background and _zero_is_background(classes)
        with read_errors(mask_path):
            ids, pixel_geoms = _polygonize(dataset, not skip_zero, window, progress)
    if classes is None:
        classes = ClassMap.from_ids(set(ids.tolist()) | {0})
    else:
        classes = classes.with_ids(ids.tolist())
    pixel_area_m2 = pixel_m[0] * pixel_m[1]
    if min_area > 0 and len(pixel_geoms):
        keep = shapely.area(pixel_geoms) * pixel_area_m2 >= min_area
        ids, pixel_geoms = ids[keep], pixel_geoms[keep]
    if simplify > 0 and len(pixel_geoms):
        pixel_geoms = _simplify(pixel_geoms, simplify / min(pixel_m))
        keep = ~shapely.is_empty(pixel_geoms)
        ids, pixel_geoms = ids[keep], pixel_geoms[keep]
    geoms = shapely.transform(pixel_geoms, lambda xy: _apply(transform, xy))
    frame = gpd.GeoDataFrame(
        {
            "class_id": ids.astype("int32"),
            "class_name": [classes.by_id(int(i)).name for i in ids],
        },
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )
    area, perimeter = _metric_measures(frame.geometry, _linear_factor(crs))
    frame["area_m2"] = area
    frame["perimeter_m"] = perimeter
    if min_area > 0:
        frame = frame[frame["area_m2"] >= min_area]
    frame = frame.sort_values(["class_id", "area_m2"], ascending=[True, False])
    frame = frame.reset_index(drop=True)
    with atomic_output(out_gpkg) as tmp:
        frame.to_file(
            tmp,
            layer=LAYER,
            driver="GPKG",
            engine="pyogrio",
            geometry_type="Polygon",
            dataset_options=GPKG_OPTIONS,
        )
        write_vector_style(tmp, LAYER, classes)
    log.info("%s: %d polygons", out_gpkg, len(frame))
    return out_gpkg


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


def _polygonize(dataset, include_background: bool, size: int, progress: Progress | None):
    """(class ids, polygons in pixel coordinates of the whole mask), seams dissolved."""
    width, height = dataset.width, dataset.height
    windows = list(block_windows(width, height, size))
    ids: list[int] = []
    geoms: list = []
    seam_ids: list[int] = []
    seam_geoms: list = []
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
            ids += values[~on_seam].tolist()
            geoms += list(polygons[~on_seam])
            seam_ids += values[on_seam].tolist()
            seam_geoms += list(polygons[on_seam])
        if progress is not None:
            progress(n, len(windows))
    seam_ids_arr = np.array(seam_ids, dtype=np.int64)
    for class_id in np.unique(seam_ids_arr):
        parts = np.array(seam_geoms, dtype=object)[seam_ids_arr == class_id]
        merged = shapely.get_parts(shapely.union_all(parts))
        for polygon in merged:
            if isinstance(polygon, shapely.Polygon) and not polygon.is_empty:
                ids.append(int(class_id))
                geoms.append(polygon)
    return np.array(ids, dtype=np.int64), np.array(geoms, dtype=object)


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


def _metric_measures(geoms: gpd.GeoSeries, factor: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m2) and perimeters (m) of polygons; on a UTM copy when the CRS is geographic."""
    if len(geoms) == 0:
        return np.zeros(0), np.zeros(0)
    if factor is None:
        metric = geoms.to_crs(geoms.estimate_utm_crs())
        return metric.area.to_numpy(), metric.length.to_numpy()
    return geoms.area.to_numpy() * factor**2, geoms.length.to_numpy() * factor
