"""Spectral water and vegetation indices, found by band name, computed window by window.

``compute_index`` works on one block of pixels (a chip or a window). ``index_array`` wraps
a whole raster as a lazily computed ``xarray.DataArray`` whose chunks are read window by
window, and ``index_window`` gives one window as a ``DataArray`` with map coordinates.

Index values are float32; nodata, invalid pixels and 0/0 are NaN. Normalised differences
lie in [-1, 1]; the HSV rule is a 0..1 water score (see ``hsv_score``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from geoseg.errors import BandError, OptionError, OutputError
from geoseg.windows import BLOCK, block_windows

if TYPE_CHECKING:
    import xarray as xr

    from geoseg.raster import RasterSource

__all__ = [
    "INDICES",
    "required_bands",
    "compute_index",
    "normalized_difference",
    "hsv_score",
]

#: index name -> band names it needs, in the order of the formula.
INDICES: dict[str, tuple[str, ...]] = {
    "ndwi": ("green", "nir"),
    "mndwi": ("green", "swir1"),
    "ndvi": ("nir", "red"),
    "hsv": ("red", "green", "blue"),
}

#: One line per index for help texts.
INDEX_DESCRIPTIONS: dict[str, str] = {
    "ndwi": "(green - nir) / (green + nir), McFeeters 1996; water > 0",
    "mndwi": "(green - swir1) / (green + swir1), Xu 2006; water > 0, good for turbid rivers",
    "ndvi": "(nir - red) / (nir + red); vegetation > 0",
    "hsv": "0..1 score of blue-to-cyan pixels by hue, saturation and value (RGB only imagery)",
}

#: The range an index can take, for histograms.
INDEX_RANGES: dict[str, tuple[float, float]] = {
    "ndwi": (-1.0, 1.0),
    "mndwi": (-1.0, 1.0),
    "ndvi": (-1.0, 1.0),
    "hsv": (0.0, 1.0),
}

#: Defaults of the HSV rule: hue in degrees, saturation and value in 0..1.
HSV_DEFAULTS: dict[str, tuple[float, float]] = {
    "hue": (170.0, 260.0),
    "saturation": (0.08, 1.0),
    "value": (0.02, 1.0),
}
#: How far outside a range (degrees for hue, 0..1 for the others) the score falls to 0.
HSV_SOFTNESS: dict[str, float] = {"hue": 20.0, "saturation": 0.05, "value": 0.02}


def required_bands(index: str) -> tuple[str, ...]:
    """Band names ``index`` reads, e.g. ``("green", "nir")`` for ndwi."""
    try:
        return INDICES[index.lower()]
    except (KeyError, AttributeError):
        raise OptionError(f"unknown index {index!r}; use one of {', '.join(INDICES)}") from None


def check_bands(index: str, band_names: Sequence[str], *, source: str = "the raster") -> None:
    """Raise ``BandError`` naming the first band ``index`` needs that ``band_names`` lacks."""
    names = set(band_names)
    missing = [name for name in required_bands(index) if name not in names]
    if not missing:
        return
    usable = [name for name, needed in INDICES.items() if names.issuperset(needed)]
    if usable:
        hint = (
            f"use --index {' or '.join(usable)}, or name the {missing[0]} band with --bands "
            f"if the file has one"
        )
    else:
        hint = "name the bands with --bands (e.g. --bands naip or --bands green=2,nir=4)"
    raise BandError(
        f"{source}: index {index.lower()} needs band {missing[0]!r} but the bands are "
        f"{', '.join(band_names)}; {hint}"
    )


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b) in float32; NaN where a + b == 0."""
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        result = (a - b) / total
    result[total == 0] = np.nan
    return result


def _membership(values: np.ndarray, low: float, high: float, soft: float) -> np.ndarray:
    """1 inside [low, high], falling linearly to 0 at ``soft`` outside it."""
    below = (low - values) / soft if soft > 0 else np.where(values < low, np.inf, 0)
    above = (values - high) / soft if soft > 0 else np.where(values > high, np.inf, 0)
    return np.clip(1.0 - np.maximum(np.maximum(below, above), 0.0), 0.0, 1.0)


def _range(params: dict[str, Any], key: str) -> tuple[float, float]:
    value = params.get(key)
    if value is None:
        return HSV_DEFAULTS[key]
    if isinstance(value, str):
        value = [v for v in value.replace(":", ",").split(",") if v.strip()]
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError(f"--{key} {value!r} must be two numbers LOW,HIGH") from None
    if low > high and key != "hue":
        raise OptionError(f"--{key} {low:g},{high:g}: LOW must not exceed HIGH")
    return low, high


def hsv_score(
    rgb: np.ndarray,
    *,
    hue: tuple[float, float] | str | None = None,
    saturation: tuple[float, float] | str | None = None,
    value: tuple[float, float] | str | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """A 0..1 water score of red, green, blue pixels (3, H, W) by HSV ranges.

    1 where hue (degrees, 0..360; a range with LOW > HIGH wraps through red), saturation
    and value (0..1) all lie in their ranges, falling linearly to 0 within a soft margin
    outside them (20 degrees, 0.05, 0.02). ``scale`` is the digital number of full
    brightness (default: the integer dtype's maximum, 1.0 for floats); only value uses it.
    """
    from skimage.color import rgb2hsv

    params = {"hue": hue, "saturation": saturation, "value": value}
    hue_range, sat_range, val_range = (_range(params, k) for k in ("hue", "saturation", "value"))
    if scale is None:
        scale = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
    image = np.clip(np.moveaxis(rgb.astype(np.float32), 0, -1) / np.float32(scale), 0.0, 1.0)
    hsv = rgb2hsv(image) if image.size else np.zeros(image.shape, np.float32)
    h = hsv[..., 0] * 360.0
    low, high = hue_range
    if low > high:
        # A wrapping range such as 330,20: shift hues so the range is contiguous.
        h = np.where(h < low, h + 360.0, h)
        high += 360.0
    score = _membership(h, low, high, HSV_SOFTNESS["hue"])
    score = score * _membership(hsv[..., 1], *sat_range, HSV_SOFTNESS["saturation"])
    score = score * _membership(hsv[..., 2], *val_range, HSV_SOFTNESS["value"])
    return score.astype(np.float32)


def compute_index(
    data: np.ndarray,
    band_names: Sequence[str],
    index: str,
    valid: np.ndarray | None = None,
    **params: Any,
) -> np.ndarray:
    """The index of pixels ``data`` (bands, H, W) whose bands are named ``band_names``.

    Returns float32 (H, W); NaN where ``valid`` is False, where a band is NaN, and where a
    normalised difference divides by zero. ``params`` go to the HSV rule (hue, saturation,
    value, scale).
    """
    index = index.lower()
    needed = required_bands(index)
    band_names = list(band_names)
    if data.ndim != 3 or data.shape[0] != len(band_names):
        raise ValueError(f"data has shape {data.shape} but {len(band_names)} band names")
    check_bands(index, band_names)
    bands = [data[band_names.index(name)] for name in needed]
    if index == "hsv":
        unknown = set(params) - {"hue", "saturation", "value", "scale"}
        if unknown:
            raise OptionError(
                f"index hsv takes hue, saturation, value, scale; not {sorted(unknown)}"
            )
        result = hsv_score(np.stack(bands), **params)
        if data.dtype.kind == "f":
            result[np.isnan(np.stack(bands)).any(axis=0)] = np.nan
    else:
        if params:
            raise OptionError(f"index {index} takes no parameters, got {sorted(params)}")
        result = normalized_difference(bands[0], bands[1])
    if valid is not None:
        result[~np.asarray(valid, dtype=bool)] = np.nan
    return result


def pixel_centres(transform: Affine, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Map x of each column centre and map y of each row centre of ``window`` (north-up)."""
    col0, row0 = int(window.col_off), int(window.row_off)
    cols = np.arange(col0, col0 + int(window.width)) + 0.5
    rows = np.arange(row0, row0 + int(window.height)) + 0.5
    x = transform.c + transform.a * cols
    y = transform.f + transform.e * rows
    return x, y


def _attrs(source: RasterSource, index: str, transform: Affine) -> dict[str, Any]:
    return {
        "index": index,
        "long_name": INDEX_DESCRIPTIONS[index],
        "crs": source.crs.to_wkt() if source.crs else None,
        "transform": tuple(transform)[:6],
        "nodata": np.nan,
        "bands": ",".join(required_bands(index)),
    }


def _reflectance(source: RasterSource, index: str, reflectance: Any) -> Any:
    """How ``index`` reads ``source``: in reflectance for the normalised differences (a
    Sentinel-2 L2A offset or per-band scales change their value), raw for the HSV rule."""
    if index == "hsv":
        return None
    if reflectance is None:
        from geoseg.water import raster_reflectance

        reflectance = raster_reflectance(source)
    names = required_bands(index)
    scales = {float(reflectance.scale.get(name, 1.0)) for name in names}
    offsets = {float(reflectance.offset.get(name, 0.0)) for name in names}
    if not reflectance.known or (len(scales) == 1 and offsets == {0.0}):
        return None  # one scale and no offset leave a normalised difference unchanged
    return reflectance


def _index_values(data, valid, names, index, reflectance, params) -> np.ndarray:
    if reflectance is not None:
        data = np.stack([reflectance.apply(data[i], name) for i, name in enumerate(names)])
    return compute_index(data, names, index, valid, **params)


def index_window(
    source: RasterSource, index: str, window: Window, *, reflectance=None, **params: Any
) -> xr.DataArray:
    """The index over one window of ``source`` as a DataArray with ``y``/``x`` map coordinates.

    Normalised differences are computed on reflectance: ``reflectance`` (a
    ``geoseg.water.Reflectance``) or, by default, what the raster's metadata says
    (``geoseg.water.raster_reflectance``). ``attrs`` hold ``crs`` (WKT) and ``transform``
    (the window's affine, 6 numbers).
    """
    import xarray as xr  # with pandas, a third of a second: only for the DataArray helpers

    index = index.lower()
    check_bands(index, source.band_names, source=str(source.path))
    names = required_bands(index)
    reflectance = _reflectance(source, index, reflectance)
    data, valid = source.read(window, names)
    values = _index_values(data, valid, names, index, reflectance, params)
    x, y = pixel_centres(source.transform, window)
    transform = source.transform @ Affine.translation(int(window.col_off), int(window.row_off))
    return xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": y, "x": x},
        name=index,
        attrs=_attrs(source, index, transform),
    )


def index_array(
    source: RasterSource, index: str, *, chunk: int = 512, reflectance=None, **params: Any
) -> xr.DataArray:
    """The index over the whole raster as a dask-backed DataArray, one read per chunk.

    Nothing is read until the array is computed; each ``chunk`` x ``chunk`` block reads
    only its own window. Needs dask (``pip install geoseg[distributed]``).
    """
    try:
        import dask.array as da
    except ImportError:
        raise OptionError(
            "index_array needs dask; install it (pip install 'dask[array]') or use "
            "index_window / geoseg index, which read window by window without it"
        ) from None
    import xarray as xr

    index = index.lower()
    check_bands(index, source.band_names, source=str(source.path))
    names = required_bands(index)
    reflectance = _reflectance(source, index, reflectance)
    # rasterio datasets are not thread-safe; dask's threaded scheduler may call concurrently.
    lock = threading.Lock()

    def block(block_info=None) -> np.ndarray:
        (row0, row1), (col0, col1) = block_info[None]["array-location"]
        window = Window(col0, row0, col1 - col0, row1 - row0)
        with lock:
            data, valid = source.read(window, names)
        return _index_values(data, valid, names, index, reflectance, params)

    chunks = (
        _chunk_sizes(source.height, chunk),
        _chunk_sizes(source.width, chunk),
    )
    lazy = da.map_blocks(block, dtype=np.float32, chunks=chunks, meta=np.array((), np.float32))
    x, y = pixel_centres(source.transform, Window(0, 0, source.width, source.height))
    return xr.DataArray(
        lazy,
        dims=("y", "x"),
        coords={"y": y, "x": x},
        name=index,
        attrs=_attrs(source, index, source.transform),
    )


def _chunk_sizes(extent: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(extent, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def index_complete(source: RasterSource, index: str, path: str | Path) -> bool:
    """True when ``path`` already holds this index of ``source``, complete and intact."""
    import rasterio

    from geoseg.atomic import output_complete

    grid = dict(
        width=source.width, height=source.height, crs=source.crs, transform=source.transform
    )
    if not output_complete(path, count=1, dtype="float32", **grid):
        return False
    with rasterio.open(path) as dataset:
        return dataset.tags(1).get("index") == index.lower()


def write_index(
    source: RasterSource,
    index: str,
    path: str | Path,
    *,
    block: int = BLOCK,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    reflectance=None,
    **params: Any,
) -> Path:
    """Write the index of ``source`` as a float32 GeoTIFF on the source grid, atomically.

    Normalised differences are computed on reflectance, as in ``index_window``.

    Tiled (``block`` px, a multiple of 16), deflate-compressed; nodata is NaN and covers the
    source's nodata and masked pixels. Written window by window; ``on_start`` gets the
    number of windows and ``progress`` is called with 1 after each.
    """
    import rasterio

    from geoseg.atomic import atomic_output

    index = index.lower()
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as {index}.tif")
    if path.suffix.lower() not in {".tif", ".tiff"}:
        raise OutputError(f"{path}: indices are written as GeoTIFF; give a name ending in .tif")
    check_bands(index, source.band_names, source=str(source.path))
    names = required_bands(index)
    reflectance = _reflectance(source, index, reflectance)
    if block % 16:
        raise OptionError(f"block size {block} must be a multiple of 16")
    profile = source.profile(
        dtype="float32",
        count=1,
        nodata=float("nan"),
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        predictor=3,
        BIGTIFF="IF_SAFER",
    )
    windows = list(block_windows(source.width, source.height, block))
    if on_start is not None:
        on_start(len(windows))
    with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.set_band_description(1, index)
        dst.update_tags(
            1,
            index=index,
            formula=INDEX_DESCRIPTIONS[index],
            bands=",".join(names),
            source=source.path.name,
            **{k: str(v) for k, v in params.items() if v is not None},
        )
        for window in windows:
            data, valid = source.read(window, names)
            values = _index_values(data, valid, names, index, reflectance, params)
            dst.write(values, 1, window=window)
            if progress is not None:
                progress(1)
    return path
