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


# --- Backends for core tests ------------------------------------------------------------
# ``register_backend(*classes)`` registers Backend subclasses with geoseg's plugin manager
# for one test, the way an installed plugin's register_backends hook would, and unregisters
# them afterwards. ``fake_backend`` is a ready-made pointwise binary backend named "fake".


def _fake_backend_class():
    from dataclasses import dataclass

    from geoseg.backend import Backend, Capabilities

    @dataclass(frozen=True)
    class FakeOptions:
        """``threshold``/``scale`` in source units of the first band of the batch."""

        threshold: float = 2048.0
        scale: float = 256.0

        def __post_init__(self) -> None:
            if self.scale <= 0:
                raise ValueError(f"scale must be > 0, got {self.scale}")

    class FakeBackend(Backend):
        """Pointwise binary backend: P(water) = sigmoid((band0 - threshold) / scale).

        Records what the engine handed it: ``rasters`` (one path per begin_raster call),
        ``batch_sizes`` (chips per predict call), ``loaded`` ((model, device) of load).
        """

        name = "fake"
        description = "Test backend: water where the first band exceeds a threshold"
        Options = FakeOptions

        def __init__(self, options=None) -> None:
            super().__init__(options)
            self.rasters: list = []
            self.batch_sizes: list[int] = []
            self.loaded = None

        @classmethod
        def capabilities(cls) -> Capabilities:
            return Capabilities(binary=True, classes=("background", "water"), chip_size=64)

        def load(self, model, device="auto") -> None:
            self.loaded = (model, device)

        def begin_raster(self, source) -> None:
            self.rasters.append(getattr(source, "path", source))

        def predict(self, batch):
            self.batch_sizes.append(len(batch))
            first = batch.images[:, 0].astype(np.float64)
            water = 1.0 / (1.0 + np.exp(-(first - self.options.threshold) / self.options.scale))
            return np.stack([1.0 - water, water], axis=1).astype(np.float32)

    return FakeBackend


@pytest.fixture
def register_backend():
    """Factory: ``register_backend(BackendCls, ..., name="plugin-name")`` -> plugin name.

    Registers the classes through a real ``register_backends`` hookimpl on the process-wide
    plugin manager; every plugin registered this way is unregistered after the test.
    """
    import types

    from geoseg.hookspecs import hookimpl
    from geoseg.plugins import get_plugin_manager

    registered = []

    def register(*classes, name: str | None = None) -> str:
        @hookimpl
        def register_backends(register):
            for cls in classes:
                register(cls)

        plugin_name = name or "test-" + "-".join(cls.name or cls.__name__ for cls in classes)
        pm = get_plugin_manager()
        pm.register(types.SimpleNamespace(register_backends=register_backends), name=plugin_name)
        registered.append((pm, plugin_name))
        return plugin_name

    yield register
    for pm, plugin_name in registered:
        if pm.has_plugin(plugin_name):
            pm.unregister(name=plugin_name)


@pytest.fixture
def fake_backend(register_backend):
    """The ``FakeBackend`` class, registered as backend "fake" for this test.

    ``create_backend("fake", ["threshold=100"])`` or ``--backend fake --option
    threshold=100`` both work while the test runs.
    """
    cls = _fake_backend_class()
    register_backend(cls, name="test-fake-backend")
    return cls
