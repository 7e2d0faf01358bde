"""Shared fixtures: tiny GeoTIFFs made on demand, and the real samples in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NAIP = SHARED_DATA / "naip_rgbn_2020.tif"
LANDSAT = SHARED_DATA / "landsat_pucallpa_2020.tif"
LANDSAT_BANDS = "swir1=1,nir=2,red=3,green=4"
EXAMPLE_NAIP = REPO / "examples" / "data" / "naip_rgbn_2020.tif"


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32614",
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
    internal_mask: np.ndarray | None = None,
    **profile,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    transform = transform or Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)
    options = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    options.update(profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **options) as dst:
        dst.write(data)
        if descriptions:
            for i, name in enumerate(descriptions, start=1):
                dst.set_band_description(i, name)
        if internal_mask is not None:
            dst.write_mask(np.where(internal_mask, 255, 0).astype(np.uint8))
    return path


@pytest.fixture
def make_raster(tmp_path):
    """Factory: ``make_raster(name="r.tif", bands=4, size=64, dtype="uint8", crs=..., ...)``.

    Pixel values are a deterministic function of band, row and column
    (``band * 1000 + row * size + col``, wrapped to the dtype), so tests can check that a
    chip holds exactly the source window it claims to.
    """

    def factory(
        name: str = "raster.tif",
        *,
        bands: int = 4,
        width: int = 64,
        height: int | None = None,
        dtype: str = "uint16",
        crs: str | None = "EPSG:32614",
        transform: Affine | None = None,
        nodata: float | None = None,
        data: np.ndarray | None = None,
        **kwargs,
    ) -> Path:
        height = height or width
        if data is None:
            b, r, c = np.meshgrid(
                np.arange(bands), np.arange(height), np.arange(width), indexing="ij"
            )
            values = (b * 1000 + r * width + c).astype(np.int64)
            if np.dtype(dtype).kind == "u":
                values = values % (np.iinfo(dtype).max) + 1  # never 0: 0 is a common nodata
            data = values.astype(dtype)
        return write_raster(
            tmp_path / name, data, crs=crs, transform=transform, nodata=nodata, **kwargs
        )

    return factory


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def invoke(runner):
    """Run ``geoseg ARGS...`` in-process and return the click Result."""
    from geoseg.cli import cli

    def run(*args, expect: int | None = 0):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"geoseg {' '.join(map(str, args))} exited {result.exit_code}, expected "
                f"{expect}\n{result.output}\n{result.stderr if result.stderr_bytes else ''}"
                f"\n{result.exc_info if result.exception else ''}"
            )
        return result

    return run


def requires_samples():
    return pytest.mark.skipif(not NAIP.exists(), reason="../shared/data samples not present")
