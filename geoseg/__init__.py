"""geoseg: turn orthoimagery and satellite rasters into georeferenced river and land-cover masks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it. Imported on first use (PEP 562), so
#: ``geoseg --help`` and ``geoseg backends`` do not pay for rasterio and numpy.
_EXPORTS = {
    "BandMap": "geoseg.bands",
    "band_map": "geoseg.bands",
    "ClassInfo": "geoseg.classes",
    "ClassMap": "geoseg.classes",
    "GeosegError": "geoseg.errors",
    "RasterSource": "geoseg.raster",
    "open_raster": "geoseg.raster",
    "Tile": "geoseg.windows",
    "TileGrid": "geoseg.windows",
    "tile_grid": "geoseg.windows",
}

if TYPE_CHECKING:
    from geoseg.bands import BandMap, band_map
    from geoseg.classes import ClassInfo, ClassMap
    from geoseg.errors import GeosegError
    from geoseg.raster import RasterSource, open_raster
    from geoseg.windows import Tile, TileGrid, tile_grid


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "BandMap",
    "ClassInfo",
    "ClassMap",
    "GeosegError",
    "RasterSource",
    "Tile",
    "TileGrid",
    "__version__",
    "band_map",
    "open_raster",
    "tile_grid",
]
