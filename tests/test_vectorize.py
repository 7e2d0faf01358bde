"""Class masks to polygons: dissolved across window seams, georeferenced, measured."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize

from geoseg.classes import ClassInfo, ClassMap
from geoseg.errors import InputFileError
from geoseg.styles import write_class_metadata
from geoseg.vectorize import LAYER, vectorize_mask

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)
CLASSES = ClassMap(
    (
        ClassInfo(0, "background", "#000000"),
        ClassInfo(1, "lake", "#1f78b4"),
        ClassInfo(2, "reeds", "#33a02c"),
    )
)


def write_mask(path, mask, *, crs="EPSG:32614", transform=UTM, classes=CLASSES):
    profile = dict(
        driver="GTiff",
        width=mask.shape[1],
        height=mask.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=255,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
        if classes is not None:
            write_class_metadata(dst, classes)
    return path


def lake_mask():
    yy, xx = np.mgrid[:50, :60]
    mask = np.zeros((50, 60), np.uint8)
    lake = (yy - 25) ** 2 + (xx - 30) ** 2 < 15**2
    mask[lake] = 1
    mask[0:3, 0:4] = 2  # 12 px of reeds
    mask[45:, 55:] = 255
    return mask, lake


def test_lake_across_window_seams_is_one_polygon(tmp_path):
    mask, lake = lake_mask()
    src = write_mask(tmp_path / "m.tif", mask)
    out = vectorize_mask(src, tmp_path / "m.gpkg", window=16)  # the lake spans 4x4 windows
    polygons = gpd.read_file(out, layer=LAYER)
    lakes = polygons[polygons.class_name == "lake"]
    assert len(lakes) == 1
    assert lakes.area_m2.iloc[0] == pytest.approx(lake.sum() * 100.0)
    assert lakes.perimeter_m.iloc[0] == pytest.approx(lakes.geometry.iloc[0].length)
    assert list(polygons.columns) == [
        "class_id",
        "class_name",
        "area_m2",
        "perimeter_m",
        "geometry",
    ]
    assert sorted(polygons.class_name) == ["lake", "reeds"]  # no background, no 255
    assert polygons.crs.to_epsg() == 32614


def test_polygons_overlay_their_pixels(tmp_path):
    mask, _ = lake_mask()
    out = vectorize_mask(write_mask(tmp_path / "m.tif", mask), tmp_path / "m.gpkg", window=16)
    polygons = gpd.read_file(out, layer=LAYER)
    burned = rasterize(
        zip(polygons.geometry, polygons.class_id, strict=True),
        out_shape=mask.shape,
        transform=UTM,
        fill=0,
        dtype="uint8",
    )
    expected = np.where(mask == 255, 0, mask)
    np.testing.assert_array_equal(burned, expected)
    reeds = polygons[polygons.class_name == "reeds"].geometry.iloc[0]
    assert reeds.bounds == (500000.0, 5199970.0, 500040.0, 5200000.0)


def test_background_min_area_and_simplify(tmp_path):
    mask, lake = lake_mask()
    src = write_mask(tmp_path / "m.tif", mask)
    everything = gpd.read_file(
        vectorize_mask(src, tmp_path / "a.gpkg", include_background=True, window=16), layer=LAYER
    )
    assert "background" in set(everything.class_name)
    assert 255 not in set(everything.class_id)
    big = gpd.read_file(vectorize_mask(src, tmp_path / "b.gpkg", min_area=1500.0), layer=LAYER)
    assert list(big.class_name) == ["lake"]  # reeds are 1200 m2
    plain = gpd.read_file(vectorize_mask(src, tmp_path / "c.gpkg"), layer=LAYER)
    simple = gpd.read_file(vectorize_mask(src, tmp_path / "d.gpkg", simplify=15.0), layer=LAYER)
    lake_plain = plain[plain.class_name == "lake"].geometry.iloc[0]
    lake_simple = simple[simple.class_name == "lake"].geometry.iloc[0]
    assert len(lake_simple.exterior.coords) < len(lake_plain.exterior.coords) / 2
    assert lake_simple.area == pytest.approx(lake_plain.area, rel=0.05)
    assert lake_simple.is_valid


def test_geographic_mask_gets_areas_in_square_metres(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    # 0.001 degree pixels at 47 N: about 111 m by 76 m
    transform = Affine(0.001, 0, -99.0, 0, -0.001, 47.0)
    src = write_mask(tmp_path / "g.tif", mask, crs="EPSG:4326", transform=transform)
    polygons = gpd.read_file(vectorize_mask(src, tmp_path / "g.gpkg"), layer=LAYER)
    assert polygons.crs.to_epsg() == 4326
    expected = 100 * 111_200 * 0.001 * 75_900 * 0.001
    assert polygons.area_m2.iloc[0] == pytest.approx(expected, rel=0.01)


def test_mask_without_class_tags_and_bad_input(tmp_path):
    mask, _ = lake_mask()
    src = write_mask(tmp_path / "bare.tif", mask, classes=None)
    polygons = gpd.read_file(vectorize_mask(src, tmp_path / "bare.gpkg"), layer=LAYER)
    assert sorted(set(polygons.class_name)) == ["class_1", "class_2"]
    with rasterio.open(
        tmp_path / "f.tif",
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=1,
        dtype="float32",
        crs="EPSG:32614",
        transform=UTM,
    ) as dst:
        dst.write(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputFileError, match="class mask"):
        vectorize_mask(tmp_path / "f.tif", tmp_path / "f.gpkg")
    assert not (tmp_path / "f.gpkg").exists()


#: layer_styles as QGIS 3.22 (GDAL 3.6) creates it when a style is saved in a GeoPackage.
QGIS_LAYER_STYLES = (
    'CREATE TABLE "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def test_polygons_carry_a_default_qgis_style(tmp_path):
    """The style is found by the query QGIS runs, in a table shaped as QGIS makes it.

    QGIS asks for the layer's style ordered by ``update_time``; a table without that
    column fails the query and the layer opens unstyled. tests/test_qgis.py loads the
    layer in real QGIS.
    """
    import sqlite3
    import xml.etree.ElementTree as ET

    mask, _ = lake_mask()
    out = vectorize_mask(write_mask(tmp_path / "m.tif", mask), tmp_path / "m.gpkg")
    with sqlite3.connect(out) as db:
        [(geometry_column,)] = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = 'classes'"
        ).fetchall()
        # the query QGIS 3.22 runs on load (QgsOgrProviderUtils::loadStyle)
        [(qml, update_time)] = db.execute(
            "SELECT styleQML, update_time FROM layer_styles WHERE f_table_schema = '' "
            "AND f_table_name = ? AND f_geometry_column = ? "
            "ORDER BY CASE WHEN useAsDefault THEN 1 ELSE 2 END, update_time DESC LIMIT 1",
            (LAYER, geometry_column),
        ).fetchall()
        [(sql,)] = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'layer_styles'"
        ).fetchall()
        contents = db.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchall()
        [(user_version,)] = db.execute("PRAGMA user_version").fetchall()
    assert sql == QGIS_LAYER_STYLES and contents == [("attributes",)]
    assert update_time.endswith("Z")  # filled by the column default, as when QGIS saves
    assert user_version == 10200  # GeoPackage 1.2: no warning from GDAL 3.6 (QGIS LTR)
    style = ET.fromstring(qml.split("\n", 1)[1])
    [renderer] = style.iter("renderer-v2")
    assert (renderer.get("type"), renderer.get("attr")) == ("categorizedSymbol", "class_name")
    labels = [c.get("label") for c in style.iter("category")]
    assert labels == ["background", "lake", "reeds"]
    fills = [
        dict((o.get("name"), o.get("value")) for o in symbol.iter("Option") if o.get("name"))
        for symbol in style.iter("symbol")
    ]
    assert fills[0]["style"] == "no" and fills[0]["outline_style"] == "no"  # background: none
    assert fills[1]["color"] == "31,120,180,128" and fills[1]["outline_color"].endswith(",255")


def test_class_zero_keeps_its_polygons_when_it_is_a_land_cover_class(tmp_path):
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 5:10, 5:10] = 1
    path = tmp_path / "landcover.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=20,
        height=20,
        count=1,
        dtype="uint8",
        crs="EPSG:32614",
        transform=Affine(10, 0, 500000, 0, -10, 5200000),
        nodata=255,
    ) as dst:
        dst.write(mask)
    out = vectorize_mask(
        path, tmp_path / "lc.gpkg", classes=ClassMap.from_names(["other", "water"])
    )
    frame = gpd.read_file(out, layer="classes")
    assert sorted(frame["class_name"]) == ["other", "water"]
    out = vectorize_mask(
        path, tmp_path / "bg.gpkg", classes=ClassMap.from_names(["background", "water"])
    )
    assert list(gpd.read_file(out, layer="classes")["class_name"]) == ["water"]
