"""``geoseg predict`` and ``geoseg vectorize`` from the command line, sample rasters included."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import NAIP, requires_samples

from geoseg.vectorize import LAYER


@pytest.fixture
def scenes(tmp_path, make_raster):
    """Two 64x64 rasters in a folder; the fake backend finds water in their lower half."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    make_raster("scenes/north.tif", bands=2)
    make_raster("scenes/south.tif", bands=2)
    return folder


def test_one_source_to_a_file_with_vector(tmp_path, scenes, fake_backend, invoke):
    out = tmp_path / "out" / "water.tif"
    result = invoke(
        "predict",
        scenes / "north.tif",
        "-o",
        out,
        "--backend",
        "fake",
        "--size",
        "32",
        "--overlap",
        "8",
        "--vector",
        "-q",
    )
    assert f"mask: {out}" in result.output
    with rasterio.open(out) as mask, rasterio.open(scenes / "north.tif") as src:
        assert mask.transform == src.transform and mask.crs == src.crs
        values = mask.read(1)
    # first band = row * 64 + col + 1 and water above 2048: rows 32..63
    assert (values[32:] == 1).all() and (values[:31] == 0).all()
    assert out.with_suffix(".qml").exists()
    polygons = gpd.read_file(out.with_suffix(".gpkg"), layer=LAYER)
    assert list(polygons.class_name) == ["water"]
    left, bottom, right, top = polygons.total_bounds
    # make_raster's grid: 10 m pixels from (500000, 5200000); water fills rows 32..63
    assert (left, right) == (500000.0, 500640.0)
    assert (bottom, top) == (5199360.0, 5199680.0)


def test_folder_resume_and_overwrite(tmp_path, scenes, fake_backend, invoke):
    out = tmp_path / "masks"
    invoke("predict", scenes, "-o", out, "--backend", "fake", "--vector", "--probabilities", "-q")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "north.gpkg",
        "north.qml",
        "north.tif",
        "north_probabilities.tif",
        "south.gpkg",
        "south.qml",
        "south.tif",
        "south_probabilities.tif",
    ]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = invoke(
        "predict", scenes, "-o", out, "--backend", "fake", "--vector", "--probabilities", "-q"
    )
    assert again.output.count("skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / "south.gpkg").unlink()  # only the polygons are missing: the mask is reused
    invoke("predict", scenes, "-o", out, "--backend", "fake", "--vector", "--probabilities", "-q")
    assert (out / "south.gpkg").exists()
    assert (out / "south.tif").stat().st_mtime_ns == before["south.tif"]
    invoke("predict", scenes, "-o", out, "--backend", "fake", "--overwrite", "-q")
    assert (out / "north.tif").stat().st_mtime_ns != before["north.tif"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.tif", "-o", "m.tif", "--backend", "fake"], "missing.tif: no such file"),
        (["{src}", "-o", "m.tif", "--backend", "nope"], "nope"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--option", "scale=-1"], "scale"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--option", "colour=red"], "colour"),
        (["{scenes}", "-o", "m.tif", "--backend", "fake"], "give an output folder"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--dst-crs", "EPSG:nope"], "--dst-crs"),
        (["{src}", "-o", "{scenes}/north.tif", "--backend", "fake"], "would overwrite"),
        (["{src}", "-o", "{dir_tif}", "--backend", "fake"], "is a folder"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--min-area", "5"], "--vector"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--size", "100000"], "smaller --size"),
        (["{src}", "-o", "m.tif", "--backend", "fake", "--vector", "{src}"], "GeoPackage"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, scenes, fake_backend, invoke, args, message):
    (tmp_path / "dir.tif").mkdir()
    values = dict(src=scenes / "north.tif", scenes=scenes, dir_tif=tmp_path / "dir.tif")
    args = [a.format(**values) for a in args]
    result = invoke("predict", *args, expect=2)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("geoseg: error:") and message in lines[-1]
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.part-*"))


def test_vectorize_command(tmp_path, scenes, fake_backend, invoke):
    mask = tmp_path / "mask.tif"
    invoke("predict", scenes / "south.tif", "-o", mask, "--backend", "fake", "-q")
    invoke("vectorize", mask, "-o", tmp_path / "polys.gpkg", "--simplify", "5", "-q")
    polygons = gpd.read_file(tmp_path / "polys.gpkg", layer=LAYER)
    assert list(polygons.class_name) == ["water"]
    assert polygons.area_m2.iloc[0] == pytest.approx(32 * 64 * 100.0, rel=0.02)
    # The one overwrite rule: complete, so skipped; --overwrite redoes it.
    result = invoke("vectorize", mask, "-o", tmp_path / "polys.gpkg")
    assert "complete, skipped (--overwrite redoes it)" in result.output
    invoke("vectorize", mask, "-o", tmp_path / "polys.gpkg", "--overwrite", "-q")


@requires_samples()
def test_spectral_backend_on_naip_finds_the_lakes(tmp_path, invoke):
    out = tmp_path / "naip_water.tif"
    invoke(
        "predict",
        NAIP,
        "-o",
        out,
        "--backend",
        "spectral",
        "--bands",
        "naip",
        "--vector",
        "--min-area",
        "200",
        "-q",
    )
    # a pixel in the middle of the large lake in the west of the scene
    lake = (486676.5, 5207948.5)
    with rasterio.open(out) as mask, rasterio.open(NAIP) as src:
        assert mask.transform == src.transform and mask.crs == src.crs
        assert (mask.width, mask.height) == (934, 723)
        assert next(mask.sample([lake]))[0] == 1
        values = mask.read(1)
        green, nir = src.read(2).astype(float), src.read(4).astype(float)
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    assert (values[ndwi > 0.3] == 1).mean() > 0.95
    assert (values[ndwi < -0.3] == 0).mean() > 0.95
    polygons = gpd.read_file(out.with_suffix(".gpkg"), layer=LAYER)
    assert set(polygons.class_name) == {"water"} and polygons.crs.to_epsg() == 26914
    containing = polygons[polygons.contains(shapely.Point(lake))]
    assert len(containing) == 1 and containing.area_m2.iloc[0] > 500_000
    assert polygons.area_m2.min() >= 200


def test_rerun_after_interruption_removes_its_temporary_files(
    make_raster, fake_backend, invoke, tmp_path
):
    src = make_raster("scene.tif", bands=1, width=64, dtype="uint16")
    out = tmp_path / "masks"
    out.mkdir()
    stale = [out / ".scene.part-1a2b3c4d.tif", out / ".scene.part-1a2b3c4d.tif.aux.xml"]
    other = out / ".other.part-5e6f7a8b.tif"  # another run's output: left alone
    for path in [*stale, other]:
        path.write_bytes(b"partial")
    invoke("predict", src, "-o", out, "--backend", "fake", "-q")
    assert (out / "scene.tif").is_file()
    assert not any(path.exists() for path in stale) and other.exists()
