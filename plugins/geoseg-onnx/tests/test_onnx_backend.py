"""The onnx backend on tiny ONNX graphs built with onnx.helper (no torch): Deepness-style
metadata, a model without metadata, bad files, and georeferenced output through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from geoseg.cli import cli  # noqa: E402


def water_graph(path, metadata=None, size=32, batch=None):
    """(N, 2, S, S) -> softmax of a 1x1 conv: water where green exceeds nir."""
    weights = np.array([[[[-1.0]], [[1.0]]], [[[1.0]], [[-1.0]]]], np.float32)  # (2, 2, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "water",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch or "n", 2, size, size])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, [batch or "n", 2, size, size]
            )
        ],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def scene(tmp_path):
    """A 48 x 40 two-band uint8 GeoTIFF in UTM: water (green > nir) in the left half."""
    green = np.full((40, 48), 60, np.uint8)
    nir = np.full((40, 48), 120, np.uint8)
    green[:, :24], nir[:, :24] = 120, 30
    path = tmp_path / "scene.tif"
    profile = dict(driver="GTiff", width=48, height=40, count=2, dtype="uint8",
                   crs="EPSG:32614", transform=from_origin(500000, 5200000, 2, 2))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack([nir, green]))  # band order nir, green: the model wants the other
    return path


def run(*args, expect=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


def test_a_deepness_model_predicts_georeferenced_classes_from_its_metadata(tmp_path, scene):
    # Deepness: 8-bit values / 255, then (x - mean) / std per band.
    model = water_graph(tmp_path / "water.onnx", {
        "model_type": "Segmentor", "class_names": {"0": "land", "1": "lake"},
        "standardization_mean": [0.0, 0.0], "standardization_std": [1.0, 1.0],
    }, batch=1)  # fmt: skip
    out = tmp_path / "mask.tif"
    run("predict", scene, "--bands", "nir=1,green=2", "--backend", "onnx", "--model", model,
        "-o", out, "--size", 32, "--overlap", 8, "-q", "--vector", tmp_path / "mask.gpkg")  # fmt: skip
    with rasterio.open(out) as mask, rasterio.open(scene) as src:
        assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
        classes = mask.read(1)
        assert "lake" in mask.tags()["GEOSEG_CLASSES"]
    # A model from elsewhere reads the first bands in file order: nir, green here, so
    # channel 0 is nir and the "lake" channel (1) fires where nir > green: the right half.
    assert (classes[:, 26:] == 1).all() and (classes[:, :22] == 0).all()


def test_a_model_without_metadata_gets_numbered_classes(tmp_path, scene):
    model = water_graph(tmp_path / "bare.onnx")
    out = tmp_path / "bare.tif"
    run("predict", scene, "--backend", "onnx", "--model", model, "-o", out, "--size", 32, "-q")
    with rasterio.open(out) as mask:
        assert [c["name"] for c in json.loads(mask.tags()["GEOSEG_CLASSES"])] == [
            "class_0", "class_1",
        ]  # fmt: skip


def test_corrupt_or_wrong_files_are_one_line(tmp_path, scene):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf at all")
    for model, expected in [
        (corrupt, "not a readable ONNX model"),
        (tmp_path, "not an .onnx file"),
        (tmp_path / "missing.onnx", "no such file"),
    ]:
        result = run("predict", scene, "--backend", "onnx", "--model", model,
                     "-o", tmp_path / "x.tif", expect=2)  # fmt: skip
        assert expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_chip_size_other_than_the_model_s_is_refused(tmp_path, scene):
    model = water_graph(tmp_path / "water.onnx", size=32)
    result = run("predict", scene, "--backend", "onnx", "--model", model,
                 "-o", tmp_path / "x.tif", "--size", 16, expect=2)  # fmt: skip
    assert "takes 32 px chips" in result.output


def test_providers_and_threads_are_options(tmp_path, scene):
    model = water_graph(tmp_path / "water.onnx", size=32)
    out = tmp_path / "threads.tif"
    run("predict", scene, "--backend", "onnx", "--model", model, "-o", out, "-q",
        "--option", "threads=1", "--option", "providers=CPUExecutionProvider")  # fmt: skip
    assert out.exists()
    result = run("predict", scene, "--backend", "onnx", "--model", model, "-o", out,
                 "--overwrite", "--option", "providers=NopeExecutionProvider", expect=2)  # fmt: skip
    assert "onnxruntime has no NopeExecutionProvider" in result.output


def test_sam_refuses_export_in_one_line(tmp_path):
    pytest.importorskip("geoseg_sam")
    folder = tmp_path / "sam-model"
    folder.mkdir()
    result = run(
        "export", "--model", folder, "--backend", "sam", "-o", tmp_path / "s.onnx", expect=2
    )
    assert "does not export to ONNX" in result.output and "prompts" in result.output
    assert not (tmp_path / "s.onnx").exists()
