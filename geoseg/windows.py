"""Tiles and tile grids: how a raster is cut into square chips with overlap.

Chips start at the raster origin and step by ``size - overlap``. Edge chips keep the
full size and reach past the raster (the reader pads them with nodata), so every chip of
a grid has the same shape and every pixel lies in at least one chip. A chip's transform
is the parent transform composed with an integer pixel offset, so it is exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.errors import OptionError

__all__ = [
    "Tile",
    "Area",
]

#: Block size (pixels) of every window-by-window pass over a raster: index files,
#: reprojection, evaluation, histograms. Square, and a multiple of 16 (GeoTIFF tiles).
BLOCK = 512


def block_windows(width: int, height: int, size: int = BLOCK) -> Iterator[Window]:
    """Windows of at most ``size`` x ``size`` pixels covering a grid, row by row."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


@dataclass(frozen=True)
class _Measure:
    """A length or area given on the command line: pixels, or metric map units."""

    value: float
    unit: str = "px"

    #: The text a value must match: a number and an optional unit.
    PATTERN: ClassVar[re.Pattern[str]]
    #: Unit as typed -> (factor, unit stored).
    UNITS: ClassVar[dict[str, tuple[float, str]]]
    #: What a valid value looks like, for messages.
    EXPECTED: ClassVar[str]

    @classmethod
    def parse(cls, text, *, what: str):
        if isinstance(text, cls):
            return text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            if text < 0:
                raise OptionError(f"{what} {text} must not be negative")
            return cls(float(text), "px")
        match = cls.PATTERN.match(str(text))
        if not match:
            raise OptionError(f"{what} {text!r} must be {cls.EXPECTED}")
        factor, unit = cls.UNITS[(match.group(2) or "px").lower()]
        return cls(float(match.group(1)) * factor, unit)

    def _metres_per_unit(self, crs: CRS | None, advice: str) -> float:
        """Metres per map unit of ``crs``; ``advice`` ends the error for a geographic CRS."""
        if crs is not None and crs.is_geographic:
            raise OptionError(advice)
        return crs.linear_units_factor[1] if crs is not None and crs.is_projected else 1.0

    def __str__(self) -> str:
        return f"{self.value:g}{'' if self.unit == 'px' else self.unit}"


@dataclass(frozen=True)
class Length(_Measure):
    """A length given on the command line: pixels, or metres converted with a resolution."""

    PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(px|m|km)?\s*$", re.IGNORECASE)
    UNITS = {"px": (1.0, "px"), "m": (1.0, "m"), "km": (1000.0, "m")}
    EXPECTED = "a number of pixels (512) or a length in metres (2560m)"

    @classmethod
    def parse(cls, text: str | int | float | Length, *, what: str = "size") -> Length:
        return super().parse(text, what=what)

    def to_pixels(self, resolution: float, crs: CRS | None, *, what: str = "size") -> int:
        """Whole pixels for a grid of ``resolution`` (map units per pixel) in ``crs``."""
        if self.unit == "px":
            if self.value != int(self.value):
                raise OptionError(f"{what} {self.value} must be a whole number of pixels")
            return int(self.value)
        factor = self._metres_per_unit(
            crs,
            f"{what} {self.value:g}m is in metres but the raster's CRS is geographic "
            f"(degrees); give --dst-crs with a projected CRS (e.g. its UTM zone) or a "
            f"size in pixels",
        )
        return max(1, round(self.value / (resolution * factor)))


@dataclass(frozen=True)
class Area(_Measure):
    """An area given on the command line: pixels, or square metres (``m2``, ``ha``, ``km2``)."""

    PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(px|m2|m²|ha|km2)?\s*$", re.IGNORECASE)
    UNITS = {
        "px": (1.0, "px"),
        "m2": (1.0, "m2"),
        "m²": (1.0, "m2"),
        "ha": (1e4, "m2"),
        "km2": (1e6, "m2"),
    }
    EXPECTED = "a number of pixels (200) or an area in square metres (5000m2, 0.5ha)"

    @classmethod
    def parse(cls, text: str | int | float | Area, *, what: str = "--min-size") -> Area:
        return super().parse(text, what=what)

    def to_pixels(self, pixel_area: float, crs: CRS | None, *, what: str = "--min-size") -> int:
        """Whole pixels for pixels of ``pixel_area`` (square map units) in ``crs``."""
        if self.unit == "px":
            return int(math.ceil(self.value))
        factor = self._metres_per_unit(
            crs,
            f"{what} {self.value:g}m2 is in square metres but the raster's CRS is "
            f"geographic (degrees); give the size in pixels, or reproject the raster to "
            f"a projected CRS first (geoseg reproject --dst-crs, e.g. its UTM zone)",
        )
        return int(math.ceil(self.value / (pixel_area * factor * factor)))


@dataclass(frozen=True)
class Tile:
    """One chip of a grid: its window in the parent raster, transform and CRS.

    ``row`` and ``col`` are the chip's position in the grid, not pixel offsets.
    """

    row: int
    col: int
    window: Window
    transform: Affine
    crs: CRS | None

    @property
    def height(self) -> int:
        return int(self.window.height)

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in map units of ``crs``."""
        from rasterio.transform import array_bounds

        return array_bounds(self.height, self.width, self.transform)

    def name(self, stem: str, digits: int = 3) -> str:
        return f"{stem}_r{self.row:0{digits}d}_c{self.col:0{digits}d}"


@dataclass(frozen=True)
class TileGrid:
    """Square chips of ``size`` pixels overlapping by ``overlap`` over a raster grid."""

    width: int
    height: int
    transform: Affine
    crs: CRS | None
    size: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise OptionError(f"chip size must be at least 1 pixel, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise OptionError(
                f"overlap ({self.overlap} px) must be at least 0 and smaller than the chip "
                f"size ({self.size} px)"
            )
        if self.width < 1 or self.height < 1:
            raise OptionError(f"cannot tile an empty raster ({self.width} x {self.height})")

    @property
    def step(self) -> int:
        return self.size - self.overlap

    def _count(self, extent: int) -> int:
        return max(0, math.ceil((extent - self.size) / self.step)) + 1

    @property
    def n_rows(self) -> int:
        return self._count(self.height)

    @property
    def n_cols(self) -> int:
        return self._count(self.width)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def digits(self) -> int:
        """Digits for zero-padded chip names, so names sort in grid order."""
        return max(3, len(str(max(self.n_rows, self.n_cols) - 1)))

    def tile(self, row: int, col: int) -> Tile:
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"tile ({row}, {col}) is outside a {self.n_rows}x{self.n_cols} grid")
        window = Window(col * self.step, row * self.step, self.size, self.size)
        transform = self.transform @ Affine.translation(col * self.step, row * self.step)
        return Tile(row, col, window, transform, self.crs)

    def __iter__(self) -> Iterator[Tile]:
        for row in range(self.n_rows):
            for col in range(self.n_cols):
                yield self.tile(row, col)

    def rows(self) -> Iterator[list[Tile]]:
        """Tiles a grid row at a time, top to bottom."""
        for row in range(self.n_rows):
            yield [self.tile(row, col) for col in range(self.n_cols)]


def tile_grid(dataset, size: int | str | Length = 512, overlap: int | str | Length = 0) -> TileGrid:
    """The tile grid over an open raster (rasterio dataset or ``RasterSource``).

    ``size`` and ``overlap`` are pixels, or metres with an ``m`` suffix converted with the
    raster's resolution (which needs a projected CRS).
    """
    resolution = abs(dataset.transform.a)
    size_px = Length.parse(size, what="chip size").to_pixels(resolution, dataset.crs)
    overlap_px = Length.parse(overlap, what="overlap").to_pixels(
        resolution, dataset.crs, what="overlap"
    )
    return TileGrid(
        dataset.width, dataset.height, dataset.transform, dataset.crs, size_px, overlap_px
    )
