from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import LANDSAT, requires_samples
from rasterio.warp import transform as transform_points
from shapely.geometry import Point


def test_raster_class_mask_nearest_keeps_values_and_places(make_raster, invoke, tmp_path):
    classes = np.zeros((1, 100, 100), np.uint8)
    classes[0, 40:60, 20:30] = 2
    src = make_raster(
        "mask.tif", data=classes, nodata=255, transform=Affine(10, 0, 500000, 0, -10, 5200000)
    )
    with rasterio.open(src, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0, 255), 2: (0, 0, 255, 255)})
        ds.set_band_description(1, "class")
    dst = tmp_path / "mask_4326.tif"
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:4326", "-q")
    with rasterio.open(dst) as out:
        assert out.crs.to_epsg() == 4326 and out.nodata == 255
        assert out.profile["tiled"] and out.compression.name.lower() == "deflate"
        assert set(np.unique(out.read(1))) <= {0, 2, 255}  # nearest: no invented classes
        assert out.colormap(1)[2][:3] == (0, 0, 255) and out.descriptions == ("class",)
        # the centre of the class-2 block lands on class 2 in the new CRS
        (lon,), (lat,) = transform_points(
            "EPSG:32614", "EPSG:4326", [500000 + 25 * 10], [5200000 - 50 * 10]
        )
        row, col = out.index(lon, lat)
        assert out.read(1)[row, col] == 2


def test_raster_without_nodata_gets_mask_outside_footprint(make_raster, invoke, tmp_path):
    src = make_raster(
        bands=2,
        width=40,
        dtype="uint8",
        crs="EPSG:4326",
        transform=Affine(0.01, 0, -30, 0, -0.01, 70),
    )
    dst = tmp_path / "polar.tif"
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:3413", "--resampling", "bilinear", "-q")
    with rasterio.open(dst) as out:
        mask = out.dataset_mask()
        assert (mask == 0).any() and (mask == 255).any()


def test_resolution_and_overwrite(make_raster, invoke, tmp_path):
    src = make_raster(width=50)
    dst = tmp_path / "out.tif"
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:32614", "--resolution", 20, "-q")
    with rasterio.open(dst) as out:
        assert out.res == (20, 20) and out.width == 25
    before = dst.stat().st_mtime_ns
    # The one overwrite rule: a complete output is skipped, --overwrite redoes it.
    result = invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:32614")
    assert "complete, skipped (--overwrite redoes it)" in result.output
    assert dst.stat().st_mtime_ns == before
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:32614", "--overwrite", "-q")
    with rasterio.open(dst) as out:
        assert out.res == (10, 10)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_vector(invoke, tmp_path, suffix):
    src = tmp_path / "points.gpkg"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(500000, 5200000)], crs="EPSG:32614").to_file(
        src
    )
    dst = tmp_path / f"points_4326{suffix}"
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:4326", "-q")
    out = gpd.read_file(dst)
    assert out.crs.to_epsg() == 4326 and out["name"].tolist() == ["a"]
    (lon,), (lat,) = transform_points("EPSG:32614", "EPSG:4326", [500000], [5200000])
    assert out.geometry[0].x == pytest.approx(lon, abs=1e-9) and out.geometry[0].y == pytest.approx(
        lat, abs=1e-9
    )


def test_errors(invoke, tmp_path, make_raster):
    result = invoke(
        "reproject",
        tmp_path / "none.tif",
        "-o",
        tmp_path / "x.tif",
        "--dst-crs",
        "EPSG:4326",
        expect=2,
    )
    assert "none.tif" in result.output and "Traceback" not in result.output
    result = invoke(
        "reproject", make_raster(), "-o", tmp_path / "x.tif", "--dst-crs", "EPSG:99999999", expect=2
    )
    assert "EPSG:99999999" in result.output
    assert not (tmp_path / "x.tif").exists()


@requires_samples()
def test_landsat_to_utm(invoke, tmp_path):
    dst = tmp_path / "landsat_utm.tif"
    invoke(
        "reproject",
        LANDSAT,
        "-o",
        dst,
        "--dst-crs",
        "EPSG:32718",
        "--resolution",
        90,
        "--resampling",
        "bilinear",
        "-q",
    )
    with rasterio.open(LANDSAT) as src, rasterio.open(dst) as out:
        assert out.crs.to_epsg() == 32718 and out.res == (90, 90) and out.count == src.count
        # The scene centre is the same ground position in both.
        lon, lat = src.xy(src.height // 2, src.width // 2)
        (x,), (y,) = transform_points("EPSG:4326", "EPSG:32718", [lon], [lat])
        row, col = out.index(x, y)
        a = src.read(
            4, window=((src.height // 2, src.height // 2 + 1), (src.width // 2, src.width // 2 + 1))
        )
        b = out.read(4, window=((row, row + 1), (col, col + 1)))
        assert abs(int(a[0, 0]) - int(b[0, 0])) < 40


def test_geoseg_polygons_with_their_style_table(make_raster, fake_backend, invoke, tmp_path):
    """A GeoPackage from predict --vector holds a non-spatial layer_styles table too."""
    import pyogrio

    src = make_raster("scene.tif", bands=1, width=64, dtype="uint16")
    polygons = tmp_path / "water.gpkg"
    invoke(
        "predict",
        src,
        "-o",
        tmp_path / "water.tif",
        "--backend",
        "fake",
        "--vector",
        polygons,
        "-q",
    )
    dst = tmp_path / "water_4326.gpkg"
    invoke("reproject", polygons, "-o", dst, "--dst-crs", "EPSG:4326", "-q")
    layers = dict(pyogrio.list_layers(dst))
    assert layers == {"classes": "Polygon", "layer_styles": None}
    before = gpd.read_file(polygons, layer="classes")
    after = gpd.read_file(dst, layer="classes")
    assert after.crs.to_epsg() == 4326 and list(after["class_name"]) == list(before["class_name"])
    assert after.to_crs(before.crs).area.sum() == pytest.approx(before.area.sum(), rel=1e-6)
    single = tmp_path / "water.geojson"  # one spatial layer: fits GeoJSON, the style stays behind
    invoke("reproject", polygons, "-o", single, "--dst-crs", "EPSG:4326", "-q")
    assert len(gpd.read_file(single)) == len(before)


def test_reprojected_class_mask_keeps_its_qgis_style_and_gets_overviews(
    make_raster, invoke, tmp_path
):
    """A mask from predict, reprojected, opens in QGIS as the original does."""
    import sqlite3
    import xml.etree.ElementTree as ET

    from geoseg.classes import WATER
    from geoseg.styles import write_class_metadata

    classes = np.zeros((1, 1200, 700), np.uint8)
    classes[0, 300:900, 200:500] = 1
    src = make_raster(
        "water.tif", data=classes, nodata=255, transform=Affine(5, 0, 500000, 0, -5, 5200000)
    )
    with rasterio.open(src, "r+") as ds:
        write_class_metadata(ds, WATER)
    dst = tmp_path / "water_4326.tif"
    invoke("reproject", src, "-o", dst, "--dst-crs", "EPSG:4326", "-q")
    with rasterio.open(dst) as out:
        assert out.overviews(1) == [2, 4]
        assert set(np.unique(out.read(1, out_shape=(out.height // 4, out.width // 4)))) <= {
            0,
            1,
            255,
        }
    style = ET.parse(dst.with_suffix(".qml")).getroot()
    assert {e.get("label"): e.get("alpha") for e in style.iter("paletteEntry")} == {
        "background": "0",
        "water": "191",
    }
    # a GeoPackage's styles travel in a layer_styles table made as QGIS makes it
    polygons = tmp_path / "water.gpkg"
    invoke("vectorize", src, "-o", polygons, "-q")
    out_gpkg = tmp_path / "water_4326.gpkg"
    invoke("reproject", polygons, "-o", out_gpkg, "--dst-crs", "EPSG:4326", "-q")
    with sqlite3.connect(polygons) as a, sqlite3.connect(out_gpkg) as b:
        query = "SELECT sql FROM sqlite_master WHERE name = 'layer_styles'"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        query = "SELECT f_table_name, styleQML, useAsDefault FROM layer_styles"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        assert b.execute("PRAGMA user_version").fetchall() == [(10200,)]
