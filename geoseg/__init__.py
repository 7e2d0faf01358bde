"""geoseg: turn orthoimagery and satellite rasters into georeferenced river and land-cover masks."""

from __future__ import annotations

__version__ = "0.1.0"

from geoseg.bands import BandMap, band_map
from geoseg.classes import ClassInfo, ClassMap
from geoseg.errors import GeosegError
from geoseg.raster import RasterSource, open_raster
from geoseg.windows import Tile, TileGrid, tile_grid

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
