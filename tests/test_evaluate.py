"""Scores of a prediction against label rasters and polygons on other grids and CRSs."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

from geoseg.classes import WATER
from geoseg.errors import LabelsError
from geoseg.evaluate import evaluate_mask
from geoseg.styles import write_class_metadata

UTM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)


def write(path, array, *, crs="EPSG:32614", transform=UTM, nodata=255, classes=None):
    profile = dict(
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if classes is not None:
            write_class_metadata(dst, classes)
    return path


@pytest.fixture
def prediction(tmp_path):
    """40x40 px at 10 m; water in columns 0..24."""
    pred = np.zeros((40, 40), np.uint8)
    pred[:, :25] = 1
    return write(tmp_path / "pred.tif", pred, classes=WATER)


def test_hand_made_scores_are_exact(tmp_path):
    pred = np.zeros((4, 4), np.uint8)
    pred[:2] = 1
    pred[3, 3] = 255
    labels = np.zeros((4, 4), np.uint8)
    labels[:, :2] = 1
    labels[3, 2] = 255
    result = evaluate_mask(
        write(tmp_path / "p.tif", pred, classes=WATER), write(tmp_path / "l.tif", labels)
    )
    assert result.pixels == 14
    np.testing.assert_array_equal(result.confusion, [[2, 4], [4, 4]])
    assert result.iou.tolist() == pytest.approx([2 / 10, 4 / 12])
    assert result.precision.tolist() == pytest.approx([2 / 6, 4 / 8])
    assert result.recall.tolist() == pytest.approx([2 / 6, 4 / 8])
    assert result.f1.tolist() == pytest.approx([1 / 3, 1 / 2])
    assert result.overall_accuracy == pytest.approx(6 / 14)
    table = result.table()
    assert "1 water" in table and "0.3333" in table and "confusion matrix" in table


def test_label_raster_in_another_crs_and_grid(tmp_path, prediction):
    # Fine labels in degrees: water west of easting 500200 (a pixel edge of the prediction),
    # nodata north of northing 5199900, so nearest sampling at pixel centres is exact.
    to_geo = Transformer.from_crs(32614, 4326, always_xy=True)
    to_utm = Transformer.from_crs(4326, 32614, always_xy=True)
    west, north = to_geo.transform(499980.0, 5200020.0)
    east, south = to_geo.transform(500420.0, 5199580.0)
    res = 0.00002
    width, height = int((east - west) / res) + 1, int((north - south) / res) + 1
    transform = Affine(res, 0, west, 0, -res, north)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    lon, lat = transform * (cols, rows)
    x, y = to_utm.transform(lon, lat)
    labels = np.where(x < 500200.0, 1, 0).astype(np.uint8)
    labels[y > 5199900.0] = 255
    path = write(tmp_path / "labels_4326.tif", labels, crs="EPSG:4326", transform=transform)

    result = evaluate_mask(prediction, path)
    # valid rows 10..39: label water cols 0..19, predicted water cols 0..24
    np.testing.assert_array_equal(result.confusion, [[450, 150], [0, 600]])
    assert result.iou.tolist() == pytest.approx([0.75, 0.8])
    assert result.f1[1] == pytest.approx(2 * 600 / (2 * 600 + 150))
    assert result.overall_accuracy == pytest.approx(0.875)


def test_vector_labels_with_class_names_in_another_crs(tmp_path, prediction):
    lake = shapely.box(500000.0, 5199600.0, 500200.0, 5199900.0)
    frame = gpd.GeoDataFrame({"class_name": ["water"]}, geometry=[lake], crs="EPSG:32614")
    frame.to_crs(3857).to_file(tmp_path / "lakes.gpkg")
    result = evaluate_mask(prediction, tmp_path / "lakes.gpkg")
    # uncovered pixels are background: label water 30x20, predicted water 40x25
    np.testing.assert_array_equal(result.confusion, [[600, 400], [0, 600]])
    assert result.iou.tolist() == pytest.approx([0.6, 0.6])
    assert result.overall_accuracy == pytest.approx(0.75)

    frame.assign(kind=[1]).to_file(tmp_path / "ids.gpkg")
    by_id = evaluate_mask(prediction, tmp_path / "ids.gpkg", label_field="kind")
    np.testing.assert_array_equal(by_id.confusion, result.confusion)
    with pytest.raises(LabelsError, match="no field 'missing'"):
        evaluate_mask(prediction, tmp_path / "ids.gpkg", label_field="missing")


def test_cli_prints_table_and_writes_json(tmp_path, prediction, invoke):
    labels = np.zeros((40, 40), np.uint8)
    labels[:, :20] = 1
    write(tmp_path / "labels.tif", labels)
    result = invoke(
        "evaluate", prediction, tmp_path / "labels.tif", "--json", tmp_path / "scores.json", "-q"
    )
    assert "overall accuracy 0.8750" in result.output
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["classes"][1] == {
        "id": 1,
        "name": "water",
        "iou": 0.8,
        "f1": pytest.approx(0.888889),
        "precision": 0.8,
        "recall": 1.0,
        "label_pixels": 800,
        "predicted_pixels": 1000,
    }
    assert report["confusion_matrix"]["counts"] == [[600, 200], [0, 800]]
    bad = invoke("evaluate", prediction, tmp_path / "missing.gpkg", expect=2)
    assert "missing.gpkg" in bad.output and "Traceback" not in bad.output
    image = write(tmp_path / "image.tif", np.zeros((40, 40), np.float32), nodata=None)
    bad = invoke("evaluate", prediction, image, expect=2)
    assert "integer class ids" in bad.output


def test_unlabeled_ignore_scores_only_the_drawn_polygons(tmp_path, prediction, invoke):
    # A sparse hand-drawn lake over columns 10..29: inside, predicted water is cols 10..24.
    lake = shapely.box(500100.0, 5199600.0, 500300.0, 5200000.0)
    gpd.GeoDataFrame({"class_id": [1]}, geometry=[lake], crs="EPSG:32614").to_file(
        tmp_path / "lake.gpkg"
    )
    sparse = evaluate_mask(prediction, tmp_path / "lake.gpkg", unlabeled="ignore")
    assert sparse.pixels == 40 * 20
    np.testing.assert_array_equal(sparse.confusion, [[0, 0], [200, 600]])
    # background has no label pixels: no IoU of 0 dragging the mean down
    assert sparse.unreferenced.tolist() == [True, False]
    assert np.isnan(sparse.iou[0]) and sparse.iou[1] == pytest.approx(0.75)
    assert sparse.mean_iou == pytest.approx(0.75)
    dense = evaluate_mask(prediction, tmp_path / "lake.gpkg")
    assert dense.pixels == 1600 and not dense.unreferenced.any()

    result = invoke(
        "evaluate",
        prediction,
        tmp_path / "lake.gpkg",
        "--unlabeled",
        "ignore",
        "--json",
        tmp_path / "s.json",
        "-q",
    )
    assert "no label pixels" in result.output
    assert "mean IoU 0.7500" in result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["classes_without_labels"] == [0]
    assert report["classes"][0]["iou"] is None and report["mean_iou"] == 0.75


def test_labels_with_no_scored_pixel_are_an_error(tmp_path, prediction):
    labels = write(tmp_path / "all_nodata.tif", np.full((40, 40), 255, np.uint8))
    with pytest.raises(LabelsError, match="no pixel has both a label and a prediction"):
        evaluate_mask(prediction, labels)


def test_signed_labels_with_negative_no_data_are_read_as_tile_reads_them(tmp_path, prediction):
    # Sen1Floods11's convention: int16 labels, -1 where nothing was labelled, no nodata set.
    labels = np.zeros((40, 40), np.int16)
    labels[:, :20] = 1
    labels[:10] = -1
    path = write(tmp_path / "signed.tif", labels, nodata=None)
    result = evaluate_mask(prediction, path)
    assert result.pixels == 30 * 40
    np.testing.assert_array_equal(result.confusion, [[450, 150], [0, 600]])
    too_big = write(tmp_path / "big.tif", np.full((40, 40), 300, np.int16), nodata=None)
    with pytest.raises(LabelsError, match="class id 300 is outside 0..254"):
        evaluate_mask(prediction, too_big)


def test_vector_labels_follow_the_one_label_reader(tmp_path, prediction):
    lake = shapely.box(500000.0, 5199600.0, 500200.0, 5199900.0)
    cloud = shapely.box(500000.0, 5199800.0, 500400.0, 5200000.0)
    # 255 in an id field leaves pixels out, as 255 in a label raster does; later
    # features paint over earlier ones.
    frame = gpd.GeoDataFrame({"class_id": [1, 255]}, geometry=[lake, cloud], crs="EPSG:32614")
    frame.to_file(tmp_path / "ids.gpkg")
    result = evaluate_mask(prediction, tmp_path / "ids.gpkg")
    assert result.pixels == 40 * 40 - 20 * 40
    # Names need the prediction's classes: evaluation never guesses ids.
    names = gpd.GeoDataFrame({"class_name": ["water"]}, geometry=[lake], crs="EPSG:32614")
    names.to_file(tmp_path / "names.gpkg")
    bare = write(tmp_path / "bare.tif", np.ones((40, 40), np.uint8))
    with pytest.raises(LabelsError, match="holds class names but no classes are known"):
        evaluate_mask(bare, tmp_path / "names.gpkg")
    from geoseg.errors import MissingCRSError

    with pytest.warns(UserWarning, match="'crs' was not provided"):
        names.set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(MissingCRSError, match="no CRS"):
        evaluate_mask(prediction, tmp_path / "nocrs.gpkg")
