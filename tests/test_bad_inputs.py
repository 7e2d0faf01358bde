"""Bad inputs a new user gives: one line on stderr naming the file, exit 2, nothing left.

Each case is a real bad file or option (a GeoTIFF cut after 10 KB, a text file named
.tif, a crafted chip set), run through the command line as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from conftest import NAIP, requires_samples, write_raster

from geoseg.classes import ClassMap
from geoseg.dataset import ChipDataset
from geoseg.errors import InputFileError
from geoseg.styles import write_class_metadata

pytestmark = requires_samples()


def one_line_error(result, *names: str) -> str:
    """The single stderr line of a user error; it names every one of ``names``."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geoseg: error: "), lines[0]
    assert "Traceback" not in result.output
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def truncated(tmp_path) -> Path:
    """The first 10 KB of the real NAIP sample: header intact, blocks missing."""
    path = tmp_path / "cut.tif"
    with NAIP.open("rb") as src:
        path.write_bytes(src.read(10 * 1024))
    return path


@pytest.fixture
def damaged(tmp_path) -> Path:
    """The NAIP sample, complete in size, with its first image blocks overwritten."""
    data = bytearray(NAIP.read_bytes())
    data[600_000:900_000] = bytes(300_000)
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["tile", "{src}", "-o", "{out}/chips"],
        ["index", "{src}", "-o", "{out}/ndwi.tif", "--bands", "naip"],
        ["predict", "{src}", "-o", "{out}/mask.tif", "--backend", "spectral", "--bands", "naip"],
        ["prompts", "{src}", "-o", "{out}/prompts.gpkg", "--bands", "naip"],
        ["reproject", "{src}", "-o", "{out}/utm.tif", "--dst-crs", "EPSG:4326"],
        ["vectorize", "{src}", "-o", "{out}/polygons.gpkg"],
    ],
    ids=lambda c: c[0],
)
def test_truncated_geotiff_is_one_line_and_leaves_nothing(invoke, truncated, tmp_path, command):
    out = tmp_path / "out"
    args = [a.format(src=truncated, out=out) for a in command] + ["-q"]
    line = one_line_error(invoke(*args, expect=2), str(truncated))
    assert "truncated" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["tile", "reproject"])
def test_damaged_geotiff_fails_on_read_with_one_line(invoke, damaged, tmp_path, command):
    out = tmp_path / "out"
    target = out / "chips" if command == "tile" else out / "utm.tif"
    extra = ["--dst-crs", "EPSG:4326"] if command == "reproject" else []
    result = invoke(command, damaged, "-o", target, *extra, "-q", expect=2)
    line = one_line_error(result, str(damaged))
    assert "cannot read pixels" in line and "damaged" in line
    # no part file, and no empty images/ folder a re-run would take for a chip set
    assert not [p for p in out.rglob("*") if p.is_file()]
    assert not (out / "chips" / "images").exists()


def test_text_file_named_tif(invoke, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    for command in (
        ["vectorize", text, "-o", tmp_path / "v.gpkg"],
        ["tile", text, "-o", tmp_path / "chips"],
    ):
        line = one_line_error(invoke(*command, "-q", expect=2), str(text))
        assert "not a" in line and "recognized" in line
    assert not (tmp_path / "v.gpkg").exists() and not (tmp_path / "chips").exists()


def test_tile_size_too_big_for_memory_is_refused_before_reading(invoke, tmp_path):
    out = tmp_path / "chips"
    result = invoke("tile", NAIP, "-o", out, "--size", 100000, "-q", expect=2)
    line = one_line_error(result, "--size", NAIP.name)
    assert "GiB" in line
    assert not out.exists()


def test_band_preset_needing_more_bands_than_the_raster_has(invoke, tmp_path):
    one_band = write_raster(tmp_path / "gray.tif", np.ones((1, 32, 32), np.uint8))
    result = invoke("tile", one_band, "-o", tmp_path / "chips", "--bands", "naip", "-q", expect=2)
    line = one_line_error(result, str(one_band), "naip")
    assert "4 bands" in line and "has 1" in line
    assert not (tmp_path / "chips").exists()


def test_all_nodata_raster_writes_no_empty_chip_set(invoke, tmp_path):
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    out = tmp_path / "chips"
    result = invoke("tile", empty, "-o", out, "--size", 32, "--overlap", 0, "-q", expect=2)
    assert "no chip had valid pixels" in one_line_error(result, str(empty))
    assert not out.exists()


def test_reproject_unknown_extension_lists_the_known_ones(invoke, tmp_path):
    result = invoke(
        "reproject", NAIP, "-o", tmp_path / "out.xyz", "--dst-crs", "EPSG:4326", "-q", expect=2
    )
    line = one_line_error(result, "out.xyz")
    assert ".tif" in line
    assert not (tmp_path / "out.xyz").exists()
    assert not list(tmp_path.iterdir())


def test_model_for_a_backend_without_weights_is_refused(invoke, tmp_path):
    result = invoke(
        "predict",
        NAIP,
        "-o",
        tmp_path / "m.tif",
        "--backend",
        "spectral",
        "--bands",
        "naip",
        "--model",
        "nvidia/mit-b0",
        "-q",
        expect=2,
    )
    assert "loads no model weights" in one_line_error(result, "spectral", "--model")
    assert not (tmp_path / "m.tif").exists()


def test_predict_checks_the_vector_path_before_any_work(invoke, tmp_path):
    (tmp_path / "afile").write_text("")
    result = invoke(
        "predict",
        NAIP,
        "-o",
        tmp_path / "m.tif",
        "--backend",
        "spectral",
        "--bands",
        "naip",
        "--vector",
        tmp_path / "afile" / "v.gpkg",
        "-q",
        expect=2,
    )
    one_line_error(result, "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    ("option", "words"),
    [(["--device", "tpu"], "--device"), (["--batch-size", "0"], "--batch-size")],
)
def test_click_usage_errors_are_one_line(invoke, tmp_path, option, words):
    result = invoke(
        "predict", NAIP, "-o", tmp_path / "m.tif", "--backend", "spectral", *option, expect=2
    )
    one_line_error(result, words, "geoseg predict --help")
    assert "Usage:" not in result.output


def test_png_without_georeferencing_prints_only_geoseg_line(tmp_path):
    import rasterio

    png = tmp_path / "photo.png"
    with (
        pytest.warns(rasterio.errors.NotGeoreferencedWarning),
        rasterio.open(png, "w", driver="PNG", width=32, height=32, count=3, dtype="uint8") as dst,
    ):
        dst.write(np.zeros((3, 32, 32), np.uint8))
    run = subprocess.run(
        [sys.executable, "-m", "geoseg", "tile", str(png), "-o", str(tmp_path / "chips"), "-q"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"geoseg: error: {png}: raster has no CRS; assign one first, e.g. gdal_edit.py "
        f"-a_srs EPSG:32614 photo.png"
    ]


def test_label_raster_whose_nodata_is_a_class_warns(tmp_path, caplog):
    from geoseg.evaluate import evaluate_mask

    values = np.zeros((32, 32), np.uint8)
    values[:, 16:] = 1
    classes = ClassMap.from_json({"0": "other", "1": "water"})
    pred = write_raster(tmp_path / "pred.tif", values)
    with __import__("rasterio").open(pred, "r+") as dst:
        write_class_metadata(dst, classes)
    labels = write_raster(tmp_path / "labels.tif", values, nodata=0)
    with caplog.at_level("WARNING"):
        result = evaluate_mask(pred, labels)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "nodata value 0 is also class 0 (other)" in warnings[0]
    assert str(labels) in warnings[0]
    # the class dropped out of the labels: it is marked, not scored 0
    assert result.unreferenced.tolist() == [True, False]


# Chip sets -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chip_set(tmp_path_factory) -> Path:
    """A small chip set cut from the NAIP sample by geoseg tile."""
    from click.testing import CliRunner

    from geoseg.cli import cli

    out = tmp_path_factory.mktemp("set") / "chips"
    result = CliRunner().invoke(
        cli, ["tile", str(NAIP), "-o", str(out), "--size", "256", "--bands", "naip", "-q"]
    )
    assert result.exit_code == 0, result.output
    return out


def crafted(chip_set: Path, tmp_path: Path, *, info=None, chip=None) -> Path:
    root = tmp_path / "crafted"
    shutil.copytree(chip_set, root)
    if info is not None:
        (root / "dataset.json").write_text(json.dumps(info))
    if chip is not None:
        table = pyogrio.read_dataframe(root / "tiles.gpkg", layer="tiles")
        table.loc[0, "chip"] = chip
        pyogrio.write_dataframe(table, root / "tiles.gpkg", layer="tiles")
    return root


@pytest.mark.parametrize(
    "name", ["../outside/x.tif", "/etc/passwd", "../../../../etc/passwd", "images/../../x.tif"]
)
def test_chip_paths_must_stay_inside_the_set(chip_set, tmp_path, name):
    root = crafted(chip_set, tmp_path, chip=name)
    with pytest.raises(InputFileError, match="outside the chip set"):
        ChipDataset.open(root)


def test_chip_link_out_of_the_set_is_refused(chip_set, tmp_path):
    root = crafted(chip_set, tmp_path)
    outside = tmp_path / "secret.tif"
    shutil.copy(NAIP, outside)
    first = sorted((root / "images").iterdir())[0]
    first.unlink()
    first.symlink_to(outside)
    with pytest.raises(InputFileError, match="outside the chip set"):
        ChipDataset.open(root)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda info: {}, "'format', 'bands', 'chip_size', 'classes' missing"),
        (lambda info: {k: v for k, v in info.items() if k != "bands"}, "'bands' missing"),
        (lambda info: {**info, "format": 99}, "format 99 is newer"),
        (lambda info: {**info, "chip_size": "big"}, "'chip_size'"),
        (lambda info: [1, 2], "expected a JSON object"),
    ],
    ids=["empty", "no-bands", "newer-format", "bad-type", "not-an-object"],
)
def test_dataset_json_schema_names_what_is_wrong(chip_set, tmp_path, invoke, change, message):
    info = json.loads((chip_set / "dataset.json").read_text())
    root = crafted(chip_set, tmp_path, info=change(info))
    with pytest.raises(InputFileError, match="dataset.json"):
        ChipDataset.open(root)
    result = invoke("train", root, "-o", tmp_path / "model", "--backend", "segformer", expect=2)
    assert message in one_line_error(result, str(root / "dataset.json"))
    assert not (tmp_path / "model").exists()


def test_traversal_in_a_chip_set_stops_train_in_one_line(chip_set, tmp_path, invoke):
    root = crafted(chip_set, tmp_path, chip="../../../../etc/passwd")
    result = invoke("train", root, "-o", tmp_path / "model", "--backend", "segformer", expect=2)
    one_line_error(result, "tiles.gpkg", "../../../../etc/passwd", "outside the chip set")
    assert not (tmp_path / "model").exists()


# Evaluate ------------------------------------------------------------------------------


@pytest.fixture
def water_mask(tmp_path) -> Path:
    values = np.zeros((40, 40), np.uint8)
    values[:, :20] = 1
    path = write_raster(tmp_path / "pred.tif", values)
    with __import__("rasterio").open(path, "r+") as dst:
        write_class_metadata(dst, ClassMap.from_names(["background", "water"]))
    return path


def test_evaluate_labels_that_do_not_overlap(invoke, tmp_path, water_mask):
    far = gpd.GeoDataFrame(
        {"class_id": [1]}, geometry=[shapely.box(0, 0, 100, 100)], crs="EPSG:32614"
    )
    far.to_file(tmp_path / "far.gpkg")
    result = invoke("evaluate", water_mask, tmp_path / "far.gpkg", "-q", expect=2)
    assert "do not overlap" in one_line_error(result, "far.gpkg")


def test_evaluate_empty_labels(invoke, tmp_path, water_mask):
    empty = gpd.GeoDataFrame({"class_id": []}, geometry=[], crs="EPSG:32614")
    empty.to_file(tmp_path / "empty.gpkg")
    result = invoke(
        "evaluate",
        water_mask,
        tmp_path / "empty.gpkg",
        "--json",
        tmp_path / "s.json",
        "-q",
        expect=2,
    )
    assert "no label polygons" in one_line_error(result, "empty.gpkg")
    assert not (tmp_path / "s.json").exists()
