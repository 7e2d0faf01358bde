"""Stitching chip predictions into one raster: blend weights, a streaming chip blender
and GeoTIFF strip writers, finalised as Cloud Optimized GeoTIFFs.

Overlapping chips are blended with cosine ramps that run only across the overlap with a
neighbouring chip, so every pixel of the raster gets a positive total weight and the
weights of two neighbours sum to one across their overlap (no seams, no edge fading).
Chips are blended as they stream in; only the overlap rows below the current chip row
(over the raster's width) and the overlap right of the current chip are held, so memory
does not grow with the raster's height and only by ``overlap`` rows with its width.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from geoseg.atomic import remove_all as remove_all  # re-exported: scratch clean-up
from geoseg.atomic import temporary_name
from geoseg.windows import Tile, TileGrid

log = logging.getLogger(__name__)

#: Block size of the temporary and final GeoTIFFs (pixels).
BLOCK_SIZE = 512


def ramp(overlap: int) -> np.ndarray:
    """Rising cosine weights (overlap,) float64 in (0, 1); ``ramp + ramp[::-1] == 1``."""
    if overlap <= 0:
        return np.zeros(0)
    return np.sin(0.5 * math.pi * (np.arange(overlap) + 0.5) / overlap) ** 2


def axis_weights(size: int, overlap: int, *, before: bool, after: bool) -> np.ndarray:
    """Weights (size,) along one axis of a chip; ramps only towards existing neighbours."""
    weights = np.ones(size)
    up = ramp(overlap)
    if before and overlap:
        weights[:overlap] = up
    if after and overlap:
        weights[size - overlap :] = up[::-1]
    return weights


class BlendWeights:
    """Separable blend weights of every chip of a grid, cached by edge position."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self._cache: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def rows(self, row: int) -> np.ndarray:
        return axis_weights(
            self.grid.size, self.grid.overlap, before=row > 0, after=row < self.grid.n_rows - 1
        )

    def cols(self, col: int) -> np.ndarray:
        return axis_weights(
            self.grid.size, self.grid.overlap, before=col > 0, after=col < self.grid.n_cols - 1
        )

    def __call__(self, tile: Tile) -> np.ndarray:
        """Weights (size, size) float32 of ``tile``."""
        key = (
            tile.row > 0,
            tile.row < self.grid.n_rows - 1,
            tile.col > 0,
            tile.col < self.grid.n_cols - 1,
        )
        weights = self._cache.get(key)
        if weights is None:
            weights = np.outer(self.rows(tile.row), self.cols(tile.col)).astype(np.float32)
            self._cache[key] = weights
        return weights

    def total_cols(self) -> np.ndarray:
        """Sum of the column weights of all chips at each raster column (width,)."""
        return self._total(self.grid.width, self.grid.n_cols, self.cols)

    def total_rows(self, start: int, stop: int) -> np.ndarray:
        """Sum of the row weights of all chips at raster rows ``start:stop``."""
        return self._total(self.grid.height, self.grid.n_rows, self.rows)[start:stop]

    def _total(self, extent: int, count: int, weights_of: Callable[[int], np.ndarray]):
        step, size = self.grid.step, self.grid.size
        total = np.zeros(step * (count - 1) + size)
        for i in range(count):
            total[i * step : i * step + size] += weights_of(i)
        return total[:extent]


class ChipBlender:
    """Blends chip predictions streamed in grid order, holding only what is unfinished.

    Feed every chip of the grid, row by row and left to right, to ``add``; each call
    returns the part of the raster that no later chip touches (the chip's top-left
    ``step`` x ``step`` pixels, more at the last row and column) with its blended
    probabilities. Held in memory: the overlap rows below the current chip row over the
    raster's width, and the overlap columns right of the current chip.
    """

    def __init__(self, grid: TileGrid, channels: int, first_row: int = 0) -> None:
        self.grid = grid
        self.channels = channels
        self.weights = BlendWeights(grid)
        keep = grid.size - grid.step
        # Chips reach past the right edge; the carry is wide enough to hold them whole.
        padded = grid.step * (grid.n_cols - 1) + grid.size
        # Contributions of earlier chip rows to the overlap rows of the current one. A chip
        # reads its columns of it before writing its own share for the next row there, and
        # the next chip reads only columns to the right of those, so one buffer serves both.
        self._below = np.zeros((channels, keep, padded), np.float32)
        self._right = np.zeros((channels, grid.size, keep), np.float32)
        self._row_totals = self.weights.total_rows(0, grid.height).astype(np.float32)
        self._col_totals = self.weights.total_cols().astype(np.float32)
        # With at most two chips over any pixel the cosine ramps already sum to one.
        self._unit_totals = bool(
            np.all(self._row_totals == 1.0) and np.all(self._col_totals == 1.0)
        )
        # Starting at a later chip row blends the rows it finishes exactly as a full pass
        # would, once it starts early enough to see every chip over them (``margin_rows``).
        self._expected = (first_row, 0)

    def add(self, tile: Tile, probabilities: np.ndarray | None) -> tuple[int, int, np.ndarray]:
        """Add a chip's probabilities (channels, size, size); None for a chip with no
        valid pixel. Returns (first row, first col, probabilities (C, rows, cols)) of the
        finished part of the raster.

        Writable float32 probabilities are blended in place (no copy of the chip): they
        hold the blend afterwards, and the finished part returned is a view of them.
        """
        grid, step, size = self.grid, self.grid.step, self.grid.size
        if (tile.row, tile.col) != self._expected:
            raise ValueError(
                f"chip {(tile.row, tile.col)} added out of grid order; expected {self._expected}"
            )
        keep = size - step
        x0 = tile.col * step
        if probabilities is None:
            block = np.zeros((self.channels, size, size), np.float32)
        elif probabilities.dtype == np.float32 and probabilities.flags.writeable:
            block = np.multiply(probabilities, self.weights(tile), out=probabilities)
        else:
            block = np.multiply(probabilities, self.weights(tile), dtype=np.float32)
        if keep:
            if tile.col > 0:
                block[:, :, :keep] += self._right
            # Columns left of ``keep`` took their share of the carry with the previous chip.
            start = 0 if tile.col == 0 else keep
            block[:, :keep, start:] += self._below[:, :, x0 + start : x0 + size]
            self._below[:, :, x0 : x0 + size] = block[:, step:]
            self._right[...] = block[:, :, step:]
        last_row, last_col = tile.row == grid.n_rows - 1, tile.col == grid.n_cols - 1
        y0 = tile.row * step
        rows = min(size if last_row else step, grid.height - y0)
        cols = min(size if last_col else step, grid.width - x0)
        finished = block[:, :rows, :cols]
        if not self._unit_totals:
            finished = finished / np.outer(
                self._row_totals[y0 : y0 + rows], self._col_totals[x0 : x0 + cols]
            )
        if last_col:
            self._expected = (tile.row + 1, 0)
        else:
            self._expected = (tile.row, tile.col + 1)
        return y0, x0, finished


def margin_rows(grid: TileGrid) -> int:
    """Chip rows above a chip row whose chips reach into the rows that row finishes."""
    return math.ceil(grid.overlap / grid.step)


def finished_rows(grid: TileGrid, first: int, stop: int) -> tuple[int, int]:
    """(first raster row, number of rows) that chip rows ``first:stop`` finish in a blend."""
    top = first * grid.step
    bottom = grid.height if stop >= grid.n_rows else min(stop * grid.step, grid.height)
    return top, bottom - top


class StripWriter:
    """Writes horizontal strips of rows, in order, to a tiled GeoTIFF in whole block rows.

    Rows are gathered in one buffer of a block row until it is full, so every block is
    written once and compressed once.
    """

    def __init__(self, dataset: rasterio.io.DatasetWriter, block: int = BLOCK_SIZE) -> None:
        self.dataset = dataset
        self.block = block
        self._buffer = np.empty((dataset.count, block, dataset.width), dataset.dtypes[0])
        self._filled = 0
        self.next_row = 0

    def write(self, row: int, strip: np.ndarray) -> None:
        """Queue ``strip`` (bands, rows, width) that starts at raster row ``row``."""
        if row != self.next_row + self._filled:
            raise ValueError(f"strip at row {row} written out of order")
        done = 0
        while done < strip.shape[1]:
            rows = min(self.block - self._filled, strip.shape[1] - done)
            self._buffer[:, self._filled : self._filled + rows] = strip[:, done : done + rows]
            self._filled += rows
            done += rows
            if self._filled == self.block:
                self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        window = Window(0, self.next_row, self.dataset.width, self._filled)
        self.dataset.write(self._buffer[:, : self._filled], window=window)
        self.next_row += self._filled
        self._filled = 0


def tiled_profile(profile: dict, **overrides) -> dict:
    """A tiled, compressed GeoTIFF profile for a temporary file on ``profile``'s grid."""
    out = dict(profile)
    out.update(
        driver="GTiff",
        tiled=True,
        blockxsize=BLOCK_SIZE,
        blockysize=BLOCK_SIZE,
        # Temporary files: ZSTD at level 1 compresses masks four times faster than deflate.
        compress="zstd",
        zstd_level=1,
        bigtiff="if_safer",
    )
    out.update(overrides)
    return out


def write_cog(
    src: str | Path | rasterio.io.DatasetReader,
    dst: str | Path,
    *,
    resampling: str = "nearest",
    compress: str = "LZW",
    predictor: bool = False,
) -> Path:
    """Copy a raster to ``dst`` as a Cloud Optimized GeoTIFF with overviews.

    ``resampling`` names the overview resampling (nearest for class masks, average for
    probabilities). Colour table, tags, nodata and band descriptions are kept. LZW is
    the default: on class masks it is as small as DEFLATE and several times faster.
    """
    options = dict(
        COMPRESS=compress.upper(),
        BLOCKSIZE=BLOCK_SIZE,
        OVERVIEWS="IGNORE_EXISTING",
        OVERVIEW_RESAMPLING=resampling.upper(),
        RESAMPLING=resampling.upper(),
        BIGTIFF="IF_SAFER",
        # The backend is done when the COG is written: two threads compress its blocks
        # (the same bytes, about 10% faster on a 4096 px mask; benchmarks/gdal_compare.py).
        NUM_THREADS="2",
    )
    if predictor:
        options["PREDICTOR"] = "YES"
    rasterio.shutil.copy(src, str(dst), driver="COG", **options)
    return Path(dst)


def scratch_path(final: Path) -> Path:
    """A hidden temporary name beside ``final`` for intermediate files."""
    return temporary_name(final)


def row_bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """(first row, number of rows) of consecutive strips of at most ``rows`` rows."""
    for top in range(0, height, rows):
        yield top, min(rows, height - top)
