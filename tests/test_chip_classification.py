"""One class per chip: ``geoseg tile --chip-labels/--class-folders``, the chip engine and
chip-level ``geoseg evaluate``, with a fake backend of kind ``chips`` (no model)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from shapely.geometry import Point

from geoseg.classes import ClassMap
from geoseg.dataset import ChipDataset

RES, X0, Y0 = 10.0, 500000.0, 5200000.0
TRANSFORM = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
CLASSES = [
    {"id": 0, "name": "land", "color": "#a0a0a0"},
    {"id": 1, "name": "water", "color": "#1f78b4"},
    {"id": 2, "name": "quarry", "color": "#ff7f00"},
]


def _labels_and_scene(tmp_path, make_raster):
    """A 64 x 48 px scene cut into 16 px chips (4 x 3) with a known label per pixel.

    Chip (0, 0): all land, one water pixel at its corner. Chip (0, 1): water in 10 of its
    16 columns (majority water), land at its centre. Chip (1, 2): quarry; the rest land.
    Band 1 holds 1000 * the label, so a backend can read the answer back.
    """
    label = np.zeros((48, 64), np.uint8)
    label[0, 0] = 1
    label[0:16, 16:23] = 1
    label[0:16, 29:32] = 1
    label[16:32, 32:48] = 2
    label[47, 63] = 255  # ignored
    data = np.stack([label.astype(np.uint16) * 1000 + 5] * 4)
    scene = make_raster("scene.tif", data=data, transform=TRANSFORM)
    labels = tmp_path / "labels.tif"
    with rasterio.open(
        labels, "w", driver="GTiff", width=64, height=48, count=1, dtype="uint8",
        crs="EPSG:32614", transform=TRANSFORM, nodata=255,
    ) as dst:  # fmt: skip
        dst.write(label, 1)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(CLASSES))
    return scene, labels, classes


def _tile(invoke, tmp_path, scene, labels, classes, rule, name="chips"):
    out = tmp_path / name
    invoke(
        "tile", scene, "-o", out, "--size", 16, "--overlap", 0, "--labels", labels,
        "--classes", classes, "--chip-labels", rule, "-q",
    )  # fmt: skip
    return out


def _chip_classes(out):
    table = pyogrio.read_dataframe(out / "tiles.gpkg", layer="tiles")
    return {(r.row, r.col): (r.chip_class, r.chip_class_name) for r in table.itertuples()}


def test_chip_labels_follow_each_rule(tmp_path, make_raster, invoke):
    scene, labels, classes = _labels_and_scene(tmp_path, make_raster)
    majority = _chip_classes(_tile(invoke, tmp_path, scene, labels, classes, "majority", "m"))
    assert majority[(0, 0)] == (0, "land")
    assert majority[(0, 1)] == (1, "water")  # 10 of 16 columns
    assert majority[(1, 2)] == (2, "quarry")
    centre = _chip_classes(_tile(invoke, tmp_path, scene, labels, classes, "centre", "c"))
    assert centre[(0, 1)] == (0, "land")  # column 8 of the chip is land
    assert centre[(1, 2)] == (2, "quarry")
    anywater = _chip_classes(_tile(invoke, tmp_path, scene, labels, classes, "any:water", "a"))
    assert anywater[(0, 0)] == (1, "water")  # the one water pixel
    assert anywater[(1, 2)] == (2, "quarry")  # no water: the majority
    assert sum(v[0] == 1 for v in anywater.values()) == 2

    dataset = ChipDataset.open(tmp_path / "a")
    by_position = {(r.row, r.col): r.chip_class for r in dataset.records}
    assert by_position == {k: v[0] for k, v in anywater.items()}
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert info["chip_labels"] == "any:water"
    assert info["counts"]["class_chips"] == {"land": 9, "water": 2, "quarry": 1}


def test_chip_label_mistakes_are_one_line(tmp_path, make_raster, invoke):
    scene, labels, classes = _labels_and_scene(tmp_path, make_raster)
    result = invoke("tile", scene, "-o", tmp_path / "x", "--chip-labels", "majority", expect=2)
    assert "add --labels" in result.output and "Traceback" not in result.output
    result = invoke(
        "tile", scene, "-o", tmp_path / "y", "--labels", labels, "--chip-labels", "most",
        expect=2,
    )  # fmt: skip
    assert "majority, centre, any:<class>" in result.output
    result = invoke(
        "tile", scene, "-o", tmp_path / "z", "--labels", labels, "--classes", classes,
        "--chip-labels", "any:lava", expect=2,
    )  # fmt: skip
    assert "lava" in result.output


def test_class_folders_give_each_patch_its_folder_class(tmp_path, make_raster, invoke):
    root = tmp_path / "eurosat"
    for n, name in enumerate(["Forest", "River", "Forest", "Industrial"]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        origin = Affine(RES, 0, X0 + n * 640, 0, -RES, Y0)
        make_raster(f"{name}_{n}.tif", width=16, transform=origin).rename(
            folder / f"{name}_{n}.tif"
        )
    out = tmp_path / "chips"
    invoke("tile", root, "-o", out, "--class-folders", "--val-fraction", 0, "-q")
    dataset = ChipDataset.open(out)
    assert dataset.chip_size == 16  # the patches' size
    names = {c.id: c.name for c in dataset.classes}
    assert names == {0: "Forest", 1: "Industrial", 2: "River"}
    got = {r.name.split("_r")[0]: names[r.chip_class] for r in dataset.records}
    assert got == {"Forest_0": "Forest", "River_1": "River", "Forest_2": "Forest",
                   "Industrial_3": "Industrial"}  # fmt: skip


def _chips_backend_class():
    from geoseg.backend import Backend, Capabilities

    class FakeChips(Backend):
        """Answers per chip from band 1: class = round(mean / 1000), probability 0.9."""

        name = "fake-chips"
        description = "Test backend of kind chips"

        @classmethod
        def capabilities(cls) -> Capabilities:
            return Capabilities(kind="chips", classes=("land", "water", "quarry"), chip_size=16)

        def predict(self, batch):
            mean = np.array(
                [im[0][v].mean() for im, v in zip(batch.images, batch.valid, strict=True)]
            )
            best = np.clip(np.round(mean / 1000), 0, 2).astype(int)
            probabilities = np.full((len(batch), 3), 0.05, np.float32)
            probabilities[np.arange(len(batch)), best] = 0.9
            return probabilities

    return FakeChips


@pytest.fixture
def chips_backend(register_backend):
    register_backend(_chips_backend_class(), name="test-fake-chips")


def test_chip_predictions_land_on_the_chip_footprints(tmp_path, make_raster, invoke, chips_backend):
    scene, labels, classes = _labels_and_scene(tmp_path, make_raster)
    out = tmp_path / "pred" / "scene.gpkg"
    result = invoke("predict", scene, "-o", out, "--backend", "fake-chips", "-q")
    assert "chips:" in result.output
    chips = gpd.read_file(out, layer="chips")
    assert len(chips) == 12 and chips.crs.to_epsg() == 32614
    quarry = chips[chips["class_name"] == "quarry"]
    assert list(zip(quarry["row"], quarry["col"], strict=True)) == [(1, 2)]
    # Chip (1, 2) covers columns 32..47, rows 16..31 of the scene.
    assert quarry.geometry.iloc[0].bounds == (X0 + 320, Y0 - 320, X0 + 480, Y0 - 160)
    assert quarry["p_quarry"].iloc[0] == pytest.approx(0.9)
    assert {"p_land", "p_water", "p_quarry", "valid_fraction"} <= set(chips.columns)
    with rasterio.open(out.with_suffix(".tif")) as coarse:
        assert (coarse.width, coarse.height) == (4, 3)
        assert coarse.transform == TRANSFORM * Affine.scale(16)
        assert coarse.crs.to_epsg() == 32614
        ids = coarse.read(1)
        assert (ids[1, 2], ids[0, 1], ids[0, 0]) == (2, 1, 0)  # band means 2005, 630, 9
        quarry_colour = ClassMap.from_names(["land", "water", "quarry"]).by_id(2).rgb
        assert coarse.colormap(1)[2][:3] == tuple(quarry_colour)
    assert out.with_suffix(".qml").is_file()
    assert (
        "categorizedSymbol" in pyogrio.read_dataframe(out, layer="layer_styles")["styleQML"].iloc[0]
    )

    result = invoke("predict", scene, "-o", out, "--backend", "fake-chips", "--vector", expect=2)
    assert "--vector does not apply" in result.output
    result = invoke("predict", scene, "-o", out, "--backend", "fake-chips")
    assert "complete, skipped" in result.output


def test_chip_evaluation_counts_chips_with_known_answers(
    tmp_path, make_raster, invoke, chips_backend
):
    scene, labels, classes = _labels_and_scene(tmp_path, make_raster)
    chipset = _tile(invoke, tmp_path, scene, labels, classes, "any:water")
    pred = tmp_path / "predicted.gpkg"
    invoke("predict", scene, "-o", pred, "--backend", "fake-chips", "-q")
    report = tmp_path / "scores.json"
    result = invoke("evaluate", pred, chipset, "--json", report, "-q")
    assert "chips 12" in result.output
    scores = json.loads(report.read_text())
    # Labels (any:water): 9 land, 2 water, 1 quarry. The backend answers water only for
    # chip (0, 1) (mean 630 rounds to 1): chip (0, 0), one water pixel, is called land.
    assert scores["chips"] == 12
    assert scores["confusion_matrix"]["counts"] == [[9, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert scores["overall_accuracy"] == pytest.approx(11 / 12)
    water = next(c for c in scores["classes"] if c["name"] == "water")
    assert (water["precision"], water["recall"]) == (1.0, 0.5)

    # Labelled points: each counts once, in the chip holding it.
    points = gpd.GeoDataFrame(
        {"class_name": ["quarry", "water", "land"]},
        geometry=[Point(X0 + 400, Y0 - 240), Point(X0 + 5, Y0 - 5), Point(X0 + 600, Y0 - 400)],
        crs="EPSG:32614",
    ).to_crs("EPSG:4326")
    points.to_file(tmp_path / "points.gpkg")
    result = invoke("evaluate", pred, tmp_path / "points.gpkg", "--json", tmp_path / "p.json")
    counts = json.loads((tmp_path / "p.json").read_text())["confusion_matrix"]["counts"]
    assert counts == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]

    result = invoke("evaluate", pred, labels, expect=2)
    assert "chip labels" in result.output
    with rasterio.open(pred.with_suffix(".tif")) as coarse:
        assert coarse.count == 1
    result = invoke("evaluate", pred.with_suffix(".tif"), chipset, expect=2)
    assert "a chip set scores a chip prediction" in result.output


def test_the_pixel_engine_refuses_a_chip_backend(tmp_path, make_raster, chips_backend):
    from geoseg.errors import BackendError
    from geoseg.plugins import create_backend
    from geoseg.predict import predict_raster

    scene = make_raster("scene.tif")
    with pytest.raises(BackendError, match="classifies whole chips"):
        predict_raster(create_backend("fake-chips"), scene, tmp_path / "mask.tif")


def test_backends_lists_the_kind(invoke, chips_backend):
    result = invoke("backends")
    line = next(li for li in result.output.splitlines() if li.startswith("fake-chips"))
    assert "kind=chips" in line


def test_labelled_points_give_the_chips_holding_them_a_class(tmp_path, make_raster, invoke):
    scene, _, classes = _labels_and_scene(tmp_path, make_raster)
    points = gpd.GeoDataFrame(
        {"class": ["quarry", "water", "water"]},
        geometry=[Point(X0 + 400, Y0 - 240), Point(X0 + 5, Y0 - 5), Point(X0 + 25, Y0 - 15)],
        crs="EPSG:32614",
    )
    points.to_file(tmp_path / "sites.gpkg")
    out = tmp_path / "chips"
    invoke(
        "tile", scene, "-o", out, "--size", 16, "--overlap", 0, "--labels",
        tmp_path / "sites.gpkg", "--label-field", "class", "--classes", classes,
        "--unlabeled", "ignore", "--chip-labels", "majority", "-q",
    )  # fmt: skip
    dataset = ChipDataset.open(out)
    labelled = {(r.row, r.col): r.chip_class for r in dataset.records if r.chip_class is not None}
    assert labelled == {(1, 2): 2, (0, 0): 1}  # both water points fall in chip (0, 0)
    assert dataset.has_chip_labels


def test_chips_without_a_valid_pixel_are_left_out(tmp_path, make_raster, invoke, chips_backend):
    data = np.full((4, 32, 48), 2005, np.uint16)
    data[:, :16, :16] = 0  # chip (0, 0) is nodata
    data[:, 16:, 40:] = 0  # chip (1, 2) is half nodata
    scene = make_raster("holes.tif", data=data, nodata=0, transform=TRANSFORM)
    out = tmp_path / "holes"
    invoke("predict", scene, "-o", out, "--backend", "fake-chips", "-q")
    chips = gpd.read_file(out / "holes.gpkg", layer="chips")
    assert (0, 0) not in set(zip(chips["row"], chips["col"], strict=True)) and len(chips) == 5
    partial = chips[(chips["row"] == 1) & (chips["col"] == 2)]
    assert partial["valid_fraction"].iloc[0] == pytest.approx(0.5)
    with rasterio.open(out / "holes.tif") as coarse:
        assert coarse.nodata == 255
        np.testing.assert_array_equal(coarse.read(1), [[255, 2, 2], [2, 2, 2]])
