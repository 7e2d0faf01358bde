"""The water method: picked from the bands, fixed once per raster, applied per pixel."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoseg.errors import BandError, OptionError
from geoseg.masks import HISTOGRAM_BINS, bimodal_threshold
from geoseg.raster import open_raster
from geoseg.water import choose_method, fit_water_rule, raster_reflectance

S2_NAMES = ["blue", "green", "red", "nir", "swir1", "swir2"]


def reflectance_pixels(*pixels: dict[str, float]) -> np.ndarray:
    """uint16 Sentinel-2-style digital numbers (reflectance x 10000), one column per pixel."""
    data = np.array([[p[name] for p in pixels] for name in S2_NAMES], np.float64)
    return np.round(data * 10000).astype(np.uint16)[:, None, :]


OPEN_WATER = dict(blue=0.08, green=0.07, red=0.05, nir=0.03, swir1=0.01, swir2=0.005)
TURBID_FLOOD = dict(blue=0.11, green=0.13, red=0.14, nir=0.15, swir1=0.06, swir2=0.03)
MOIST_CROP = dict(blue=0.04, green=0.08, red=0.05, nir=0.35, swir1=0.07, swir2=0.03)
DRY_SOIL = dict(blue=0.12, green=0.15, red=0.2, nir=0.25, swir1=0.32, swir2=0.25)
CLOUD = dict(blue=0.45, green=0.44, red=0.43, nir=0.42, swir1=0.3, swir2=0.2)


@pytest.mark.parametrize(
    ("names", "method"),
    [
        (["coastal", "blue", "green", "red", "nir", "swir1", "swir2"], "multi"),
        (["swir1", "nir", "red", "green"], "multi"),
        (["red", "green", "blue", "nir"], "ndwi"),
        (["red", "green", "blue"], "hsv"),
    ],
)
def test_the_method_follows_the_bands(names, method):
    assert choose_method(names) == method


def test_bands_that_fit_no_method_are_one_clear_error():
    with pytest.raises(BandError, match="--bands"):
        choose_method(["gray"])


def test_the_multi_index_rule_keeps_turbid_water_and_drops_crops_soil_and_cloud(make_raster):
    pixels = reflectance_pixels(OPEN_WATER, TURBID_FLOOD, MOIST_CROP, DRY_SOIL, CLOUD)
    path = make_raster("s2.tif", data=pixels, descriptions=S2_NAMES)
    with open_raster(path) as source:
        rule = fit_water_rule(source)
        data, valid = source.read(source.dataset.window(*source.bounds), rule.bands)
    assert rule.method == "multi"
    evidence = rule.evidence(data, rule.bands, valid)
    assert evidence.water[0].tolist() == [True, True, False, False, False]
    # Turbid flood water has NDWI < 0: water, but not confident enough for a prompt.
    assert evidence.confident[0].tolist() == [True, False, False, False, False]
    assert evidence.dry[0].tolist() == [False, False, False, True, False]
    assert ((evidence.score > 0) == evidence.water).all()


def test_sentinel2_offset_tags_give_the_same_water(make_raster):
    pixels = reflectance_pixels(OPEN_WATER, TURBID_FLOOD, MOIST_CROP, DRY_SOIL)
    plain = make_raster("plain.tif", data=pixels, descriptions=S2_NAMES)
    shifted = make_raster("l2a.tif", data=pixels + 1000, descriptions=S2_NAMES)
    with rasterio.open(shifted, "r+") as dst:
        dst.update_tags(BOA_ADD_OFFSET_B3="-1000")
    masks = []
    for path in (plain, shifted):
        with open_raster(path) as source:
            rule = fit_water_rule(source)
            data, valid = source.read(source.dataset.window(*source.bounds), rule.bands)
            masks.append(rule.evidence(data, rule.bands, valid).water)
    np.testing.assert_array_equal(masks[0], masks[1])
    with open_raster(shifted) as source:
        assert raster_reflectance(source).offset["green"] == pytest.approx(-0.1)


def test_uint8_imagery_has_no_known_reflectance(make_raster):
    path = make_raster(
        "naip.tif", bands=4, dtype="uint8", descriptions=["red", "green", "blue", "nir"]
    )
    with open_raster(path) as source:
        assert not raster_reflectance(source).known


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(-1, 1, HISTOGRAM_BINS + 1)
    return np.histogram(np.clip(values, -1, 1), bins=edges)[0], (edges[:-1] + edges[1:]) / 2


def test_otsu_only_where_the_histogram_has_two_modes():
    rng = np.random.default_rng(0)
    land = rng.normal(-0.3, 0.1, 95_000)
    lakes = rng.normal(0.4, 0.1, 5_000)
    threshold = bimodal_threshold(*_histogram(np.concatenate([land, lakes])), upper_above=0)
    assert -0.1 < threshold < 0.3
    assert bimodal_threshold(*_histogram(rng.normal(-0.2, 0.15, 100_000)), upper_above=0) is None
    # Two modes of land (crops and bare soil) are not water and land: no split.
    soils = np.concatenate([rng.normal(-0.6, 0.05, 50_000), rng.normal(-0.25, 0.1, 50_000)])
    assert bimodal_threshold(*_histogram(soils), upper_above=0) is None


def test_a_raster_without_water_gets_the_physical_threshold_not_otsus(make_raster):
    rng = np.random.default_rng(3)
    ndwi = rng.uniform(-0.5, -0.1, (64, 64))
    green = np.round(1000 * (1 + ndwi)).astype(np.uint16)
    nir = np.round(1000 * (1 - ndwi)).astype(np.uint16)
    path = make_raster("prairie.tif", data=np.stack([green, nir]), descriptions=["green", "nir"])
    with open_raster(path) as source:
        auto = fit_water_rule(source)
        otsu = fit_water_rule(source, threshold="otsu")
        data, valid = source.read(source.dataset.window(*source.bounds), auto.bands)
    assert (auto.method, auto.threshold, auto.how) == ("ndwi", 0.0, "fixed, not bimodal")
    assert not auto.evidence(data, auto.bands, valid).water.any()
    assert otsu.evidence(data, otsu.bands, valid).water.mean() > 0.3


def test_the_rule_is_pointwise(make_raster):
    rng = np.random.default_rng(5)
    data = rng.integers(1, 4000, (6, 40, 40)).astype(np.uint16)
    path = make_raster("noise.tif", data=data, descriptions=S2_NAMES)
    with open_raster(path) as source:
        rule = fit_water_rule(source)
        block, valid = source.read(source.dataset.window(*source.bounds), rule.bands)
    whole = rule.evidence(block, rule.bands, valid).water
    top = rule.evidence(block[:, :17], rule.bands, valid[:17]).water
    np.testing.assert_array_equal(whole[:17], top)


def test_the_multi_index_rule_takes_no_threshold(make_raster):
    path = make_raster("s2.tif", data=reflectance_pixels(OPEN_WATER), descriptions=S2_NAMES)
    with open_raster(path) as source:
        with pytest.raises(OptionError, match="no threshold"):
            fit_water_rule(source, "multi", 0.2)
        assert fit_water_rule(source, "auto", 0.2).method == "mndwi"
