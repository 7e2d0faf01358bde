from __future__ import annotations

import pytest
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import OptionError
from geoseg.windows import Length, TileGrid, tile_grid

UTM = CRS.from_epsg(32614)
TRANSFORM = Affine(0.3, 0.0, 400000.1, 0.0, -0.3, 5200000.7)


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap", "rows", "cols"),
    [(64, 64, 64, 0, 1, 1), (100, 64, 32, 8, 3, 4), (65, 10, 32, 0, 1, 3), (1, 1, 512, 64, 1, 1)],
)
def test_grid_counts_cover_every_pixel(width, height, size, overlap, rows, cols):
    grid = TileGrid(width, height, TRANSFORM, UTM, size, overlap)
    assert (grid.n_rows, grid.n_cols) == (rows, cols)
    covered = [[0] * width for _ in range(height)]
    for tile in grid:
        assert tile.shape == (size, size)  # edge chips keep the full size
        for r in range(int(tile.window.row_off), min(int(tile.window.row_off) + size, height)):
            for c in range(int(tile.window.col_off), min(int(tile.window.col_off) + size, width)):
                covered[r][c] += 1
    assert all(all(count >= 1 for count in row) for row in covered)


def test_tiles_step_by_size_minus_overlap_from_origin():
    grid = TileGrid(200, 200, TRANSFORM, UTM, 64, 16)
    offsets = [(int(t.window.row_off), int(t.window.col_off)) for t in grid]
    assert offsets[:4] == [(0, 0), (0, 48), (0, 96), (0, 144)]
    assert grid.tile(3, 2).window.row_off == 144


def test_chip_transform_is_parent_offset_exactly():
    grid = TileGrid(5000, 5000, TRANSFORM, UTM, 512, 64)
    tile = grid.tile(9, 7)
    x, y = TRANSFORM @ (7 * 448, 9 * 448)
    assert tile.transform.c == x and tile.transform.f == y  # exact, no drift
    assert tile.transform[:4] == TRANSFORM[:4] or tile.transform.a == TRANSFORM.a
    # The chip's pixel (0, 0) is the parent's pixel (row_off, col_off), to the bit.
    assert tile.transform @ (0, 0) == TRANSFORM @ (tile.window.col_off, tile.window.row_off)
    assert tile.transform @ (511, 300) == TRANSFORM @ (7 * 448 + 511, 9 * 448 + 300)


def test_tile_bounds_and_name():
    grid = TileGrid(100, 100, Affine(10, 0, 1000, 0, -10, 2000), UTM, 50, 0)
    tile = grid.tile(1, 0)
    assert tile.bounds == (1000.0, 1000.0, 1500.0, 1500.0)
    assert tile.name("scene") == "scene_r001_c000"


@pytest.mark.parametrize(("overlap", "size"), [(64, 64), (-1, 64), (0, 0)])
def test_bad_overlap_or_size(overlap, size):
    with pytest.raises(OptionError):
        TileGrid(100, 100, TRANSFORM, UTM, size, overlap)


def test_lengths_in_metres():
    assert Length.parse("2560m").to_pixels(10.0, UTM) == 256
    assert Length.parse("2.56km").to_pixels(10.0, UTM) == 256
    assert Length.parse("512").to_pixels(10.0, UTM) == 512
    with pytest.raises(OptionError, match="geographic"):
        Length.parse("2560m").to_pixels(0.001, CRS.from_epsg(4326))
    with pytest.raises(OptionError):
        Length.parse("big")


def test_tile_grid_from_open_raster(make_raster):
    from geoseg.raster import open_raster

    with open_raster(make_raster(width=100, height=80, transform=Affine(5, 0, 0, 0, -5, 0))) as src:
        grid = tile_grid(src, "160m", "40m")
    assert (grid.size, grid.overlap, grid.step) == (32, 8, 24)
