"""Blend weights, the row-band accumulator and the streaming GeoTIFF/COG writers."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.classes import WATER
from geoseg.stitch import (
    BlendWeights,
    ChipBlender,
    StripWriter,
    ramp,
    tiled_profile,
    write_cog,
)
from geoseg.styles import colormap, write_class_metadata
from geoseg.windows import TileGrid

TRANSFORM = Affine(2.0, 0, 300000.0, 0, -2.0, 4000000.0)


def test_ramps_of_neighbours_sum_to_one_and_stay_positive():
    up = ramp(16)
    assert np.all(up > 0) and np.all(up < 1)
    np.testing.assert_allclose(up + up[::-1], 1.0, atol=1e-12)


@pytest.mark.parametrize("overlap", [0, 7, 16, 40])
def test_blend_weights_cover_every_pixel_with_total_one(overlap):
    grid = TileGrid(150, 97, TRANSFORM, None, 64, overlap)
    weights = BlendWeights(grid)
    total = np.zeros((grid.step * (grid.n_rows - 1) + 64, grid.step * (grid.n_cols - 1) + 64))
    for tile in grid:
        w = weights(tile)
        assert w.min() > 0, "no pixel may lose all its weight, raster edges included"
        r0, c0 = int(tile.window.row_off), int(tile.window.col_off)
        total[r0 : r0 + 64, c0 : c0 + 64] += w
    total = total[: grid.height, : grid.width]
    expected = np.outer(weights.total_rows(0, grid.height), weights.total_cols())
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    if overlap <= grid.step:  # at most two chips overlap: the ramps make a partition of unity
        np.testing.assert_allclose(total, 1.0, rtol=1e-6)


@pytest.mark.parametrize("overlap", [0, 8, 20])
def test_blender_matches_a_whole_raster_weighted_average(overlap):
    grid = TileGrid(90, 70, TRANSFORM, None, 32, overlap)
    rng = np.random.default_rng(0)
    weights = BlendWeights(grid)
    padded = (grid.step * (grid.n_rows - 1) + 32, grid.step * (grid.n_cols - 1) + 32)
    numerator = np.zeros((2, *padded))
    denominator = np.zeros(padded)
    blender = ChipBlender(grid, channels=2)
    result = np.full((2, grid.height, grid.width), np.nan)
    for tile in grid:
        probs = rng.random((2, 32, 32)).astype(np.float32)
        r0, c0 = int(tile.window.row_off), int(tile.window.col_off)
        numerator[:, r0 : r0 + 32, c0 : c0 + 32] += probs * weights(tile)
        denominator[r0 : r0 + 32, c0 : c0 + 32] += weights(tile)
        top, left, finished = blender.add(tile, probs)
        rows, cols = finished.shape[1:]
        assert np.isnan(result[:, top : top + rows, left : left + cols]).all(), "emitted twice"
        result[:, top : top + rows, left : left + cols] = finished
    expected = (numerator / denominator)[:, : grid.height, : grid.width]
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    # held in memory: overlap rows across the width and one chip's overlap columns
    assert blender._below.shape == (2, overlap, padded[1])
    assert blender._right.shape == (2, 32, overlap)


def test_blender_refuses_chips_out_of_order():
    grid = TileGrid(90, 70, TRANSFORM, None, 32, 8)
    blender = ChipBlender(grid, channels=1)
    with pytest.raises(ValueError, match="out of grid order"):
        blender.add(grid.tile(0, 1), None)


def test_strip_writer_writes_uneven_strips_in_whole_blocks(tmp_path):
    height, width = 1100, 70
    expected = (np.arange(height * width) % 251).astype(np.uint8).reshape(1, height, width)
    profile = tiled_profile(
        dict(
            driver="GTiff",
            count=1,
            dtype="uint8",
            width=width,
            height=height,
            crs="EPSG:32614",
            transform=TRANSFORM,
        )
    )
    with rasterio.open(tmp_path / "strips.tif", "w", **profile) as dst:
        writer = StripWriter(dst, block=512)
        top = 0
        for rows in (100, 300, 7, 400, 293):
            writer.write(top, expected[:, top : top + rows])
            top += rows
        writer.close()
    with rasterio.open(tmp_path / "strips.tif") as src:
        np.testing.assert_array_equal(src.read(), expected)


def test_write_cog_keeps_colours_tags_and_builds_overviews(tmp_path):
    mask = np.zeros((1, 1200, 1100), np.uint8)
    mask[:, 100:600, 200:700] = 1
    mask[:, :10] = 255
    profile = tiled_profile(
        dict(
            driver="GTiff",
            count=1,
            dtype="uint8",
            width=1100,
            height=1200,
            crs="EPSG:32614",
            transform=TRANSFORM,
            nodata=255,
        )
    )
    with rasterio.open(tmp_path / "tmp.tif", "w", **profile) as dst:
        dst.write(mask)
        write_class_metadata(dst, WATER)
    write_cog(tmp_path / "tmp.tif", tmp_path / "cog.tif")
    with rasterio.open(tmp_path / "cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.overviews(1) == [2, 4]
        assert cog.block_shapes[0] == (512, 512)
        assert cog.nodata == 255
        assert cog.colormap(1)[1] == colormap(WATER)[1]
        assert "water" in cog.tags()["GEOSEG_CLASSES"]
        np.testing.assert_array_equal(cog.read(), mask)
        # nearest overviews keep class ids: no blended values
        assert set(np.unique(cog.read(1, out_shape=(300, 275)))) <= {0, 1, 255}
