"""Reprojection of rasters (rasterio.warp, window by window) and vector files (geopandas)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling

from geoseg.atomic import (
    atomic_output,
    check_output_folder,
    ensure_folder,
    output_complete,
    write_errors,
)
from geoseg.classes import ClassMap
from geoseg.errors import InputFileError, MissingCRSError, OutputError
from geoseg.labels import is_vector
from geoseg.raster import RasterSource, check_readable, open_raster, parse_crs
from geoseg.styles import (
    GPKG_OPTIONS,
    read_class_metadata,
    read_gpkg_styles,
    write_gpkg_styles,
    write_raster_qml,
)
from geoseg.windows import BLOCK, block_windows

#: Output driver by suffix for rasters (written tiled and compressed).
RASTER_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff"}
#: Output driver by suffix for vector files.
VECTOR_DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
}


def reproject(
    src: str | Path,
    dst: str | Path,
    dst_crs: str | CRS,
    *,
    resolution: float | None = None,
    resampling: str = "nearest",
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Reproject a raster or a vector file (chosen by suffix) to ``dst_crs``."""
    if is_vector(src):
        return reproject_vector(src, dst, dst_crs, overwrite=overwrite)
    return reproject_raster(
        src,
        dst,
        dst_crs,
        resolution=resolution,
        resampling=resampling,
        overwrite=overwrite,
        on_start=on_start,
        progress=progress,
    )


def reproject_raster(
    src: str | Path,
    dst: str | Path,
    dst_crs: str | CRS,
    *,
    resolution: float | None = None,
    resampling: str = "nearest",
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Warp a raster onto ``dst_crs`` block by block into a tiled, compressed GeoTIFF.

    Memory is bounded by the block size. Nodata, band descriptions, tags and a colour
    table carry over; use ``resampling="nearest"`` for class masks. A geoseg class mask
    also gets overviews (nearest, so they hold class ids) and its ``.qml`` style.
    """
    dst = Path(dst)
    if dst.suffix.lower() not in RASTER_DRIVERS:
        raise OutputError(
            f"{dst}: unknown raster format {dst.suffix or '(no extension)'}; rasters are "
            f"written as GeoTIFF: end the name with one of {', '.join(RASTER_DRIVERS)}"
        )
    _check_output(dst, overwrite)
    crs = parse_crs(dst_crs)
    with (
        open_raster(src, dst_crs=crs, resolution=resolution, resampling=resampling) as source,
        atomic_output(dst) as tmp,
    ):
        classes = warp_raster(
            source, tmp, class_overviews=True, on_start=on_start, progress=progress
        )
    if classes is not None:
        write_raster_qml(dst, classes)
    return dst


def warp_raster(
    source: RasterSource,
    dst: str | Path,
    *,
    creation: dict | None = None,
    class_overviews: bool = False,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ClassMap | None:
    """Write ``source``, opened on the target grid (``open_raster(..., dst_crs=...)``),
    window by window into a tiled GeoTIFF at ``dst``.

    The one reprojection loop (``geoseg reproject``, and ``predict --dst-crs`` on its
    streamed mask). ``dst`` is written in place: give a temporary name. Nodata (or an
    internal mask where the source has none), tags, band descriptions and a colour table
    carry over. ``creation``: GeoTIFF creation options over the defaults (deflate, 512 px
    tiles). ``class_overviews``: a class mask also gets nearest overviews. Returns the
    source's classes when it is a geoseg class mask, else None.
    """
    original = source._file
    profile = source.profile(
        driver=RASTER_DRIVERS[".tif"],
        compress="deflate",
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        BIGTIFF="IF_SAFER",
        predictor=3 if source.dtype.kind == "f" else 2,
    )
    profile.update(creation or {})
    windows = list(block_windows(source.width, source.height))
    if on_start:
        on_start(len(windows))
    needs_mask = source.nodata is None
    classes = read_class_metadata(original) if original.count == 1 else None
    env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True)
    with env, rasterio.open(dst, "w", **profile) as out:
        carry_metadata(original, out)
        for window in windows:
            data, valid = source.read(window)
            out.write(data, window=window)
            if needs_mask:
                out.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)
            if progress:
                progress(1)
        if classes is not None and class_overviews:
            out.build_overviews(_overview_factors(out.width, out.height), Resampling.nearest)
    return classes


def carry_metadata(src, dst) -> None:
    """Copy dataset tags, band descriptions and a colour table from ``src`` to ``dst``.

    Both are open rasterio datasets with the same bands; the colour table of a single
    uint8 or uint16 band only, the only kinds that carry one.
    """
    dst.update_tags(**src.tags())
    for i, description in enumerate(src.descriptions, start=1):
        if description:
            dst.set_band_description(i, description)
    if src.count == 1 and src.dtypes[0] in ("uint8", "uint16"):
        with contextlib.suppress(ValueError):  # no colour table to carry over
            dst.write_colormap(1, src.colormap(1))


def _overview_factors(width: int, height: int) -> list[int]:
    """Overview levels down to one block, as the COG driver makes them for predict's masks."""
    factors, factor = [], 2
    while max(width, height) / (factor // 2) > BLOCK:
        factors.append(factor)
        factor *= 2
    return factors


def reproject_vector(
    src: str | Path, dst: str | Path, dst_crs: str | CRS, *, overwrite: bool = False
) -> Path:
    """Reproject every layer of a vector file with geopandas ``to_crs``."""
    import geopandas as gpd
    import pyogrio

    src, dst = check_readable(src, what="vector"), Path(dst)
    driver = VECTOR_DRIVERS.get(dst.suffix.lower())
    if driver is None:
        raise OutputError(
            f"{dst}: unknown vector format {dst.suffix or '(no extension)'}; end the name "
            f"with one of {', '.join(VECTOR_DRIVERS)}"
        )
    _check_output(dst, overwrite)
    crs = parse_crs(dst_crs)
    try:
        listed = pyogrio.list_layers(src)
    except Exception as exc:  # pyogrio's DataSourceError family
        raise InputFileError(f"{src}: not a vector file geoseg can read ({exc})") from None
    layers = [name for name, geometry_type in listed if geometry_type is not None]
    # Tables without geometry (a GeoPackage's QGIS layer_styles, say) carry over unchanged
    # where the format can hold them.
    tables = [name for name, geometry_type in listed if geometry_type is None]
    # QGIS styles are copied into a table made as QGIS makes it, not as a plain table.
    styles = read_gpkg_styles(src) if "layer_styles" in tables and driver == "GPKG" else []
    tables = [name for name in tables if name != "layer_styles"]
    if driver != "GPKG" and len(layers) > 1:
        raise OutputError(
            f"{src} has {len(layers)} layers but {dst.suffix} holds one; write a .gpkg instead"
        )
    frames = []
    for layer in layers:
        frame = gpd.read_file(src, layer=layer, engine="pyogrio")
        if frame.crs is None:
            raise MissingCRSError(
                f"{src}: layer {layer!r} has no CRS; assign one (ogr2ogr -a_srs EPSG:XXXX) first"
            )
        frames.append((layer, frame.to_crs(crs)))
    if driver == "GPKG":
        frames += [(table, pyogrio.read_dataframe(src, layer=table)) for table in tables]
    if driver == "ESRI Shapefile":
        # A shapefile is several files: write them in a scratch folder, then move each.
        ensure_folder(dst.parent)
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".reproject-") as scratch:
            scratch_path = Path(scratch) / dst.name
            with write_errors(dst, [Path(scratch)]):
                frames[0][1].to_file(scratch_path, driver=driver, engine="pyogrio")
            for part in Path(scratch).iterdir():
                shutil.move(part, dst.parent / part.name)
        return dst
    with atomic_output(dst) as tmp:
        for n, (layer, frame) in enumerate(frames):
            options = GPKG_OPTIONS if driver == "GPKG" and n == 0 else None
            pyogrio.write_dataframe(frame, tmp, layer=layer, driver=driver, dataset_options=options)
        if styles:
            write_gpkg_styles(tmp, styles)
    return dst


def reproject_complete(src: str | Path, dst: str | Path, dst_crs: str | CRS) -> bool:
    """True when ``dst`` already holds ``src`` reprojected to ``dst_crs``, complete and intact."""
    if is_vector(src):
        return output_complete(dst)
    return output_complete(dst, crs=parse_crs(dst_crs))


def _check_output(dst: Path, overwrite: bool) -> None:
    if dst.is_dir():
        raise OutputError(f"{dst}: is a folder; give an output file name")
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst}: exists; pass --overwrite to replace it")
    check_output_folder(dst.parent)
