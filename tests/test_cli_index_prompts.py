"""geoseg index and geoseg prompts from the command line, on tiny rasters and the samples."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import LANDSAT, LANDSAT_BANDS, NAIP, requires_samples
from PIL import Image

from geoseg.indices import compute_index
from geoseg.masks import raster_threshold
from geoseg.raster import open_raster


def water_raster(make_raster):
    """green/nir named uint8 bands: a diagonal river of water, a nodata block, land."""
    rows, cols = np.mgrid[:80, :100]
    water = np.abs(rows - 0.6 * cols - 10) < 6
    green = np.where(water, 120, 50)
    nir = np.where(water, 30, 140)
    data = np.stack([green, nir]).astype(np.uint8)
    data[:, 60:, 80:] = 0
    return make_raster("river.tif", data=data, nodata=0, descriptions=["green", "nir"])


def one_line_error(result, *words):
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), result.output
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output


def test_index_writes_float32_on_the_source_grid_with_nan_nodata(make_raster, tmp_path, invoke):
    src = water_raster(make_raster)
    out = tmp_path / "out" / "ndwi.tif"
    invoke("index", src, "-o", out, "--index", "NDWI", "-q")
    with rasterio.open(src) as s, rasterio.open(out) as d:
        assert d.dtypes == ("float32",) and d.count == 1
        assert d.crs == s.crs and d.transform == s.transform and d.shape == s.shape
        assert np.isnan(d.nodata) and d.descriptions == ("ndwi",)
        assert d.profile["tiled"] and d.compression.name == "deflate"
        values = d.read(1)
        source = s.read()
    assert np.isnan(values[60:, 80:]).all()
    expected = compute_index(source, ["green", "nir"], "ndwi", source[0] != 0)
    assert np.array_equal(values, expected, equal_nan=True)
    assert values[10, 0] == pytest.approx((120 - 30) / 150)
    assert not list(tmp_path.glob("out/.*part*"))


def test_index_is_computed_on_reflectance_like_the_water_method(tmp_path, invoke):
    """Sentinel-2 L2A from baseline 04.00 stores reflectance x 10000 + 1000: NDWI on the
    digital numbers would be 0.2 where the surface's NDWI is 0.6."""
    from rasterio.transform import from_origin

    green = np.full((32, 32), 1800, np.uint16)  # reflectance 0.08
    nir = np.full((32, 32), 1200, np.uint16)  # reflectance 0.02
    src = tmp_path / "s2_l2a.tif"
    profile = dict(
        driver="GTiff", width=32, height=32, count=2, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
    )  # fmt: skip
    with rasterio.open(src, "w", **profile) as dst:
        dst.write(np.stack([green, nir]))
        dst.descriptions = ("green", "nir")
        dst.update_tags(BOA_ADD_OFFSET_B03="-1000", BOA_ADD_OFFSET_B08="-1000")
    out = tmp_path / "ndwi.tif"
    invoke("index", src, "-o", out, "-q")
    with rasterio.open(out) as d:
        assert d.transform == profile["transform"] and d.crs == "EPSG:32633"
        assert d.read(1) == pytest.approx(np.full((32, 32), 0.6), abs=1e-6)
    # An explicit scale and offset override the tags: here the digital numbers themselves.
    invoke(
        "index", src, "-o", out, "--reflectance-scale", "1", "--reflectance-offset", "0",
        "--overwrite", "-q",
    )  # fmt: skip
    with rasterio.open(out) as d:
        assert d.read(1) == pytest.approx(np.full((32, 32), 0.2), abs=1e-6)


def test_prompts_from_the_command_line_with_preview(make_raster, tmp_path, invoke):
    src = water_raster(make_raster)
    out = tmp_path / "prompts.gpkg"
    preview = tmp_path / "preview.png"
    result = invoke(
        "prompts",
        src,
        "-o",
        out,
        "--size",
        "48",
        "--overlap",
        "8",
        "--min-size",
        "1500m2",
        "--points",
        "2",
        "--negative",
        "1",
        "--perturb",
        "0",
        "--seed",
        "3",
        "--preview",
        preview,
        "-q",
    )
    assert "ndwi >" in result.output and "positive" in result.output
    layers = dict(pyogrio.list_layers(out))
    # layer_styles: the QGIS styles of both layers
    assert layers == {"points": "Point", "boxes": "Polygon", "layer_styles": None}
    meta = pyogrio.read_info(out, layer="points")["layer_metadata"]
    assert meta["index"] == "ndwi" and meta["chip_size"] == "48"
    points = pyogrio.read_dataframe(out, layer="points")
    assert set(points.columns) >= {"label", "chip", "component", "geometry"}
    assert (points["label"] == 1).sum() > 0 and (points["label"] == 0).sum() == 6  # 3 x 2 chips
    with open_raster(src) as source:
        threshold = float(meta["threshold"])
        assert threshold == raster_threshold(source, "ndwi", "otsu")
        xy = points.geometry.get_coordinates().to_numpy()
        cols, rows = ~source.transform @ (xy[:, 0], xy[:, 1])
        data, valid = source.read(source.dataset.window(*source.bounds))
    values = compute_index(data, ["green", "nir"], "ndwi", valid)
    on = values[rows.astype(int), cols.astype(int)]
    assert (on[points["label"] == 1] > threshold).all()
    assert (on[points["label"] == 0] < threshold).all()
    with Image.open(preview) as png:
        assert png.format == "PNG" and min(png.size) >= 80


def test_geojson_prompts_follow_rfc7946(make_raster, tmp_path, invoke):
    src = water_raster(make_raster)
    out = tmp_path / "prompts.geojson"
    invoke("prompts", src, "-o", out, "--size", "64", "--overlap", "8", "--min-size", "15", "-q")
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    kinds = {f["properties"]["prompt"] for f in collection["features"]}
    assert kinds == {"point", "box"}
    lon, lat = collection["features"][0]["geometry"]["coordinates"]
    assert -180 <= lon <= 180 and -90 <= lat <= 90
    # Polygons wind counter-clockwise (RFC 7946 section 3.1.6).
    ring = np.array(
        next(f for f in collection["features"] if f["properties"]["prompt"] == "box")["geometry"][
            "coordinates"
        ][0]
    )
    area2 = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert area2 > 0


def test_errors_are_one_line_exit_2_and_leave_nothing_behind(make_raster, tmp_path, invoke):
    src = water_raster(make_raster)
    four = make_raster("naip_like.tif", bands=4, dtype="uint8")
    out = tmp_path / "results" / "p.gpkg"
    one_line_error(
        invoke("prompts", four, "-o", out, "--index", "mndwi", "--bands", "naip", expect=2),
        "swir1",
        "--bands",
        "--index ndwi",
    )
    one_line_error(
        invoke("prompts", four, "-o", out, "--index", "ndwi", expect=2), "'nir'", "--bands"
    )
    one_line_error(invoke("prompts", src, "-o", tmp_path, expect=2), "is a folder")
    one_line_error(
        invoke("prompts", src, "-o", out, "--index", "nbr", expect=2), "unknown index 'nbr'"
    )
    one_line_error(
        invoke("index", src, "-o", tmp_path / "x.tif", "--index", "ndwii", expect=2),
        "unknown index",
    )
    one_line_error(
        invoke(
            "index", four, "-o", tmp_path / "x.tif", "--index", "mndwi", "--bands", "naip", expect=2
        ),
        "swir1",
    )
    one_line_error(invoke("index", src, "-o", tmp_path, expect=2), "is a folder")
    one_line_error(
        invoke("prompts", src, "-o", out, "--threshold", "high", expect=2), "--threshold"
    )
    one_line_error(
        invoke("prompts", src, "-o", out, "--preview", tmp_path / "p.jpg", expect=2), ".png"
    )
    geographic = make_raster(
        "geo.tif",
        data=np.full((2, 8, 8), 9, np.uint8),
        crs="EPSG:4326",
        descriptions=["green", "nir"],
        transform=rasterio.transform.from_origin(-75, -8, 0.001, 0.001),
    )
    one_line_error(
        invoke(
            "prompts", geographic, "-o", out, "--min-size", "5000m2", "--threshold", "0", expect=2
        ),
        "geographic",
        "pixels",
    )
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert not (tmp_path / "x.tif").exists()


@requires_samples()
@pytest.mark.parametrize(
    ("sample", "bands", "index"),
    [(NAIP, "naip", "ndwi"), (LANDSAT, LANDSAT_BANDS, "mndwi")],
    ids=["naip-ndwi", "landsat-mndwi"],
)
def test_real_samples_every_positive_point_is_on_water(sample, bands, index, tmp_path, invoke):
    out = tmp_path / "prompts.gpkg"
    preview = tmp_path / "preview.png"
    invoke(
        "prompts",
        sample,
        "-o",
        out,
        "--bands",
        bands,
        "--index",
        index,
        "--negative",
        "3",
        "--preview",
        preview,
        "-q",
    )
    points = pyogrio.read_dataframe(out, layer="points")
    threshold = float(pyogrio.read_info(out, layer="points")["layer_metadata"]["threshold"])
    with open_raster(sample, bands) as source:
        assert threshold == pytest.approx(raster_threshold(source, index, "auto"))
        xy = points.geometry.get_coordinates().to_numpy()
        cols, rows = ~source.transform @ (xy[:, 0], xy[:, 1])
        rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
        names = ("green", "nir" if index == "ndwi" else "swir1")
        values = []
        for r, c in zip(rows, cols, strict=True):
            data, valid = source.read(rasterio.windows.Window(c, r, 1, 1), names)
            values.append(compute_index(data, names, index, valid)[0, 0])
        values = np.array(values)
    positive = points["label"].to_numpy() == 1
    assert positive.sum() >= 10
    assert (values[positive] > threshold).all()
    assert (values[~positive] < threshold).all()
    with Image.open(preview) as png:
        assert png.format == "PNG"
        assert max(png.size) >= max(source.width, source.height)
