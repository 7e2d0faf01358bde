from __future__ import annotations

import pytest

from geoseg.bands import BAND_PRESETS, BandMap, band_map, parse_band_spec
from geoseg.errors import BandError


def test_presets():
    assert band_map("naip", 4).names == ("red", "green", "blue", "nir")
    s2 = band_map("sentinel2", 13)
    assert s2.index("coastal") == 1 and s2.index("nir") == 8 and s2.index("nir08") == 9
    assert s2.index("swir1") == 12 and s2.index("swir2") == 13 and s2.index("cirrus") == 11
    assert len(BAND_PRESETS["sentinel2"]) == 13
    l8 = band_map("landsat8", 7)
    assert l8.names == ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")


def test_explicit_mapping_leaves_other_bands_numbered():
    bands = parse_band_spec("swir1=1,nir=2,green=4", 5)
    assert bands.names == ("swir1", "nir", "band3", "green", "band5")
    assert bands.indexes(["green", "swir1"]) == [4, 1]


@pytest.mark.parametrize("spec", ["red=5", "red=x", "red=1,nir=1", "modis"])
def test_bad_specs(spec):
    with pytest.raises(BandError):
        band_map(spec, 4)


def test_missing_band_names_file_and_fix():
    with pytest.raises(BandError, match=r"scene\.tif has no band named 'swir1'.*--bands"):
        BandMap(("red", "green")).index("swir1", source="scene.tif")


def test_defaults_from_descriptions_then_colorinterp():
    assert band_map(None, 2, descriptions=["nir", "red"]).names == ("nir", "red")
    assert band_map(None, 3, colorinterp=["red", "green", "blue"]).names == ("red", "green", "blue")
    assert band_map(None, 2, descriptions=["foo", None]).names == ("band1", "band2")
