"""The predict engine: seamless blending, georeferencing, nodata, COG layout, prompts."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from scipy import ndimage

from geoseg.backend import Backend, Capabilities
from geoseg.errors import BackendError, InputFileError, OutputError
from geoseg.predict import best_channel, expand_sources, plan_outputs, predict_raster
from geoseg.styles import CLASSES_TAG

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)


class ThreeClass(Backend):
    """Pointwise: each pixel's probabilities depend on its own first-band value only."""

    name = "three-class"

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(classes=("background", "water", "vegetation"), chip_size=32)

    def predict(self, batch):
        x = batch.images[:, 0]
        scores = np.stack([np.sin(x / 37.0), np.cos(x / 53.0), np.sin(x / 11.0)], axis=1)
        return np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)


class BoxBlur(Backend):
    """A receptive field of 7x7 pixels: water where the local mean exceeds a threshold."""

    name = "box-blur"
    radius = 3

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(binary=True, classes=("background", "water"), chip_size=32)

    def predict(self, batch):
        mean = ndimage.uniform_filter(batch.images[:, 0], size=(1, 7, 7), mode="constant")
        water = 1.0 / (1.0 + np.exp(-(mean - 500.0) / 60.0))
        return np.stack([1.0 - water, water], axis=1).astype(np.float32)


def noisy(tmp_path, name="noisy.tif", shape=(150, 130), nodata=0, **kwargs):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 1000, (2, *shape)).astype("uint16")
    from conftest import write_raster

    return write_raster(tmp_path / name, data, nodata=nodata, transform=UTM, **kwargs)


def read(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def test_pointwise_backend_small_tiles_equal_one_tile(tmp_path):
    src = noisy(tmp_path)
    backend = ThreeClass()
    tiled = predict_raster(
        backend,
        src,
        tmp_path / "tiled.tif",
        size=32,
        overlap=8,
        batch_size=5,
        probabilities_path=tmp_path / "tiled_p.tif",
    )
    whole = predict_raster(
        backend,
        src,
        tmp_path / "whole.tif",
        size=160,
        overlap=0,
        probabilities_path=tmp_path / "whole_p.tif",
    )
    np.testing.assert_array_equal(read(tiled), read(whole))
    assert len(np.unique(read(whole))) == 3
    with rasterio.open(tmp_path / "tiled_p.tif") as a, rasterio.open(tmp_path / "whole_p.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-5, atol=1e-6)
        assert a.descriptions == ("background", "water", "vegetation")
        assert a.dtypes[0] == "float32"


def test_receptive_field_differs_only_in_blend_zones(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:120, :120]
    data = np.where((yy - 60) ** 2 + (xx - 50) ** 2 < 40**2, 800, 200) + rng.integers(
        0, 300, (120, 120)
    )
    from conftest import write_raster

    src = write_raster(tmp_path / "blob.tif", data.astype("uint16")[None], transform=UTM)
    backend = BoxBlur()
    size, overlap = 32, 12
    tiled = read(predict_raster(backend, src, tmp_path / "t.tif", size=size, overlap=overlap))
    whole = read(predict_raster(backend, src, tmp_path / "w.tif", size=128, overlap=0))
    differ = tiled != whole
    step = size - overlap
    zone = np.zeros(120, bool)  # rows (and columns) where two chips overlap
    for start in range(step, 120, step):
        zone[start : start + overlap] = True
    blend_zone = zone[:, None] | zone[None, :]
    assert differ.any(), "a 7x7 filter with zero padding must change something at chip edges"
    assert not (differ & ~blend_zone).any()
    assert (tiled == 1).sum() > 3000  # the blob is found


def test_mask_keeps_source_grid_classes_and_nodata(tmp_path, fake_backend):
    data = np.full((2, 70, 90), 3000, np.uint16)
    data[:, :, :45] = 1000
    data[:, 10:20, 10:20] = 0
    from conftest import write_raster

    src = write_raster(tmp_path / "src.tif", data, nodata=0, transform=UTM, crs="EPSG:32614")
    out = predict_raster(fake_backend(), src, tmp_path / "out" / "mask.tif", overlap=16)
    with rasterio.open(out) as mask, rasterio.open(src) as source:
        assert mask.crs == source.crs
        assert mask.transform == source.transform
        assert (mask.width, mask.height) == (source.width, source.height)
        assert mask.dtypes[0] == "uint8" and mask.nodata == 255
        values = mask.read(1)
        assert (values[10:20, 10:20] == 255).all()
        assert (values[25:, :45] == 0).all() and (values[:, 45:] == 1).all()
        # the pixel at map (500455 E, 5199695 N) is column 45, row 30: water
        row, col = mask.index(500455.0, 5199695.0)
        assert (row, col) == (30, 45) and values[row, col] == 1
        assert "water" in mask.tags()[CLASSES_TAG]
        assert mask.colormap(1)[1][:3] == (0x1F, 0x78, 0xB4)
        assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    style = ET.parse(out.with_suffix(".qml")).getroot()
    entries = {e.get("value"): e.get("label") for e in style.iter("paletteEntry")}
    assert entries == {"0": "background", "1": "water"}
    assert not list(out.parent.glob(".*part*")), "no temporary files are left behind"


def test_large_mask_is_a_tiled_cog_with_overviews(tmp_path, fake_backend):
    data = (np.arange(1200 * 1100) % 4096).astype("uint16").reshape(1, 1200, 1100)
    from conftest import write_raster

    src = write_raster(tmp_path / "big.tif", data, transform=UTM)
    out = predict_raster(
        fake_backend(), src, tmp_path / "big_mask.tif", size=256, overlap=32, batch_size=16
    )
    with rasterio.open(out) as mask:
        assert mask.driver == "GTiff"
        assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert mask.block_shapes[0] == (512, 512)
        assert mask.overviews(1) == [2, 4]
        np.testing.assert_array_equal(mask.read(1), (data[0] > 2048).astype(np.uint8))


def test_dst_crs_reprojects_mask_with_nearest(tmp_path, fake_backend):
    data = np.full((1, 80, 80), 1000, np.uint16)
    data[:, 20:60, 20:60] = 4000  # a 400 m water square
    from conftest import write_raster

    src = write_raster(tmp_path / "sq.tif", data, transform=UTM)
    out = predict_raster(
        fake_backend(),
        src,
        tmp_path / "sq_4326.tif",
        dst_crs="EPSG:4326",
        overlap=8,
        probabilities_path=tmp_path / "sq_4326_p.tif",
    )
    transformer = __import__("pyproj").Transformer.from_crs(32614, 4326, always_xy=True)
    centre = transformer.transform(500400.0, 5199600.0)  # centre of the square
    outside = transformer.transform(500050.0, 5199950.0)
    with rasterio.open(out) as mask:
        assert mask.crs.to_epsg() == 4326
        assert set(np.unique(mask.read(1))) <= {0, 1, 255}
        values = list(mask.sample([centre, outside]))
        assert values[0][0] == 1 and values[1][0] == 0
        assert "water" in mask.tags()[CLASSES_TAG]
        assert mask.colormap(1)[1][:3] == (0x1F, 0x78, 0xB4)
    with rasterio.open(tmp_path / "sq_4326_p.tif") as probs:
        assert probs.crs.to_epsg() == 4326 and probs.count == 2
        assert probs.descriptions == ("background", "water")
        water = next(probs.sample([centre]))[1]
        assert water > 0.99


def test_wrong_probability_shape_is_a_backend_error(tmp_path):
    class Broken(ThreeClass):
        name = "broken"

        def predict(self, batch):
            return super().predict(batch)[:, :2]

    with pytest.raises(BackendError, match="shape"):
        predict_raster(Broken(), noisy(tmp_path), tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()
    assert not list(tmp_path.glob(".*part*"))


def pipeline_threads() -> list[threading.Thread]:
    names = ("geoseg-read", "geoseg-stitch", "geoseg-test-")
    return [t for t in threading.enumerate() if t.name.startswith(names)]


def test_backend_runs_on_the_calling_thread_and_the_pipeline_ends_with_the_run(tmp_path):
    class Recorder(ThreeClass):
        name = "recorder"
        threads: set = set()

        def predict(self, batch):
            self.threads.add(threading.current_thread())
            return super().predict(batch)

    backend = Recorder()
    predict_raster(backend, noisy(tmp_path), tmp_path / "x.tif", size=32, batch_size=3)
    assert backend.threads == {threading.current_thread()}
    assert pipeline_threads() == []


@pytest.mark.parametrize("failing_batch", [1, 4])
def test_backend_error_mid_run_is_raised_as_is_and_leaves_nothing(tmp_path, failing_batch):
    class FailsLater(ThreeClass):
        name = "fails-later"
        calls = 0

        def predict(self, batch):
            self.calls += 1
            if self.calls == failing_batch:
                raise BackendError("the model ran out of memory; use a smaller --batch-size")
            return super().predict(batch)

    src = noisy(tmp_path)
    with pytest.raises(BackendError, match="ran out of memory"):
        predict_raster(FailsLater(), src, tmp_path / "x.tif", size=32, batch_size=2)
    assert pipeline_threads() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_pipeline_raises_a_side_thread_error_on_the_engine_thread():
    from geoseg.predict import _Background, _Prefetch

    def items():
        yield 1
        raise InputFileError("scene.tif: cannot read pixels")

    seen = []
    with (
        pytest.raises(InputFileError, match="cannot read pixels"),
        _Prefetch(items(), name="geoseg-test-read") as upcoming,
    ):
        seen.extend(upcoming)
    assert seen == [1]
    failure = OutputError("mask.tif: no space left on device")

    def work(item):
        if item == 2:
            raise failure

    with (
        pytest.raises(OutputError) as raised,
        _Background(work, name="geoseg-test-stitch") as stitching,
    ):
        for item in range(1000):
            stitching.put(item)
    assert raised.value is failure
    assert pipeline_threads() == []


class PromptRecorder(ThreeClass):
    name = "prompted"
    seen: list = []

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            classes=("background", "water", "vegetation"), chip_size=32, needs_prompts=True
        )

    def prompt_settings(self):
        return {"index": "ndwi", "threshold": 0.0, "min_size": 1, "fill_holes": 0}

    def predict(self, batch):
        assert batch.prompts is not None and len(batch.prompts) == len(batch)
        self.seen.extend(batch.prompts)
        return super().predict(batch)


def test_prompts_reach_the_backend_per_chip(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    lake = (yy - 32) ** 2 + (xx - 32) ** 2 < 15**2
    green = np.where(lake, 120, 60).astype("uint8")
    nir = np.where(lake, 20, 150).astype("uint8")
    from conftest import write_raster

    src = write_raster(
        tmp_path / "lake.tif", np.stack([green, nir]), transform=UTM, descriptions=["green", "nir"]
    )
    backend = PromptRecorder()
    backend.seen = []
    predict_raster(backend, src, tmp_path / "auto.tif", overlap=0)  # default: auto
    assert len(backend.seen) == 4
    assert all((p.labels == 1).any() for p in backend.seen), "the lake touches every chip"

    points = gpd.GeoDataFrame(
        {"label": [1]}, geometry=[shapely.Point(500325.0, 5199675.0)], crs="EPSG:32614"
    ).to_crs(4326)
    points.to_file(tmp_path / "prompts.gpkg", layer="points")
    backend.seen = []
    predict_raster(
        backend, src, tmp_path / "file.tif", overlap=0, prompts=tmp_path / "prompts.gpkg"
    )
    with_points = [p for p in backend.seen if len(p.points)]
    assert len(with_points) == 1  # (32.5, 32.5) px lies in chip (1, 1) only
    np.testing.assert_allclose(with_points[0].points, [[0.5, 0.5]], atol=1e-3)


def test_plan_outputs_names_outputs_after_sources(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tiff"
    a.touch()
    b.touch()
    [job] = plan_outputs([a], tmp_path / "out" / "water.tif", vector=True, probabilities=True)
    assert job.mask == tmp_path / "out" / "water.tif"
    assert job.vector == tmp_path / "out" / "water.gpkg"
    assert job.style == tmp_path / "out" / "water.qml"
    assert job.probabilities == tmp_path / "out" / "water_probabilities.tif"
    jobs = plan_outputs(
        expand_sources([tmp_path]), tmp_path / "masks", vector=tmp_path / "polys", single_file=False
    )
    assert [j.mask.name for j in jobs] == ["a.tif", "b.tif"]
    assert [j.vector for j in jobs] == [
        tmp_path / "polys" / "a.gpkg",
        tmp_path / "polys" / "b.gpkg",
    ]
    with pytest.raises(OutputError, match="give an output folder"):
        plan_outputs([a, b], tmp_path / "one.tif")
    with pytest.raises(OutputError, match="one GeoPackage"):
        plan_outputs([a, b], tmp_path / "masks", vector=tmp_path / "all.gpkg")
    with pytest.raises(InputFileError, match="no such file"):
        expand_sources([tmp_path / "missing.tif"])


def test_best_channel_is_argmax_with_ties_to_the_first():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, (5, 40, 30)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(best_channel(scores), np.argmax(scores, axis=0))


def test_float_source_with_nan_nodata_reaches_the_backend_as_zeros(tmp_path):
    class NoNaN(ThreeClass):
        name = "no-nan"

        def predict(self, batch):
            assert np.isfinite(batch.images).all()
            assert (
                batch.images[~np.broadcast_to(batch.valid[:, None], batch.images.shape)] == 0
            ).all()
            return super().predict(batch)

    data = np.random.default_rng(3).random((2, 50, 40)).astype(np.float32) * 900
    data[:, 5:15, 5:15] = np.nan
    from conftest import write_raster

    src = write_raster(tmp_path / "f.tif", data, nodata=float("nan"), transform=UTM)
    mask = read(predict_raster(NoNaN(), src, tmp_path / "f_mask.tif", overlap=8))
    assert (mask[5:15, 5:15] == 255).all() and (mask[20:] != 255).all()
