"""Open GeoTIFFs with named bands and read them window by window.

``RasterSource`` is how every part of geoseg reads imagery: 1 to N bands of uint8,
uint16, int16 or float32, a nodata value or an internal mask, any CRS. Reading is always
windowed, so memory is bounded by the window, never by the raster. With ``dst_crs`` or
``resolution`` the source is warped on the fly (a GDAL warped VRT), still window by window.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from geoseg.bands import BandMap, band_map
from geoseg.errors import InputFileError, MissingCRSError, OptionError, SetupError
from geoseg.windows import Tile

__all__ = [
    "RasterSource",
    "Chip",
    "open_raster",
]

RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
    "mode": Resampling.mode,
    "lanczos": Resampling.lanczos,
}


def resampling_method(name: str | Resampling) -> Resampling:
    if isinstance(name, Resampling):
        return name
    try:
        return RESAMPLING[name.lower()]
    except KeyError:
        raise OptionError(
            f"unknown resampling {name!r}; use one of {', '.join(RESAMPLING)}"
        ) from None


def parse_crs(value: str | CRS | None, *, what: str = "--dst-crs") -> CRS | None:
    """A CRS from ``EPSG:32718``, a bare EPSG code, WKT or PROJ text."""
    if value is None or isinstance(value, CRS):
        return value
    text = str(value).strip()
    if text.isdigit():
        text = f"EPSG:{text}"
    try:
        return CRS.from_user_input(text)
    except (CRSError, ValueError) as exc:
        if "proj.db" in str(exc):
            raise proj_database_error(str(exc), f"{what} {value!r}") from None
        raise OptionError(
            f"{what} {value!r} is not a CRS geoseg understands; use e.g. EPSG:32718"
        ) from None


def proj_database_error(message: str, subject: str) -> SetupError:
    """The error for PROJ failing on its database (``message``), e.g. another PROJ's.

    Inside QGIS (and some conda setups) ``PROJ_DATA``/``PROJ_LIB`` point at the PROJ data
    of another installation, whose ``proj.db`` this PROJ cannot read.
    """
    import re

    found = re.search(r"(\S*proj\.db)", message)
    database = found.group(1) if found else "proj.db"
    reason = (
        "comes from another PROJ installation"
        if "LAYOUT.VERSION" in message
        else ("cannot be read")
    )
    settings = [f"{k}={os.environ[k]}" for k in ("PROJ_DATA", "PROJ_LIB") if os.environ.get(k)]
    hint = (
        f"unset {' and '.join(s.split('=')[0] for s in settings)} ({', '.join(settings)}) so "
        f"geoseg uses its own PROJ data"
        if settings
        else "reinstall pyproj and rasterio in this environment"
    )
    return SetupError(f"{subject}: PROJ's database {database} {reason}; {hint}")


def check_readable(path: str | Path, *, what: str = "raster") -> Path:
    """The path, or an ``InputFileError`` saying why it cannot be read.

    Remote sources, and for rasters band stacks and STAC items (``geoseg.sources``), are
    returned as a ``sources.source_path``; they are checked when opened.
    """
    from geoseg import sources

    if sources.is_remote(path) or (what == "raster" and sources.is_special(path)):
        return sources.source_path(path)
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a {what} file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: permission denied; make the file readable")
    return path


def open_dataset(path: str | Path, *, what: str = "raster", resolved=None):
    """``rasterio.open(path)``, or an ``InputFileError`` naming the file when it is not a
    raster GDAL reads or is cut short; close it (or use it as a context manager).

    ``path`` may be any source of ``geoseg.sources`` (a URL, a band stack, a STAC item);
    ``resolved`` is its ``sources.resolve`` result when the caller has it already.
    """
    from geoseg import sources

    path = check_readable(path, what=what)
    if resolved is None:
        resolved = sources.resolve(path)
    # GDAL decides at open whether a file gets a cache of fetched ranges: remote ones only.
    settings = sources.remote_open_settings() if resolved.remote else {}
    try:
        with rasterio.Env(**settings) if settings else contextlib.nullcontext():
            dataset = rasterio.open(resolved.path)
    except RasterioIOError as exc:
        raise gdal_failure(path, exc, what=what) from None
    try:
        check_complete(dataset, path)
    except BaseException:
        dataset.close()
        raise
    return dataset


def check_complete(dataset, path: str | Path) -> None:
    """Raise ``InputFileError`` when a GeoTIFF's last blocks lie past the end of the file.

    A download or copy cut short keeps its header, so it opens and fails only when the
    missing blocks are read, possibly hours into a run. The block offsets in the header
    tell at once (one look per band, whatever the size of the raster).
    """
    if dataset.driver != "GTiff" or not dataset.count:
        return
    try:
        size = os.path.getsize(path)
    except OSError:
        return
    block_rows, block_cols = dataset.block_shapes[0]
    last = f"{-(-dataset.width // block_cols) - 1}_{-(-dataset.height // block_rows) - 1}"
    for band in {1, dataset.count}:
        offset = dataset.get_tag_item(f"BLOCK_OFFSET_{last}", "TIFF", bidx=band)
        length = dataset.get_tag_item(f"BLOCK_SIZE_{last}", "TIFF", bidx=band)
        if offset and length and int(offset) + int(length) > size:
            raise InputFileError(
                f"{path}: the file is truncated ({size} bytes, its blocks reach to byte "
                f"{int(offset) + int(length)}); download or copy it again"
            )


@contextlib.contextmanager
def read_errors(path: str | Path) -> Iterator[None]:
    """Turn a GDAL read failure (a damaged or truncated file) into ``InputFileError``."""
    try:
        yield
    except RasterioIOError as exc:
        from geoseg import sources

        if sources.is_remote(path) or sources.source_kind(path) != "raster":
            raise gdal_failure(path, exc, what="raster", reading=True) from None
        raise InputFileError(
            f"{path}: cannot read pixels ({_gdal_reason(exc)}); the file is damaged or "
            f"truncated: download or export it again"
        ) from None


@dataclass(frozen=True)
class Chip:
    """Pixels of one tile: ``data`` (bands, rows, cols) and ``valid`` (rows, cols) bool."""

    data: np.ndarray
    valid: np.ndarray
    tile: Tile

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


class RasterSource:
    """An open raster with a name for every band, read window by window.

    Use as a context manager, or call ``close()``. ``crs``, ``transform``, ``width`` and
    ``height`` describe the grid that is read: the file's own, or the warped grid when
    ``dst_crs`` or ``resolution`` are given.
    """

    def __init__(
        self,
        path: str | Path,
        bands: str | BandMap | dict[str, int] | None = None,
        *,
        dst_crs: str | CRS | None = None,
        resolution: float | None = None,
        resampling: str | Resampling = "bilinear",
        require_crs: bool = True,
    ) -> None:
        from geoseg import sources

        self.path = check_readable(path)
        # A band stack is built on the --resolution grid itself instead of warped again.
        resolved = sources.resolve(
            self.path,
            bands=bands,
            resolution=resolution if dst_crs is None else None,
            resampling=resampling.name if isinstance(resampling, Resampling) else resampling,
        )
        if resolved.resolution is not None:
            resolution = None
        bands = resolved.band_spec
        self._file = open_dataset(self.path, resolved=resolved)
        try:
            if require_crs and self._file.crs is None:
                raise MissingCRSError(
                    f"{self.path}: raster has no CRS; assign one first, e.g. "
                    f"gdal_edit.py -a_srs EPSG:32614 {self.path.name}"
                )
            self.band_map = band_map(
                bands,
                self._file.count,
                descriptions=self._file.descriptions,
                colorinterp=[c.name for c in self._file.colorinterp],
                source=str(self.path),
            )
            self._alpha = False
            self.dataset = self._file
            target_crs = parse_crs(dst_crs)
            if target_crs is not None or resolution is not None:
                self.dataset = self._warped(target_crs or self._file.crs, resolution, resampling)
        except BaseException:
            self._file.close()
            raise
        flags = self.dataset.mask_flag_enums[0] if self.dataset.count else []
        self._masked = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        self._nodata = self.dataset.nodata

    def _warped(self, crs: CRS, resolution: float | None, resampling) -> WarpedVRT:
        src = self._file
        if resolution is not None and resolution <= 0:
            raise OptionError(f"--resolution must be positive, got {resolution}")
        transform, width, height = calculate_default_transform(
            src.crs,
            crs,
            src.width,
            src.height,
            *src.bounds,
            resolution=resolution,
        )
        options = dict(
            crs=crs,
            transform=transform,
            width=width,
            height=height,
            resampling=resampling_method(resampling),
        )
        if src.nodata is None and MaskFlags.per_dataset not in src.mask_flag_enums[0]:
            # Without nodata, pixels outside the source would read as valid zeros.
            options["add_alpha"] = True
            self._alpha = True
        return WarpedVRT(src, **options)

    # Grid -------------------------------------------------------------------------------

    @property
    def crs(self) -> CRS | None:
        return self.dataset.crs

    @property
    def transform(self) -> Affine:
        return self.dataset.transform

    @property
    def width(self) -> int:
        return self.dataset.width

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def count(self) -> int:
        return self.band_map.count

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self):
        return self.dataset.bounds

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dataset.dtypes[0])

    @property
    def nodata(self) -> float | None:
        return self._nodata

    @property
    def fill_value(self) -> float:
        """The value that pads chips past the raster edge and fills invalid pixels."""
        return 0 if self._nodata is None else self._nodata

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.band_map.names

    def profile(self, **overrides) -> dict:
        """A GeoTIFF profile for writing rasters on this grid with these bands."""
        profile = dict(
            driver="GTiff",
            dtype=self.dtype.name,
            count=self.count,
            crs=self.crs,
            transform=self.transform,
            width=self.width,
            height=self.height,
            nodata=self._nodata,
        )
        profile.update(overrides)
        return profile

    # Reading ----------------------------------------------------------------------------

    def _inner(self, window: Window) -> tuple[Window, tuple[slice, slice]] | None:
        """The part of ``window`` inside the raster, and where it sits in the window."""
        col0, row0 = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + width, self.width), min(row0 + height, self.height)
        if c1 <= c0 or r1 <= r0:
            return None
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        return inner, (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))

    def read(
        self, window: Window, names: tuple[str, ...] | list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and valid mask of ``window``, which may reach past the raster edge.

        Returns ``data`` (bands, rows, cols) in the source dtype, padded with the fill value
        past the edge, and ``valid`` (rows, cols) bool: False for nodata, masked or padded
        pixels. ``names`` selects bands by name, in that order (default all bands).
        """
        indexes = (
            list(range(1, self.count + 1))
            if names is None
            else self.band_map.indexes(names, source=str(self.path))
        )
        shape = (int(window.height), int(window.width))
        found = self._inner(window)
        if found is not None and (found[0].height, found[0].width) == shape:
            # Inside the raster (most chips): GDAL decodes straight into the chip's array.
            with read_errors(self.path):
                data = self.dataset.read(indexes, window=found[0])
                return data, self._valid(data, found[0])
        data = np.full((len(indexes), *shape), self.fill_value, dtype=self.dtype)
        valid = np.zeros(shape, dtype=bool)
        if found is None:
            return data, valid
        inner, (rows, cols) = found
        with read_errors(self.path):
            block = self.dataset.read(indexes, window=inner)
            data[:, rows, cols] = block
            valid[rows, cols] = self._valid(block, inner)
        return data, valid

    def read_valid(self, window: Window) -> np.ndarray:
        """The valid mask of ``window`` alone (rows, cols) bool."""
        return self.read(window)[1]

    def _valid(self, block: np.ndarray, window: Window) -> np.ndarray:
        if self._alpha:
            # GDAL treats a trailing alpha band as the dataset mask only for 2 and 4 bands.
            return self.dataset.read(self.dataset.count, window=window) > 0
        if self._masked:
            return self.dataset.dataset_mask(window=window) > 0
        valid = None
        if block.dtype.kind == "f":
            valid = ~np.all(np.isnan(block), axis=0)
        if self._nodata is not None and not np.isnan(self._nodata):
            # Band by band on whole planes: several times faster than np.all over axis 0.
            has_data = block[0] != self._nodata
            for band in block[1:]:
                has_data |= band != self._nodata
            valid = has_data if valid is None else valid & has_data
        return valid if valid is not None else np.ones(block.shape[1:], dtype=bool)

    def read_chip(self, tile: Tile, names: tuple[str, ...] | list[str] | None = None) -> Chip:
        data, valid = self.read(tile.window, names)
        return Chip(data, valid, tile)

    # Lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.dataset is not self._file:
            self.dataset.close()
        self._file.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RasterSource({str(self.path)!r}, bands={list(self.band_names)}, "
            f"crs={self.crs.to_string() if self.crs else None}, size={self.width}x{self.height})"
        )


def open_raster(path: str | Path, bands=None, **kwargs) -> RasterSource:
    """Open a raster for windowed reading; see ``RasterSource`` for the arguments."""
    return RasterSource(path, bands, **kwargs)


def gdal_failure(
    path: str | Path, exc: Exception, *, what: str = "raster", reading: bool = False
) -> InputFileError:
    """The one-line error for GDAL failing to open (or, ``reading``, read) ``path``.

    For a remote source it names the URL and says whether it was not found, refused or
    timed out, instead of blaming the file.
    """
    from geoseg import sources

    text = sources.source_text(path)
    reason = _gdal_reason(exc)
    if sources.is_remote(text) or "/vsicurl/" in str(exc) or "HTTP" in str(exc):
        if "404" in str(exc) or "does not exist" in str(exc):
            advice = "not found (HTTP 404); check the URL"
        elif "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            advice = (
                f"the server did not answer in time ({reason}); retry later or raise "
                f"GDAL_HTTP_TIMEOUT"
            )
        elif any(code in str(exc) for code in ("401", "403")):
            advice = f"access denied ({reason}); check the URL's credentials or signature"
        else:
            advice = f"cannot be read over the network ({reason}); check the URL and the network"
        url = text if sources.is_remote(text) else _url_in(str(exc)) or text
        return InputFileError(f"{url}: {advice}")
    if reading:
        return InputFileError(
            f"{text}: cannot read pixels ({reason}); a band file is damaged or truncated: "
            f"download or export it again"
        )
    return InputFileError(
        f"{text}: not a {what} geoseg can read ({reason}); give a GeoTIFF or another GDAL raster"
    )


def _url_in(message: str) -> str | None:
    """The first URL in a GDAL message (a band file of a stack), without its VSI prefix."""
    import re

    found = re.search(r"(https?|s3|gs)://[^\s'\"]+", message)
    return found.group(0).rstrip(":,.") if found else None


def _gdal_reason(exc: Exception) -> str:
    if "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__  # rasterio's read errors keep GDAL's own message there
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    _, band, rest = text.partition(", band ")  # "<file>, band 1: IReadBlock failed ..."
    if band:
        return "band " + rest
    if text.startswith("'") and "' " in text:  # "'<file>' not recognized as ..."
        return text.split("' ", 1)[1]
    return text.split(": ", 1)[-1] if text.startswith(("/", ".")) else text
