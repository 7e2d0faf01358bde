"""The spectral backend on tiny rasters with known water, through geoseg's plugin manager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.backend import ChipBatch
from geoseg.errors import BackendError, BandError, OptionError
from geoseg.plugins import backend_info, create_backend
from geoseg.raster import open_raster
from geoseg.windows import tile_grid

TRANSFORM = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4100000.0)  # 2 m pixels, 4 m2 each


def write(path: Path, data: np.ndarray, names: tuple[str, ...], nodata=None) -> Path:
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs="EPSG:32614",
        transform=TRANSFORM,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    return path


def green_nir(ndwi: np.ndarray) -> np.ndarray:
    """uint16 green and nir bands whose NDWI is ``ndwi`` (to rounding)."""
    total = 2000.0
    green = np.round(total * (1 + ndwi) / 2)
    return np.stack([green, total - green]).astype(np.uint16)


def predict_window(backend, source, window_size: int, names=None) -> np.ndarray:
    """Class ids of the whole raster predicted as one chip of ``window_size``."""
    names = names or backend.loaded_capabilities().bands or source.band_names
    (tile,) = tile_grid(source, window_size, 0)
    chip = source.read_chip(tile, names)
    batch = ChipBatch(
        chip.data[None].astype(np.float32),
        chip.valid[None],
        tuple(names),
        (tile,),
        source=source.path,
    )
    probabilities = backend.predict(batch)
    assert probabilities.shape == (1, 2, window_size, window_size)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    return probabilities[0].argmax(axis=0)[: source.height, : source.width]


@pytest.fixture
def river(tmp_path):
    """A 48x48 raster: water (NDWI 0.2..0.6) in a 10-pixel meandering band, land -0.4..-0.1."""
    rows, cols = np.mgrid[0:48, 0:48]
    centre = 24 + 8 * np.sin(cols / 7.0)
    water = np.abs(rows - centre) < 5
    rng = np.random.default_rng(1)
    ndwi = np.where(water, rng.uniform(0.2, 0.6, water.shape), rng.uniform(-0.4, -0.1, water.shape))
    path = write(tmp_path / "river.tif", green_nir(ndwi), ("green", "nir"))
    return path, water


def test_spectral_is_registered_through_its_entry_point():
    info = backend_info("spectral")
    assert info.distribution == "geoseg-spectral"
    assert info.plugin == "spectral"


def test_water_where_ndwi_exceeds_the_threshold(river):
    path, water = river
    backend = create_backend("spectral", ["threshold=0"])
    with open_raster(path) as source:
        backend.begin_raster(source)
        mask = predict_window(backend, source, 48)
    assert backend.classes().names == ("background", "water")
    np.testing.assert_array_equal(mask == 1, water)


def test_otsu_threshold_is_computed_once_for_the_whole_raster(tmp_path):
    # Left half land (NDWI -0.5..-0.3), right half water (0.3..0.5): Otsu over the
    # raster falls between the modes, so a chip holding only water is all water (a
    # per-chip Otsu threshold would split it in two).
    ndwi = np.concatenate(
        [
            np.tile(np.linspace(-0.5, -0.3, 32), (64, 1)),
            np.tile(np.linspace(0.3, 0.5, 32), (64, 1)),
        ],
        axis=1,
    )
    path = write(tmp_path / "halves.tif", green_nir(ndwi), ("green", "nir"))
    backend = create_backend("spectral")
    with open_raster(path) as source:
        backend.begin_raster(source)
        assert -0.05 < backend.threshold < 0.05  # the middle of the gap between the modes
        tiles = [t for t in tile_grid(source, 16, 0) if t.col == 3]  # cols 48..63: water
        chips = [source.read_chip(t, ("green", "nir")) for t in tiles]
        batch = ChipBatch(
            np.stack([c.data for c in chips]).astype(np.float32),
            np.stack([c.valid for c in chips]),
            ("green", "nir"),
            tuple(tiles),
        )
        assert (backend.predict(batch).argmax(axis=1) == 1).all()


def test_chips_agree_with_one_big_chip_pixel_for_pixel(river):
    path, _ = river
    backend = create_backend("spectral", ["softness=0.05"])
    with open_raster(path) as source:
        backend.begin_raster(source)
        whole = predict_window(backend, source, 48)
        for tile in tile_grid(source, 20, 6):
            chip = source.read_chip(tile, ("green", "nir"))
            batch = ChipBatch(
                chip.data[None].astype(np.float32), chip.valid[None], ("green", "nir"), (tile,)
            )
            ids = backend.predict(batch)[0].argmax(axis=0)
            window = tile.window
            r0, c0 = int(window.row_off), int(window.col_off)
            inside = ids[: 48 - r0, : 48 - c0]
            np.testing.assert_array_equal(inside, whole[r0 : r0 + 20, c0 : c0 + 20])


def test_nodata_is_never_water(tmp_path):
    data = green_nir(np.full((16, 16), 0.5))
    data[:, :4, :] = 0
    path = write(tmp_path / "nodata.tif", data, ("green", "nir"), nodata=0)
    backend = create_backend("spectral", ["threshold=0.1", "softness=0.1"])
    with open_raster(path) as source:
        backend.begin_raster(source)
        (tile,) = tile_grid(source, 16, 0)
        chip = source.read_chip(tile, ("green", "nir"))
        probabilities = backend.predict(
            ChipBatch(
                chip.data[None].astype(np.float32), chip.valid[None], ("green", "nir"), (tile,)
            )
        )
    assert (probabilities[0, 1, :4] == 0).all()
    assert (probabilities[0, 1, 4:] > 0.9).all()


def test_ndvi_gives_vegetation_and_hsv_finds_blue_water(tmp_path):
    rows = np.arange(16)[:, None].repeat(16, axis=1)
    vegetation = rows < 8
    nir = np.where(vegetation, 3000, 1000).astype(np.uint16)
    red = np.where(vegetation, 500, 1000).astype(np.uint16)
    path = write(tmp_path / "ndvi.tif", np.stack([red, nir]), ("red", "nir"))
    backend = create_backend("spectral", ["index=ndvi", "threshold=0.2"])
    assert backend.loaded_capabilities().bands == ("nir", "red")
    assert backend.classes().names == ("background", "vegetation")
    with open_raster(path) as source:
        backend.begin_raster(source)
        np.testing.assert_array_equal(predict_window(backend, source, 16) == 1, vegetation)

    blue_water = np.stack(
        [
            np.where(vegetation, 20, 120),
            np.where(vegetation, 90, 110),
            np.where(vegetation, 160, 90),
        ]
    ).astype(np.uint8)  # top: dark blue water; bottom: grey-brown land
    path = write(tmp_path / "rgb.tif", blue_water, ("red", "green", "blue"))
    backend = create_backend("spectral", ["index=hsv", "threshold=0.5"])
    with open_raster(path) as source:
        backend.begin_raster(source)
        np.testing.assert_array_equal(predict_window(backend, source, 16) == 1, vegetation)


def test_cleanup_removes_small_components_in_square_metres(tmp_path):
    ndwi = np.full((32, 32), -0.5)
    ndwi[2:4, 2:4] = 0.5  # 4 px = 16 m2: removed by min_size=20m2
    ndwi[10:20, 10:20] = 0.5  # 100 px = 400 m2: kept
    ndwi[14, 14] = -0.5  # one-pixel hole: filled
    path = write(tmp_path / "blobs.tif", green_nir(ndwi), ("green", "nir"))
    backend = create_backend("spectral", ["threshold=0", "min_size=20m2", "fill_holes=4"])
    with open_raster(path) as source:
        backend.begin_raster(source)
        mask = predict_window(backend, source, 32) == 1
    expected = np.zeros((32, 32), bool)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(mask, expected)


def test_missing_band_is_one_clear_line(river, tmp_path):
    path, _ = river
    backend = create_backend("spectral", ["index=mndwi", "threshold=0"])
    with open_raster(path) as source, pytest.raises(BandError) as caught:
        backend.begin_raster(source)
    message = str(caught.value)
    assert "\n" not in message
    assert "index mndwi needs band 'swir1'" in message and "--option index=ndwi" in message


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["threshold=1.5"], "threshold 1.5 is outside the normalised differences' range [-1, 1]"),
        (["index=ndwi", "threshold=1.5"], "threshold 1.5 is outside ndwi's range [-1, 1]"),
        (
            ["index=ndbi"],
            "option index: must be one of 'auto', 'multi', 'ndwi', 'mndwi', 'ndvi', 'hsv'",
        ),
        (["softness=-1"], "softness must be >= 0"),
        (["min_size=lots"], "min_size 'lots' must be a number of pixels"),
        (["saturation=0.5,0.2"], "saturation must be LOW,HIGH"),
        (["class_name=background"], "class_name must be a name other than background"),
    ],
)
def test_bad_options_name_the_field(pairs, message):
    with pytest.raises(OptionError) as caught:
        create_backend("spectral", pairs)
    assert message in str(caught.value)


def test_otsu_needs_begin_raster_and_the_backend_does_not_train(tmp_path):
    backend = create_backend("spectral")
    batch = ChipBatch(
        np.ones((1, 2, 4, 4), np.float32), np.ones((1, 4, 4), bool), ("green", "nir"), ()
    )
    with pytest.raises(BackendError, match="begin_raster"):
        backend.predict(batch)
    assert create_backend("spectral", ["threshold=0.1"]).predict(batch).shape == (1, 2, 4, 4)
    assert backend.prompt_settings() is None
    assert not backend.capabilities().trains
    with pytest.raises(BackendError, match="does not train"):
        backend.train(None, None)
