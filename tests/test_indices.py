"""Spectral indices: formulas, NaN for invalid pixels, band lookup by name, windowed arrays."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from geoseg.errors import BandError, OptionError
from geoseg.indices import (
    INDICES,
    compute_index,
    hsv_score,
    index_array,
    index_window,
    required_bands,
)
from geoseg.raster import open_raster


def test_required_bands_and_unknown_index():
    assert required_bands("ndwi") == ("green", "nir")
    assert required_bands("MNDWI") == ("green", "swir1")
    assert set(INDICES) == {"ndwi", "mndwi", "ndvi", "hsv"}
    with pytest.raises(OptionError, match="unknown index 'nbr'.*ndwi"):
        required_bands("nbr")


def test_normalised_differences_by_band_name_with_nan_for_invalid_and_zero_sum():
    green = np.array([[60, 0, 10]], np.uint8)
    nir = np.array([[20, 0, 30]], np.uint8)
    red = np.array([[5, 5, 5]], np.uint8)
    # Band order differs from the formula's: bands are found by name.
    data = np.stack([nir, red, green])
    valid = np.array([[True, True, False]])
    ndwi = compute_index(data, ["nir", "red", "green"], "ndwi", valid)
    assert ndwi.dtype == np.float32
    assert ndwi[0, 0] == pytest.approx(0.5)
    assert np.isnan(ndwi[0, 1])  # 0 / 0
    assert np.isnan(ndwi[0, 2])  # invalid
    ndvi = compute_index(data, ["nir", "red", "green"], "ndvi")
    assert ndvi[0, 0] == pytest.approx(15 / 25)
    # uint8 arithmetic must not wrap around.
    mndwi = compute_index(np.stack([green, nir]), ["green", "swir1"], "mndwi")
    assert mndwi[0, 2] == pytest.approx(-0.5)


def test_float_nan_input_stays_nan():
    data = np.array([[[0.3, np.nan]], [[0.1, 0.2]]], np.float32)
    ndwi = compute_index(data, ["green", "nir"], "ndwi")
    assert ndwi[0, 0] == pytest.approx(0.5)
    assert np.isnan(ndwi[0, 1])


def test_missing_band_names_the_band_and_a_fix():
    data = np.zeros((4, 2, 2), np.uint8)
    with pytest.raises(BandError, match="mndwi needs band 'swir1'.*--index ndwi"):
        compute_index(data, ["red", "green", "blue", "nir"], "mndwi")
    with pytest.raises(BandError, match="needs band 'green'.*--bands"):
        compute_index(data, ["band1", "band2", "band3", "band4"], "ndwi")


def test_hsv_rule_scores_blue_to_cyan_water_high_and_land_low():
    # water blue, cyan water, green grass, brown soil, grey road, black
    rgb = np.array(
        [[[30, 20, 120, 130, 0]], [[60, 90, 140, 100, 0]], [[110, 100, 60, 130, 0]]], np.uint8
    )
    score = hsv_score(rgb)
    assert score.dtype == np.float32
    assert score[0, 0] == 1.0 and score[0, 1] == 1.0
    assert score[0, 2] == 0.0 and score[0, 3] == 0.0 and score[0, 4] == 0.0
    # A narrower hue range drops the cyan pixel; ranges may come as text from the CLI.
    narrow = compute_index(rgb, ["red", "green", "blue"], "hsv", hue="215,260")
    assert narrow[0, 0] == 1.0 and narrow[0, 1] < 1.0
    with pytest.raises(OptionError, match="--saturation"):
        hsv_score(rgb, saturation="0.5")


def test_index_window_and_dask_array_carry_georeferencing(make_raster):
    transform = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 9000.0)
    path = make_raster(bands=4, width=40, height=30, transform=transform, nodata=0)
    with open_raster(path, "naip") as source:
        whole = index_array(source, "ndwi", chunk=16)
        assert whole.chunks == ((16, 14), (16, 16, 8))
        assert whole.dtype == np.float32
        assert whole.attrs["transform"] == tuple(transform)[:6]
        assert "UTM zone 14N" in whole.attrs["crs"]
        assert whole.x.values[0] == 1001.0 and whole.y.values[0] == 8999.0
        values = whole.values
        data, valid = source.read(Window(0, 0, 40, 30), ["green", "nir"])
        assert np.array_equal(
            values, compute_index(data, ["green", "nir"], "ndwi", valid), equal_nan=True
        )
        part = index_window(source, "ndwi", Window(5, 7, 4, 3))
        assert np.array_equal(part.values, values[7:10, 5:9], equal_nan=True)
        assert part.x.values.tolist() == [1011.0, 1013.0, 1015.0, 1017.0]
        assert part.y.values.tolist() == [8985.0, 8983.0, 8981.0]
        assert part.attrs["transform"][2] == 1010.0 and part.attrs["transform"][5] == 8986.0
