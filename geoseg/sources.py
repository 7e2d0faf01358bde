"""What a source can be, and what rasterio opens for it.

A source is the text a user gives a command in place of a raster file:

- a local raster file (``naip.tif``);
- a remote raster: ``https://`` / ``http://`` URLs, ``s3://``, ``gs://`` and ``az://``
  paths (read through GDAL's ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, so only
  the blocks a window needs are fetched, with range requests), or a ``/vsi...`` path;
- a band stack of one file per band: ``green=B03.jp2,nir=B08.jp2,swir1=B11.jp2``, a stack
  file (``.yaml``/``.yml``/``.json`` with ``bands: {green: B03.jp2, ...}`` and optionally
  ``resolution`` and ``resampling``), a Sentinel-2 SAFE folder (or its ``IMG_DATA`` or
  granule folder) or a Landsat scene folder of per-band files;
- a STAC Item (local JSON file or URL, read with pystac): the assets are picked by their
  ``eo:bands`` common name (or asset key) and read as a band stack with each band's
  ``raster:bands`` scale and offset; a STAC ItemCollection (or search result) is a batch
  of items, one source ``items.json#<item id>`` each.

``resolve`` turns a source into a ``ResolvedSource``: the path rasterio opens (the file,
a VSI path, or a VRT document held in memory for stacks, so no stacked copy of the pixels
is ever written) and the band names. Bands of different resolutions are put on the grid of
the finest band (or ``resolution``, in CRS units) with ``resampling``; reads stay windowed.

``pathlib.Path`` collapses the ``//`` of a URL (``https:/host/a.tif``); ``source_path``
gives a path that keeps it, and every function here accepts either form.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import Any
from xml.sax.saxutils import escape

from geoseg.bands import BAND_PRESETS, KNOWN_BAND_NAMES
from geoseg.errors import BandError, InputFileError, OptionError

#: URL scheme -> GDAL virtual file system.
REMOTE_SCHEMES = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}

#: GDAL settings for reading COGs over HTTP, unless the environment sets them already.
#: No directory listing on open (a COG needs none, and S3/HTTP listings are slow),
#: neighbouring ranges merged, retries for 429/5xx.
#: CPL_VSIL_CURL_ALLOWED_EXTENSIONS stays unset so URLs without .tif (signed, ?query) open.
GDAL_HTTP_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}

#: A bounded cache of fetched ranges for each remote file, set only while one is opened
#: (``remote_open_settings``). GDAL gives every file opened for reading while VSI_CACHE is
#: on a cache of its own, local files too, where it only duplicates the system's page
#: cache: set for a whole run, it held up to 64 MB more per local source (a predict on an
#: 8192 px NAIP scene peaked at 415 MB instead of 300; benchmarks/predict_memory.py).
REMOTE_FILE_CACHE = {"VSI_CACHE": "TRUE", "VSI_CACHE_SIZE": str(64 << 20)}

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
STACK_SUFFIXES = (".yaml", ".yml", ".json")

#: STAC ``eo:bands`` common names -> geoseg band names (see ``geoseg.bands``).
COMMON_NAMES = {
    "coastal": "coastal",
    "blue": "blue",
    "green": "green",
    "red": "red",
    "nir": "nir",
    "nir08": "nir08",
    "nir09": "watervapour",
    "cirrus": "cirrus",
    "swir16": "swir1",
    "swir22": "swir2",
    "pan": "pan",
    "lwir11": "tirs1",
    "lwir12": "tirs2",
}

#: Sentinel-2 band ids (B01..B12, B8A) -> geoseg names, in the ``sentinel2`` preset's order.
SENTINEL2_BANDS = dict(
    zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
        BAND_PRESETS["sentinel2"],
        strict=True,
    )
)
#: Landsat band numbers -> geoseg names: Landsat 8/9 (OLI) and 4-7 (TM/ETM+).
LANDSAT_OLI_BANDS = {
    1: "coastal",
    2: "blue",
    3: "green",
    4: "red",
    5: "nir",
    6: "swir1",
    7: "swir2",
    8: "pan",
    9: "cirrus",
    10: "tirs1",
    11: "tirs2",
}
LANDSAT_TM_BANDS = {1: "blue", 2: "green", 3: "red", 4: "nir", 5: "swir1", 6: "tirs1", 7: "swir2"}
#: Landsat Collection 2 Level-2 surface reflectance: reflectance = DN * scale + offset.
LANDSAT_C2_SR = (2.75e-5, -0.2)
#: Sentinel-2 from processing baseline 04.00: reflectance = (DN - 1000) / 10000.
SENTINEL2_N0400 = (1e-4, -0.1)

#: Stacks list their bands in wavelength order (Sentinel-2's, then Landsat's extra bands).
_BAND_ORDER: dict[str, int] = {}
for _name in (*BAND_PRESETS["sentinel2"], *BAND_PRESETS["landsat8"]):
    _BAND_ORDER.setdefault(_name, len(_BAND_ORDER))

_URL = re.compile(r"^(?P<vsi>/vsi\w+/)?(?P<scheme>[a-z][a-z0-9+]*):/+(?P<rest>.*)$", re.I)
_S2_FILE = re.compile(r"(?:^|_)(B(?:0[1-9]|1[0-2]|8A))(?:_(\d+)m)?\.(?:jp2|tiff?)$", re.I)
_LANDSAT_FILE = re.compile(r"^(L[COTE]0\d)_.*?_(SR_)?B(\d{1,2})\.tiff?$", re.I)


# Source text ----------------------------------------------------------------------------


class SourcePath(PosixPath):
    """A source that is not a plain local raster, as a path: its text keeps a URL's ``//``
    (``pathlib`` collapses it) and its ``stem`` is ``output_stem`` (a STAC item's id, a
    URL's file name), so code that names outputs after ``path.stem`` names them right."""

    def __str__(self) -> str:
        return source_text(super().__str__())

    @property
    def stem(self) -> str:
        return output_stem(str(self))

    def __fspath__(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"SourcePath({str(self)!r})"


def source_text(source: str | os.PathLike) -> str:
    """The source as the user wrote it: a URL's ``//`` restored after ``Path`` ate it."""
    text = os.fspath(source) if not isinstance(source, str) else source
    found = _URL.match(text)
    if found and found["scheme"].lower() in REMOTE_SCHEMES:
        return f"{found['vsi'] or ''}{found['scheme']}://{found['rest']}"
    return text


def is_url(source: str | os.PathLike) -> bool:
    """True for ``https://``, ``s3://`` ... sources (not ``/vsi...`` paths)."""
    found = _URL.match(source_text(source))
    return bool(found and not found["vsi"] and found["scheme"].lower() in REMOTE_SCHEMES)


def is_remote(source: str | os.PathLike) -> bool:
    """True for sources GDAL reads over the network (URLs and ``/vsi...`` paths)."""
    text = source_text(source)
    return is_url(text) or (text.startswith("/vsi") and not text.startswith("/vsimem/"))


def remote_open_settings() -> dict[str, str]:
    """GDAL settings to open a remote file with: ``REMOTE_FILE_CACHE`` where the
    environment does not set them."""
    return {key: value for key, value in REMOTE_FILE_CACHE.items() if key not in os.environ}


def source_path(source: str | os.PathLike) -> Path:
    """``source`` as a path: a ``SourcePath`` for ``is_special`` sources, else a ``Path``."""
    if isinstance(source, SourcePath):
        return source
    return SourcePath(source_text(source)) if is_special(source) else Path(source)


def gdal_path(source: str | os.PathLike) -> str:
    """The path GDAL opens: URLs mapped to ``/vsicurl/``, ``/vsis3/`` ..., others as given."""
    text = source_text(source)
    if not is_url(text):
        return text
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        return f"/vsicurl/{text}"
    return f"{REMOTE_SCHEMES[scheme]}{rest}"


def _split_fragment(text: str) -> tuple[str, str | None]:
    """``items.json#id`` -> (``items.json``, ``id``)."""
    base, sep, fragment = text.partition("#")
    return (base, fragment or None) if sep else (text, None)


def _suffix(text: str) -> str:
    path = urllib.parse.urlsplit(text).path if is_url(text) else text
    return Path(path).suffix.lower()


def is_band_spec(text: str) -> bool:
    """True for ``name=file,name=file`` (a stack given inline, not a band-index mapping)."""
    parts = [p.partition("=") for p in text.split(",")]
    return all(sep and name.strip() and value.strip() for name, sep, value in parts) and not all(
        value.strip().isdigit() for _, _, value in parts
    )


def source_kind(source: str | os.PathLike) -> str:
    """``raster``, ``stack`` (band files, stack file, band folder) or ``stac``."""
    text = source_text(source)
    base, _ = _split_fragment(text)
    if not is_remote(text) and is_band_spec(text) and not Path(text).exists():
        return "stack"
    suffix = _suffix(base)
    if suffix in STACK_SUFFIXES:
        if is_remote(base):
            return "stac" if suffix == ".json" else "stack"
        path = Path(base)
        if path.is_file():
            return "stac" if suffix == ".json" and _looks_like_stac(path) else "stack"
        return "stac" if suffix == ".json" else "stack"
    if not is_remote(text) and Path(text).is_dir() and band_folder_files(Path(text)):
        return "stack"
    return "raster"


def _looks_like_stac(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # reported by the STAC reader, naming the file
    if not isinstance(data, dict):
        return False
    features = data.get("features") if data.get("type") == "FeatureCollection" else [data]
    # GeoJSON that is not STAC (prompts, labels) has no assets.
    return "stac_version" in data or any(
        isinstance(f, dict) and ("assets" in f or "stac_version" in f) for f in features or []
    )


def expand_source(source: str | os.PathLike) -> list[Path]:
    """The sources one argument stands for: one per item of a STAC ItemCollection, else itself."""
    text = source_text(source)
    if source_kind(text) != "stac" or _split_fragment(text)[1] is not None:
        return [source_path(text)]
    data = _read_json(text)
    if data.get("type") == "FeatureCollection":
        items = [f for f in data.get("features") or [] if isinstance(f, dict)]
        if not items:
            raise InputFileError(f"{text}: STAC ItemCollection holds no items")
        return [source_path(f"{text}#{item.get('id')}") for item in items]
    return [source_path(text)]


def absolute_source(source: str | os.PathLike) -> str:
    """``source`` with its local paths made absolute (for workers in other folders); URLs,
    ``/vsi`` paths and an ItemCollection's ``#item`` stay as they are."""
    text = source_text(source)
    if is_remote(text):
        return text
    if source_kind(text) == "stack" and is_band_spec(text):
        parts = (p.partition("=") for p in text.split(","))
        return ",".join(f"{n}={absolute_source(v.strip())}" for n, _, v in parts)
    return os.path.abspath(os.path.expanduser(text))


def local_files(source: str | os.PathLike) -> list[str]:
    """The local paths a source reads first (a band stack's files; none for a URL)."""
    text = source_text(source)
    if is_remote(text):
        return []
    if source_kind(text) == "stack" and is_band_spec(text):
        parts = (p.partition("=") for p in text.split(","))
        return [f for _, _, v in parts for f in local_files(v.strip())]
    return [_split_fragment(text)[0]]


def is_special(source: str | os.PathLike) -> bool:
    """True for sources that are not a local file or folder of rasters."""
    return is_remote(source) or source_kind(source) != "raster"


def output_stem(source: str | os.PathLike) -> str:
    """The file-name stem of a source's outputs: the STAC item id, a URL's file name, a
    band folder's or stack file's name, or the common prefix of a stack's file names."""
    text = source_text(source)
    base, fragment = _split_fragment(text)
    if fragment:
        return _safe_stem(fragment)
    kind = source_kind(text)
    if kind == "stac":
        item = _read_json(base)
        return _safe_stem(str(item.get("id") or _url_stem(base)))
    if kind == "stack" and is_band_spec(text):
        stems = [
            Path(source_text(v.strip())).stem
            for _, _, v in (p.partition("=") for p in text.split(","))
        ]
        common = os.path.commonprefix(stems)
        if len(set(stems)) > 1 and not common.endswith(("_", "-", ".")):
            common = re.sub(r"[^_.-]*$", "", common)  # T33UUP_20230801_B -> T33UUP_20230801_
        return _safe_stem(common.rstrip("_-. ") or "stack")
    if not is_remote(text) and Path(text).is_dir():
        folder = Path(text).resolve()
        for part in (folder, *folder.parents):
            if part.suffix.upper() == ".SAFE":
                return _safe_stem(part.stem)
        if folder.name in ("IMG_DATA", "R10m", "R20m", "R60m"):
            return _safe_stem(
                folder.parent.name if folder.name == "IMG_DATA" else folder.parents[1].name
            )
        return _safe_stem(folder.name)
    return _safe_stem(_url_stem(base))


def _url_stem(text: str) -> str:
    path = urllib.parse.urlsplit(text).path if is_url(text) else text
    return Path(path).stem or "source"


def _safe_stem(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "source"


# Resolving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackBand:
    """One band of a stack: a name, the file (GDAL path) and band index, its scale/offset."""

    name: str
    path: str
    band: int = 1
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class ResolvedSource:
    """What rasterio opens for a source (``path``: file, VSI path or VRT XML) and its bands.

    ``text`` is the source as given (for messages), ``band_spec`` what names the bands
    (``geoseg.bands.band_map``): the user's ``--bands`` for one raster, the stack's names
    for a stack. ``resolution`` is the stack's grid size when it was asked for.
    """

    text: str
    path: str
    band_spec: Any = None
    stacked: bool = False
    resolution: float | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.text) or "/vsi" in self.path


def resolve(
    source: str | os.PathLike,
    *,
    bands: Any = None,
    resolution: float | None = None,
    resampling: str = "bilinear",
) -> ResolvedSource:
    """What rasterio opens for ``source``; see the module docstring.

    For a stack, ``bands`` may list band names (``green,nir,swir1``) to read only those;
    a preset or ``name=index`` mapping renames the stack's bands as for any raster.
    ``resolution`` (CRS units) and ``resampling`` set a stack's grid; a single raster
    ignores them here (``geoseg.raster`` warps it).
    """
    text = source_text(source)
    kind = source_kind(text)
    if kind == "raster":
        return ResolvedSource(text, gdal_path(text), bands)
    from geoseg.bands import BandMap

    select = _selection(bands)
    xml, names = _stack_vrt(text, select, resolution, resampling)
    band_spec = BandMap(names) if select is not None or not bands else bands
    return ResolvedSource(text, xml, band_spec, True, resolution)


def _selection(bands: Any) -> tuple[str, ...] | None:
    """Band names selected by ``--bands green,nir,swir1`` (not a preset or a mapping)."""
    if not isinstance(bands, str) or "=" in bands or bands.strip().lower() in BAND_PRESETS:
        return None
    names = tuple(n.strip().lower() for n in bands.split(",") if n.strip())
    return names or None


@functools.lru_cache(maxsize=64)
def _stack_vrt(text: str, select, resolution, resampling) -> tuple[str, tuple[str, ...]]:
    stack_bands, options = stack_bands_of(text)
    resolution = resolution if resolution is not None else options.get("resolution")
    resampling = resampling if resampling != "bilinear" else options.get("resampling", resampling)
    if select is not None:
        by_name = {band.name: band for band in stack_bands}
        missing = [name for name in select if name not in by_name]
        if missing:
            raise BandError(
                f"{text}: has no band {', '.join(missing)} (bands: "
                f"{', '.join(by_name)}); choose --bands from those"
            )
        stack_bands = [by_name[name] for name in select]
    xml = stack_vrt(stack_bands, resolution=resolution, resampling=resampling, source=text)
    return xml, tuple(band.name for band in stack_bands)


def stack_bands_of(text: str) -> tuple[list[StackBand], dict]:
    """The bands of a stack source and its options (``resolution``, ``resampling``)."""
    base, fragment = _split_fragment(text)
    kind = source_kind(text)
    if kind == "stac":
        return stac_bands(_stac_item(base, fragment), text), {}
    if is_band_spec(text):
        bands = []
        for part in text.split(","):
            name, _, value = part.partition("=")
            bands.append(StackBand(name.strip().lower(), _band_file(value.strip(), None, text)))
        return bands, {}
    if not is_remote(text) and Path(text).is_dir():
        return band_folder_bands(Path(text)), {}
    return _stack_file(text)


def _band_file(value: str, folder: str | None, source: str) -> str:
    """The GDAL path of a band file given in a stack, relative to the stack file's folder."""
    value = source_text(value)
    if is_remote(value):
        return gdal_path(value)
    if folder is not None and not os.path.isabs(value):
        if is_url(folder):
            return gdal_path(urllib.parse.urljoin(folder, value))
        value = os.path.join(folder, value)
    path = Path(value)
    if not path.is_file():
        raise InputFileError(f"{source}: band file {value} does not exist; check the path")
    return str(path.resolve())


def _stack_file(text: str) -> tuple[list[StackBand], dict]:
    import yaml

    raw = _read_text(text)
    try:
        data = yaml.safe_load(raw)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise InputFileError(
            f"{text}: not a readable stack file ({exc.problem}); see geoseg.sources"
        ) from None
    bands = data.get("bands") if isinstance(data, dict) else None
    if not isinstance(bands, Mapping) or not bands:
        raise InputFileError(
            f"{text}: a stack file needs 'bands:' mapping band names to files, e.g. "
            f"bands: {{green: B03.jp2, nir: B08.jp2}}"
        )
    folder = text.rsplit("/", 1)[0] + "/" if is_url(text) else str(Path(text).parent)
    stack = [
        StackBand(str(name).strip().lower(), _band_file(str(value), folder, text))
        for name, value in bands.items()
    ]
    options = {}
    if data.get("resolution") is not None:
        try:
            options["resolution"] = float(data["resolution"])
        except (TypeError, ValueError):
            raise InputFileError(f"{text}: resolution must be a number") from None
    if data.get("resampling") is not None:
        options["resampling"] = str(data["resampling"])
    return stack, options


# Band folders ---------------------------------------------------------------------------


def band_folder_files(folder: Path) -> dict[str, Path]:
    """Band name -> file for a Sentinel-2 SAFE / IMG_DATA / granule folder or a Landsat scene
    folder; empty when the folder is neither. The finest resolution of each band wins."""
    candidates = [folder]
    for pattern in ("GRANULE/*/IMG_DATA", "IMG_DATA", "*/IMG_DATA"):
        candidates += sorted(folder.glob(pattern))
    found: dict[str, tuple[int, Path]] = {}
    for base in candidates:
        files = [p for p in base.iterdir() if p.is_file()] if base.is_dir() else []
        for sub in ("R10m", "R20m", "R60m"):
            if (base / sub).is_dir():
                files += [p for p in (base / sub).iterdir() if p.is_file()]
        for path in files:
            s2 = _S2_FILE.search(path.name)
            if s2 and not path.name.startswith("."):
                name = SENTINEL2_BANDS[s2.group(1).upper()]
                metres = int(s2.group(2) or 0)
                if name not in found or metres < found[name][0]:
                    found[name] = (metres, path)
                continue
            landsat = _LANDSAT_FILE.match(path.name)
            if landsat:
                table = (
                    LANDSAT_OLI_BANDS
                    if landsat.group(1).upper() in ("LC08", "LC09", "LO08", "LO09")
                    else LANDSAT_TM_BANDS
                )
                name = table.get(int(landsat.group(3)))
                if name and name not in found:
                    found[name] = (0, path)
        if found:
            break
    ordered = sorted(found, key=lambda n: _BAND_ORDER.get(n, len(_BAND_ORDER)))
    return {name: found[name][1] for name in ordered}


def band_folder_bands(folder: Path) -> list[StackBand]:
    """The stack of a band folder, with reflectance scale/offset where the product says it."""
    files = band_folder_files(folder)
    if not files:
        raise InputFileError(
            f"{folder}: holds no Sentinel-2 (…_B03.jp2) or Landsat (…_SR_B3.TIF) band files"
        )
    text = str(folder.resolve())
    baseline = re.search(r"_N(\d{4})_", text)
    bands = []
    for name, path in files.items():
        scale = offset = None
        if _LANDSAT_FILE.match(path.name) and _LANDSAT_FILE.match(path.name).group(2):
            scale, offset = LANDSAT_C2_SR
        elif _S2_FILE.search(path.name) and baseline and int(baseline.group(1)) >= 400:
            scale, offset = SENTINEL2_N0400
        bands.append(StackBand(name, str(path.resolve()), 1, scale, offset))
    return bands


# STAC -----------------------------------------------------------------------------------


def _http_timeout() -> float:
    try:
        return float(os.environ.get("GDAL_HTTP_TIMEOUT", 30))
    except ValueError:
        return 30.0


def _read_text(text: str) -> str:
    """The text of a local file or of a URL (http, https), or an ``InputFileError``."""
    if is_url(text):
        if not text.lower().startswith(("http://", "https://")):
            raise InputFileError(
                f"{text}: geoseg reads STAC and stack files over http(s) only; download it first"
            )
        try:
            with urllib.request.urlopen(text, timeout=_http_timeout()) as response:
                return response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise InputFileError(f"{text}: HTTP {exc.code} {exc.reason}; check the URL") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputFileError(
                f"{text}: cannot be fetched ({reason}); check the URL and the network"
            ) from None
    path = Path(text)
    if not path.is_file():
        raise InputFileError(f"{text}: no such file; check the path")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{text}: cannot be read ({exc}); check the file") from None


@functools.lru_cache(maxsize=32)
def _read_json(text: str) -> dict:
    try:
        data = json.loads(_read_text(text))
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{text}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{text}: not a STAC Item or ItemCollection")
    return data


def _stac_item(base: str, item_id: str | None):
    """The pystac Item of ``base`` (an Item, or item ``item_id`` of an ItemCollection)."""
    import pystac

    data = _read_json(base)
    if data.get("type") == "FeatureCollection":
        features = [f for f in data.get("features") or [] if isinstance(f, dict)]
        if item_id is None and len(features) > 1:
            raise InputFileError(
                f"{base}: an ItemCollection of {len(features)} items; this command reads one, "
                f"e.g. {base}#{features[0].get('id')} (predict and tile take the whole batch)"
            )
        chosen = [f for f in features if item_id is None or f.get("id") == item_id]
        if not chosen:
            raise InputFileError(f"{base}: holds no STAC item {item_id!r}")
        data = chosen[0]
    elif data.get("type") != "Feature":
        raise InputFileError(
            f"{base}: not a STAC Item or ItemCollection (type {data.get('type')!r})"
        )
    try:
        item = pystac.Item.from_dict(data, preserve_dict=True)
    except (pystac.STACError, KeyError, TypeError, ValueError) as exc:
        raise InputFileError(f"{base}: not a valid STAC item ({exc})") from None
    self_href = base if is_url(base) else str(Path(base).resolve())
    item.set_self_href(self_href)
    return item


def stac_bands(item, source: str) -> list[StackBand]:
    """The single-band raster assets of a STAC item, named by common name or asset key."""
    bands: dict[str, StackBand] = {}
    # COGs before JPEG 2000 copies of the same band (e.g. Earth Search's "green-jp2").
    assets = sorted(item.assets.items(), key=lambda kv: (_suffix(kv[1].href) == ".jp2", kv[0]))
    for key, asset in assets:
        info = asset.to_dict()
        roles = info.get("roles") or ["data"]
        if "data" not in roles or not _is_raster_asset(info):
            continue
        eo = info.get("eo:bands") or info.get("bands") or []
        raster = info.get("raster:bands") or info.get("bands") or []
        if len(eo) > 1 or len(raster) > 1:
            continue  # a multi-band asset (visual RGB); stacks are made of single bands
        eo_band = eo[0] if eo else {}
        common = eo_band.get("common_name") or eo_band.get("eo:common_name")
        candidates = [
            COMMON_NAMES.get(str(common).lower()) if common else None,
            key.lower() if key.lower() in KNOWN_BAND_NAMES else None,
            SENTINEL2_BANDS.get(str(eo_band.get("name", "")).upper()),
        ]
        name = next((c for c in candidates if c and c not in bands), None)
        if name is None:
            continue
        band_info = raster[0] if raster else {}
        bands[name] = StackBand(
            name,
            gdal_path(asset.get_absolute_href() or asset.href),
            1,
            _number(band_info.get("scale")),
            _number(band_info.get("offset")),
            _number(band_info.get("nodata")),
        )
    if not bands:
        raise BandError(
            f"{source}: STAC item {item.id!r} has no single-band raster asset with an "
            f"eo:bands common name geoseg knows (assets: {', '.join(item.assets) or 'none'}); "
            f"use an item with per-band assets (green, nir, swir16 ...)"
        )
    return sorted(bands.values(), key=lambda b: _BAND_ORDER.get(b.name, len(_BAND_ORDER)))


def _is_raster_asset(info: dict) -> bool:
    media = str(info.get("type") or "").lower()
    if media:
        return "tiff" in media or "jp2" in media or "jpeg2000" in media
    return _suffix(str(info.get("href", ""))) in RASTER_SUFFIXES


def _number(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# The VRT --------------------------------------------------------------------------------


def stack_vrt(
    bands: Sequence[StackBand],
    *,
    resolution: float | None = None,
    resampling: str = "bilinear",
    source: str = "the stack",
) -> str:
    """A VRT document (XML text) stacking ``bands`` on one grid, for ``rasterio.open``.

    The grid is the finest band's (or ``resolution`` in CRS units over the same extent);
    every band file must share one CRS. Band descriptions are the names; scale/offset and
    nodata are set per band; the common dtype is the widest of the files'.
    """
    import numpy as np
    import rasterio
    from rasterio.errors import RasterioIOError

    from geoseg.raster import RESAMPLING, gdal_failure

    if resampling.lower() not in RESAMPLING:
        raise OptionError(f"unknown resampling {resampling!r}; use one of {', '.join(RESAMPLING)}")
    if resolution is not None and resolution <= 0:
        raise OptionError(f"--resolution must be positive, got {resolution}")
    grids = []
    for band in bands:
        try:
            with rasterio.open(band.path) as dataset:
                if band.band > dataset.count:
                    raise InputFileError(f"{source}: {band.path} has no band {band.band}")
                grids.append(
                    dict(
                        crs=dataset.crs,
                        transform=dataset.transform,
                        width=dataset.width,
                        height=dataset.height,
                        dtype=dataset.dtypes[band.band - 1],
                        nodata=dataset.nodatavals[band.band - 1],
                        scale=dataset.scales[band.band - 1],
                        offset=dataset.offsets[band.band - 1],
                    )
                )
        except RasterioIOError as exc:
            raise gdal_failure(band.path, exc, what=f"band file of {source}") from None
    crs = {g["crs"].to_wkt() if g["crs"] else None for g in grids}
    if len(crs) != 1 or None in crs:
        raise InputFileError(
            f"{source}: its band files are in different CRSs (or have none); reproject them "
            f"onto one CRS first (geoseg reproject)"
        )
    finest = min(grids, key=lambda g: abs(g["transform"].a))
    origin_x, origin_y = finest["transform"].c, finest["transform"].f
    left, top = origin_x, origin_y
    right = origin_x + finest["transform"].a * finest["width"]
    bottom = origin_y + finest["transform"].e * finest["height"]
    res_x = abs(finest["transform"].a) if resolution is None else float(resolution)
    res_y = abs(finest["transform"].e) if resolution is None else float(resolution)
    width = max(1, math.ceil(round((right - left) / res_x, 6)))
    height = max(1, math.ceil(round((top - bottom) / res_y, 6)))
    dtype = np.result_type(*[np.dtype(g["dtype"]) for g in grids]).name
    gdal_type = _GDAL_TYPES.get(dtype, "Float32")
    wkt = next(iter(crs))
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"  <SRS>{escape(wkt)}</SRS>",
        f"  <GeoTransform>{left!r}, {res_x!r}, 0.0, {top!r}, 0.0, {-res_y!r}</GeoTransform>",
    ]
    for i, (band, grid) in enumerate(zip(bands, grids, strict=True), start=1):
        t = grid["transform"]
        x0 = (t.c - left) / res_x
        y0 = (top - t.f) / res_y
        w = t.a * grid["width"] / res_x
        h = -t.e * grid["height"] / res_y
        nodata = band.nodata if band.nodata is not None else grid["nodata"]
        scale = band.scale if band.scale is not None else grid["scale"]
        offset = band.offset if band.offset is not None else grid["offset"]
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{i}">')
        lines.append(f"    <Description>{escape(band.name)}</Description>")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{_nodata_text(nodata)}</NoDataValue>")
        if offset not in (None, 0.0) or scale not in (None, 1.0):
            lines.append(f"    <Offset>{float(offset or 0.0)!r}</Offset>")
            lines.append(f"    <Scale>{float(1.0 if scale is None else scale)!r}</Scale>")
        lines.append(f'    <ComplexSource resampling="{resampling.lower()}">')
        lines.append(
            f'      <SourceFilename relativeToVRT="0">{escape(band.path)}</SourceFilename>'
        )
        lines.append(f"      <SourceBand>{band.band}</SourceBand>")
        lines.append(
            f'      <SrcRect xOff="0" yOff="0" xSize="{grid["width"]}" ySize="{grid["height"]}"/>'
        )
        lines.append(f'      <DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{w!r}" ySize="{h!r}"/>')
        if nodata is not None:
            lines.append(f"      <NODATA>{_nodata_text(nodata)}</NODATA>")
        lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines)


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def _nodata_text(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(float(value))
