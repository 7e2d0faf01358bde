"""``geoseg tile`` end to end: chips, labels, footprints, dataset.json, resume, errors."""

from __future__ import annotations

import json
import threading

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import LANDSAT, LANDSAT_BANDS, NAIP, requires_samples
from rasterio.windows import Window
from shapely.geometry import box

from geoseg.dataset import ChipDataset
from geoseg.errors import OutputError
from geoseg.tiling import ChipWriters

# 10 m pixels, origin (500000, 5200000) in UTM 14N, like the factory's default.
ORIGIN_X, ORIGIN_Y, RES = 500000.0, 5200000.0, 10.0


def pixel_box(col0, row0, col1, row1):
    """Map-coordinate box covering pixel columns col0..col1-1 and rows row0..row1-1."""
    return box(
        ORIGIN_X + col0 * RES, ORIGIN_Y - row1 * RES, ORIGIN_X + col1 * RES, ORIGIN_Y - row0 * RES
    )


def test_chips_hold_the_source_window_exactly(make_raster, invoke, tmp_path):
    src = make_raster(
        bands=4,
        width=70,
        height=50,
        dtype="uint16",
        nodata=0,
        descriptions=["red", "green", "blue", "nir"],
    )
    out = tmp_path / "chips"
    invoke("tile", src, "-o", out, "--size", 32, "--overlap", 8, "-q")
    chips = sorted((out / "images").glob("*.tif"))
    assert len(chips) == 2 * 3  # rows start at 0, 24; cols at 0, 24, 48
    with rasterio.open(src) as parent:
        source = parent.read()
        for chip_path in chips:
            with rasterio.open(chip_path) as chip:
                row = int(chip_path.stem.split("_r")[1][:3])
                col = int(chip_path.stem.split("_c")[1][:3])
                r0, c0 = row * 24, col * 24
                assert chip.crs == parent.crs
                assert chip.transform == parent.transform @ Affine.translation(c0, r0)
                assert chip.dtypes[0] == "uint16" and chip.nodata == 0
                assert chip.descriptions == ("red", "green", "blue", "nir")
                assert (chip.width, chip.height) == (32, 32)
                data = chip.read()
                inside = source[:, r0 : r0 + 32, c0 : c0 + 32]
                h, w = inside.shape[1:]
                np.testing.assert_array_equal(data[:, :h, :w], inside)
                assert (data[:, h:, :] == 0).all() and (data[:, :, w:] == 0).all()  # padded


def test_vector_labels_land_on_the_right_pixels(make_raster, invoke, tmp_path):
    src = make_raster(bands=3, width=64, dtype="uint8")
    lake = pixel_box(10, 20, 30, 25)  # columns 10..29, rows 20..24
    field = pixel_box(40, 40, 50, 60)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(
        {"class": ["water", "crops"]}, geometry=[lake, field], crs="EPSG:32614"
    ).to_crs("EPSG:4326").to_file(labels)  # another CRS: reprojected before rasterizing
    classes = tmp_path / "classes.json"
    classes.write_text(
        json.dumps(
            [
                {"id": 0, "name": "background"},
                {"id": 1, "name": "water", "color": "#0000ff"},
                {"id": 2, "name": "crops"},
            ]
        )
    )
    out = tmp_path / "chips"
    invoke(
        "tile",
        src,
        "-o",
        out,
        "--size",
        64,
        "--overlap",
        0,
        "--labels",
        labels,
        "--classes",
        classes,
        "--bands",
        "rgb",
        "-q",
    )
    with rasterio.open(out / "labels" / "raster_r000_c000.tif") as chip:
        ids = chip.read(1)
        assert chip.nodata == 255 and chip.transform == Affine(10, 0, ORIGIN_X, 0, -10, ORIGIN_Y)
    expected = np.zeros((64, 64), np.uint8)
    expected[20:25, 10:30] = 1
    expected[40:60, 40:50] = 2
    # Reprojection through EPSG:4326 moves edges by far less than a pixel.
    assert (ids != expected).sum() <= 4
    assert ids[22, 20] == 1 and ids[50, 45] == 2 and ids[5, 5] == 0
    info = json.loads((out / "dataset.json").read_text())
    assert [c["name"] for c in info["classes"]] == ["background", "water", "crops"]
    assert info["classes"][1]["color"] == "#0000ff"
    assert info["counts"]["class_pixels"]["water"] == (ids == 1).sum()


def test_raster_labels_on_another_grid(make_raster, invoke, tmp_path):
    src = make_raster(bands=1, width=40, dtype="uint8")
    # Labels at 20 m, shifted one label pixel left and up of the image, class 3 in a block.
    label_data = np.zeros((1, 30, 30), np.uint8)
    label_data[0, 6:11, 6:11] = 3
    label_data[0, 1, 1] = 9  # nodata in the label file, over image pixels (0..1, 0..1)
    labels = make_raster(
        "classes.tif",
        data=label_data,
        nodata=9,
        transform=Affine(20, 0, ORIGIN_X - 20, 0, -20, ORIGIN_Y + 20),
    )
    out = tmp_path / "chips"
    invoke("tile", src, "-o", out, "--size", 40, "--overlap", 0, "--labels", labels, "-q")
    ids = rasterio.open(out / "labels" / "raster_r000_c000.tif").read(1)
    # label pixel (6..10) covers x from ORIGIN-20+120 = ORIGIN+100 to ORIGIN+200 -> image cols 10..19
    assert (ids[10:20, 10:20] == 3).all()
    assert ids[9, 10] == 0 and ids[20, 20] == 0
    assert (ids[:2, :2] == 255).all()  # label nodata -> ignore


def test_footprints_splits_and_dataset(make_raster, invoke, tmp_path):
    src = make_raster(bands=4, width=96, dtype="uint8", nodata=0)
    out = tmp_path / "chips"
    invoke(
        "tile",
        src,
        "-o",
        out,
        "--size",
        32,
        "--overlap",
        0,
        "--val-fraction",
        0.3,
        "--seed",
        7,
        "--bands",
        "naip",
        "-q",
    )
    tiles = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    assert len(tiles) == 9 and tiles.crs.to_epsg() == 32614
    for row in tiles.itertuples():
        with rasterio.open(out / row.chip) as chip:
            assert row.geometry.equals(box(*chip.bounds))
        assert row.valid_fraction == 1.0
    assert set(tiles["split"]) == {"train", "val"}
    info = json.loads((out / "dataset.json").read_text())
    assert info["bands"] == ["red", "green", "blue", "nir"] and info["chip_size"] == 32
    assert info["counts"]["chips"] == 9 and info["crs"] == "EPSG:32614"
    # the same seed draws the same split; the reader sees what was written
    again = tmp_path / "again"
    invoke(
        "tile",
        src,
        "-o",
        again,
        "--size",
        32,
        "--overlap",
        0,
        "--val-fraction",
        0.3,
        "--seed",
        7,
        "--bands",
        "naip",
        "-q",
    )
    assert list(gpd.read_file(again / "tiles.gpkg", layer="tiles")["split"]) == list(tiles["split"])
    dataset = ChipDataset.open(out)
    assert len(dataset.split("val")) == (tiles["split"] == "val").sum()
    data, valid = dataset.read_image(dataset.records[0])
    assert data.shape == (4, 32, 32) and valid.all()


def test_min_valid_resume_and_overwrite(make_raster, invoke, tmp_path):
    data = np.full((2, 64, 64), 5, np.uint8)
    data[:, :, 32:] = 0  # right half nodata
    src = make_raster(data=data, nodata=0)
    out = tmp_path / "chips"
    result = invoke("tile", src, "-o", out, "--size", 32, "--overlap", 0, "--min-valid", 0.5, "-q")
    chips = sorted(p.name for p in (out / "images").glob("*.tif"))
    assert chips == ["raster_r000_c000.tif", "raster_r001_c000.tif"]
    assert "2 skipped below --min-valid" in result.output
    first = (out / "images" / chips[0]).stat().st_mtime_ns
    result = invoke("tile", src, "-o", out, "--size", 32, "--overlap", 0, "--min-valid", 0.5, "-q")
    assert "2 already complete" in result.output
    assert (out / "images" / chips[0]).stat().st_mtime_ns == first
    invoke(
        "tile",
        src,
        "-o",
        out,
        "--size",
        32,
        "--overlap",
        0,
        "--min-valid",
        0.5,
        "--overwrite",
        "-q",
    )
    assert (out / "images" / chips[0]).stat().st_mtime_ns != first
    assert not list(out.rglob(".*part-*"))


def test_dst_crs_and_metre_sizes(make_raster, invoke, tmp_path):
    src = make_raster(
        width=60,
        crs="EPSG:4326",
        dtype="uint8",
        nodata=0,
        transform=Affine(0.0009, 0, -74.6, 0, -0.0009, -8.3),
    )
    out = tmp_path / "chips"
    invoke(
        "tile",
        src,
        "-o",
        out,
        "--dst-crs",
        "EPSG:32718",
        "--resolution",
        100,
        "--size",
        "3200m",
        "--overlap",
        "0",
        "-q",
    )
    info = json.loads((out / "dataset.json").read_text())
    assert (
        info["crs"] == "EPSG:32718" and info["chip_size"] == 32 and info["resolution"] == [100, 100]
    )
    with rasterio.open(next((out / "images").glob("*.tif"))) as chip:
        assert chip.crs.to_epsg() == 32718 and chip.res == (100, 100)


def test_user_errors_exit_2_with_one_line_and_nothing_written(make_raster, invoke, tmp_path):
    src = make_raster(width=32)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4326").to_file(far)
    named = tmp_path / "named.geojson"
    gpd.GeoDataFrame(
        {"class": ["lava"]}, geometry=[pixel_box(0, 0, 5, 5)], crs="EPSG:32614"
    ).to_file(named)
    classes = tmp_path / "classes.json"
    classes.write_text('{"0": "background", "1": "water"}')
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["tile", tmp_path / "missing.tif"], "missing.tif"),
        (["tile", make_raster("nocrs.tif", crs=None)], "no CRS"),
        (["tile", src, "--bands", "red=1,nir=9"], "band 9"),
        (["tile", src, "--labels", far], "overlap"),
        (["tile", src, "--labels", named, "--classes", classes], "lava"),
        (["tile", src, "--labels", named, "--label-field", "kind"], "kind"),
    ]
    for args, needle in cases:
        out = tmp_path / "out"
        result = invoke(*args, "-o", out, expect=2)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("geoseg: error:") and needle in lines[0]
        assert "Traceback" not in result.output
        assert not out.exists()
    result = invoke("tile", src, "-o", a_file / "sub", expect=2)
    assert "is a file" in result.output


@requires_samples()
def test_real_samples(invoke, tmp_path):
    out = tmp_path / "naip"
    invoke("tile", NAIP, "-o", out, "--bands", "naip", "--size", 256, "--overlap", 32, "-q")
    tiles = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    assert len(tiles) == 4 * 5
    with rasterio.open(NAIP) as parent:
        union = tiles.geometry.union_all()
        assert union.contains(box(*parent.bounds))  # every pixel is in some chip
        chip = tiles.iloc[6]
        with rasterio.open(out / chip.chip) as c:
            window = Window(chip.col * 224, chip.row * 224, 256, 256)
            np.testing.assert_array_equal(
                c.read(), parent.read(window=window, boundless=True, fill_value=0)
            )

    out = tmp_path / "landsat"
    invoke(
        "tile",
        LANDSAT,
        "-o",
        out,
        "--bands",
        LANDSAT_BANDS,
        "--dst-crs",
        "EPSG:32718",
        "--size",
        "11520m",
        "--overlap",
        "1440m",
        "--min-valid",
        0.2,
        "-q",
    )
    info = json.loads((out / "dataset.json").read_text())
    assert info["crs"] == "EPSG:32718" and info["bands"] == ["swir1", "nir", "red", "green"]
    assert info["counts"]["chips"] > 0


def test_polygons_written_by_geoseg_keep_their_class_names(make_raster, invoke, tmp_path):
    src = make_raster(bands=3, width=64, dtype="uint8")
    labels = tmp_path / "landcover.gpkg"
    gpd.GeoDataFrame(
        {"class_id": [2, 5], "class_name": ["crops", "water"]},
        geometry=[pixel_box(0, 0, 10, 10), pixel_box(20, 20, 30, 30)],
        crs="EPSG:32614",
    ).to_file(labels, layer="classes")
    out = tmp_path / "chips"
    invoke("tile", src, "-o", out, "--size", 64, "--overlap", 0, "--labels", labels, "-q")
    info = json.loads((out / "dataset.json").read_text())
    assert [(c["id"], c["name"]) for c in info["classes"]] == [
        (0, "background"),
        (2, "crops"),
        (5, "water"),
    ]
    ids = rasterio.open(out / "labels" / "raster_r000_c000.tif").read(1)
    assert ids[5, 5] == 2 and ids[25, 25] == 5 and ids[40, 40] == 0


def test_chip_writers_raise_a_failed_write_and_leave_no_thread(tmp_path):
    failure = OutputError("chip_3.tif: no space left on device; free some space")
    written = []

    def write(index):
        if index == 3:
            raise failure
        written.append(index)

    with pytest.raises(OutputError) as raised, ChipWriters(threads=2) as writers:
        for index in range(100):
            writers.submit(write, index)
    assert raised.value is failure
    assert len(written) < 99  # the writes queued behind the failure were dropped
    assert not [t for t in threading.enumerate() if t.name.startswith("geoseg-chip-write")]
