"""Coarse masks: one threshold per raster, morphological cleanup, areas in pixels or m2."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from skimage.filters import threshold_otsu

from geoseg.errors import OptionError
from geoseg.masks import (
    Area,
    area_pixels,
    clean_mask,
    dilate_mask,
    erode_mask,
    index_histogram,
    raster_threshold,
    threshold_mask,
)
from geoseg.raster import open_raster


def _two_level_raster(make_raster, *, nodata_corner: bool = False):
    """green/nir bands: left third water (ndwi ~ 0.5), the rest land (ndwi ~ -0.4)."""
    rng = np.random.default_rng(1)
    green = np.full((60, 90), 40.0)
    nir = np.full((60, 90), 100.0)
    green[:, :30], nir[:, :30] = 120.0, 40.0
    data = np.stack([green, nir]) + rng.normal(0, 4, (2, 60, 90))
    data = np.clip(data, 1, 250).astype(np.uint8)
    if nodata_corner:
        data[:, :10, :10] = 0
    return make_raster(data=data, nodata=0, descriptions=["green", "nir"])


def test_otsu_threshold_separates_water_from_land_over_the_whole_raster(make_raster):
    path = _two_level_raster(make_raster, nodata_corner=True)
    with open_raster(path) as source:
        # Small windows: the threshold must come from all of them together.
        threshold = raster_threshold(source, "ndwi", "otsu", window_size=16)
        counts, centres = index_histogram(source, "ndwi", window_size=16)
        assert counts.sum() == 60 * 90 - 100  # every valid pixel, no nodata
        data, valid = source.read(source.dataset.window(*source.bounds), ["green", "nir"])
    values = (data[0].astype(float) - data[1]) / np.maximum(data[0].astype(float) + data[1], 1)
    water = values[:, :30][valid[:, :30]]
    land = values[:, 30:][valid[:, 30:]]
    # The modes do not overlap: Otsu's threshold is the middle of the gap between them.
    assert land.max() < threshold < water.min()
    assert threshold == pytest.approx((land.max() + water.min()) / 2, abs=0.01)
    assert raster_threshold(source, "ndwi", 0.25) == 0.25
    assert raster_threshold(source, "ndwi", "0.1") == 0.1


def test_sampled_windows_still_find_the_threshold(make_raster):
    path = _two_level_raster(make_raster)
    with open_raster(path) as source:
        sampled = raster_threshold(source, "ndwi", "otsu", window_size=8, max_windows=30)
        full = raster_threshold(source, "ndwi", "otsu", window_size=8)
    assert sampled == pytest.approx(full, abs=0.1)


def test_bad_threshold_and_constant_index(make_raster):
    path = make_raster(data=np.full((2, 8, 8), 50, np.uint8), descriptions=["green", "nir"])
    with open_raster(path) as source:
        with pytest.raises(OptionError, match="--threshold 'half'"):
            raster_threshold(source, "ndwi", "half")
        with pytest.raises(OptionError, match="constant.*--threshold VALUE"):
            raster_threshold(source, "ndwi", "otsu")


def test_threshold_mask_never_marks_nan_or_invalid():
    values = np.array([[0.5, np.nan, -0.2, 0.3]], np.float32)
    valid = np.array([[True, True, True, False]])
    assert threshold_mask(values, 0.0, valid).tolist() == [[True, False, False, False]]


def test_clean_mask_removes_small_components_fills_small_holes_and_respects_valid():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True  # 400 px lake
    mask[12:14, 12:14] = False  # 4 px hole: filled
    mask[15:22, 15:22] = False  # 49 px hole: kept with fill_holes=20
    mask[30:33, 30:33] = True  # 9 px pond: removed with min_size=10
    mask[0:2, 38:40] = True  # 4 px pond at the border: removed
    valid = np.ones_like(mask)
    valid[5:7, 5:25] = False
    cleaned = clean_mask(mask, min_size=10, fill_holes=20, valid=valid)
    assert cleaned[12:14, 12:14].all()
    assert not cleaned[15:22, 15:22].any()
    assert not cleaned[30:33, 30:33].any() and not cleaned[0:2, 38:40].any()
    assert not cleaned[5:7].any()
    assert cleaned[7:25, 5:12].all()
    # Opening removes a one-pixel-wide spur; closing bridges a one-pixel gap.
    spur = np.zeros((20, 20), bool)
    spur[5:15, 5:15] = True
    spur[9, 15:19] = True
    assert not clean_mask(spur, opening=1)[9, 17]
    gap = np.zeros((20, 20), bool)
    gap[5:15, 2:9] = True
    gap[5:15, 10:17] = True
    assert clean_mask(gap, closing=1)[10, 9]
    with pytest.raises(OptionError):
        clean_mask(mask, min_size=-1)


def test_erode_and_dilate_are_euclidean_disks():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = dilate_mask(mask, 3)
    assert grown.sum() == 29  # lattice points within radius 3
    assert erode_mask(grown, 2).tolist() == dilate_mask(mask, 1).tolist()
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    eroded = erode_mask(square, 2)
    assert eroded[7:13, 7:13].all() and eroded.sum() == 36
    # The array border is not a bank: water runs on past a chip edge.
    assert erode_mask(np.ones((5, 5), bool), 3).all()


def test_areas_in_square_metres_need_a_projected_crs():
    assert Area.parse("200") == Area(200.0, "px")
    assert Area.parse("5000m2") == Area(5000.0, "m2")
    assert Area.parse("0.5ha") == Area(5000.0, "m2")
    with pytest.raises(OptionError, match="square metres"):
        Area.parse("lots")

    class Grid:
        res = (5.0, 5.0)
        crs = CRS.from_epsg(26914)
        transform = Affine(5, 0, 0, 0, -5, 0)

    assert area_pixels("5000m2", Grid()) == 200
    assert area_pixels(7, Grid()) == 7
    Grid.crs = CRS.from_epsg(4326)
    with pytest.raises(OptionError, match="geographic.*pixels"):
        area_pixels("5000m2", Grid())


def test_otsu_on_a_histogram_matches_scikit_image_and_splits_clean_gaps_in_the_middle():
    from geoseg.masks import otsu_threshold

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.4, 0.1, 5000), rng.normal(0.3, 0.15, 2000)])
    counts, edges = np.histogram(values, bins=400, range=(-1, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    assert otsu_threshold(counts, centres) == pytest.approx(threshold_otsu(hist=(counts, centres)))
    gap = np.zeros(200)
    gap[20], gap[150] = 500, 300
    centres = np.linspace(-1, 1, 200)
    assert otsu_threshold(gap, centres) == pytest.approx((centres[20] + centres[150]) / 2)
