from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from geoseg.errors import InputFileError, MissingCRSError
from geoseg.raster import open_raster


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_read_window_values_and_padding(make_raster, dtype):
    path = make_raster(bands=2, width=20, dtype=dtype, nodata=0)
    with open_raster(path, "red=1,nir=2") as src:
        data, valid = src.read(Window(10, 15, 16, 16))
        assert data.dtype == np.dtype(dtype) and data.shape == (2, 16, 16)
        # inside: the source window; past the edge: nodata, invalid
        import rasterio

        with rasterio.open(path) as raw:
            expected = raw.read(window=Window(10, 15, 10, 5))
        np.testing.assert_array_equal(data[:, :5, :10], expected)
        assert (data[:, 5:, :] == 0).all() and (data[:, :, 10:] == 0).all()
        assert valid[:5, :10].all() and not valid[5:, :].any() and not valid[:, 10:].any()
        nir, _ = src.read(Window(0, 0, 2, 2), names=["nir"])
        np.testing.assert_array_equal(nir[0], expected_band(path, 2)[:2, :2])


def expected_band(path, band):
    import rasterio

    with rasterio.open(path) as raw:
        return raw.read(band)


def test_nodata_and_internal_mask(make_raster):
    data = np.full((3, 8, 8), 7, dtype=np.uint8)
    data[:, 0, 0] = 0  # all bands nodata -> invalid
    data[0, 1, 1] = 0  # one band 0 -> still valid
    with open_raster(make_raster("nd.tif", data=data, nodata=0)) as src:
        _, valid = src.read(Window(0, 0, 8, 8))
    assert not valid[0, 0] and valid[1, 1] and valid.sum() == 63

    mask = np.ones((8, 8), dtype=bool)
    mask[2:4, 2:4] = False
    with open_raster(
        make_raster("m.tif", data=np.full((1, 8, 8), 3, np.uint8), internal_mask=mask)
    ) as src:
        _, valid = src.read(Window(0, 0, 8, 8))
    np.testing.assert_array_equal(valid, mask)


def test_float_nan_is_invalid(make_raster):
    data = np.ones((1, 4, 4), dtype=np.float32)
    data[0, 0, 0] = np.nan
    with open_raster(make_raster("f.tif", data=data, nodata=np.nan)) as src:
        _, valid = src.read(Window(0, 0, 4, 4))
    assert not valid[0, 0] and valid.sum() == 15


def test_geographic_and_warped(make_raster):
    transform = Affine(0.001, 0, -74.6, 0, -0.001, -8.3)
    path = make_raster("geo.tif", width=40, crs="EPSG:4326", transform=transform, dtype="uint8")
    with open_raster(path, "rgbn", dst_crs="EPSG:32718") as src:
        assert src.crs.to_epsg() == 32718
        assert src.res[0] == pytest.approx(110, rel=0.05)
    # Far from the projection's central meridian the footprint turns (15 degrees here):
    # corners of the warped grid fall outside it and must read invalid, not as zeros.
    arctic = Affine(0.01, 0, -30.0, 0, -0.01, 70.0)
    path = make_raster("arctic.tif", width=40, crs="EPSG:4326", transform=arctic, dtype="uint8")
    with open_raster(path, "rgbn", dst_crs="EPSG:3413") as src:
        _, valid = src.read(Window(0, 0, src.width, src.height))
        assert valid.any() and not valid.all()
        assert valid[src.height // 2, src.width // 2]


def test_errors(tmp_path, make_raster):
    with pytest.raises(InputFileError, match="no such file"):
        open_raster(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    with pytest.raises(InputFileError, match="bad.tif"):
        open_raster(bad)
    with pytest.raises(MissingCRSError, match="no CRS"):
        open_raster(make_raster("nocrs.tif", crs=None))


def test_another_projs_database_is_named_not_blamed_on_the_crs(make_raster, tmp_path):
    """Inside QGIS, PROJ_DATA points at QGIS's PROJ; its proj.db has another layout."""
    import os
    import sqlite3
    import subprocess
    import sys

    other = tmp_path / "other-proj"
    other.mkdir()
    with sqlite3.connect(other / "proj.db") as db:
        db.execute("CREATE TABLE metadata (key TEXT, value TEXT)")
        db.executemany(
            "INSERT INTO metadata VALUES (?, ?)",
            [("DATABASE.LAYOUT.VERSION.MAJOR", "1"), ("DATABASE.LAYOUT.VERSION.MINOR", "0")],
        )
    env = {**os.environ, "PROJ_DATA": str(other)}
    env.pop("PROJ_LIB", None)
    command = ["reproject", str(make_raster()), "-o", str(tmp_path / "out.tif")]
    result = subprocess.run(
        [sys.executable, "-m", "geoseg", *command, "--dst-crs", "EPSG:4326"],
        env=env,
        capture_output=True,
        text=True,
    )
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "another PROJ installation" in line
    assert f"unset PROJ_DATA (PROJ_DATA={other})" in line and "not a CRS" not in line
