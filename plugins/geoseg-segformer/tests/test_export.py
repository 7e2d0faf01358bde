"""geoseg export of a SegFormer trained through the CLI, then predict with the onnx backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("geoseg_onnx")

DEEPNESS_KEYS = {
    "model_type", "class_names", "resolution", "tiles_size", "tiles_overlap", "seg_thresh",
    "seg_small_segment", "standardization_mean", "standardization_std",
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(land_cover, invoke):
    """A LoRA SegFormer trained for one epoch through ``geoseg train`` on the NAIP chips."""
    model = land_cover.root / "model-export"
    invoke(
        "train", land_cover.chips, "--backend", "segformer", "-o", model,
        "--model", land_cover.checkpoint, "--epochs", 1, "--batch-size", 2, "--lr", 0.01, "-q",
    )  # fmt: skip
    return model


@pytest.fixture(scope="module")
def exported(trained, invoke):
    path = trained.parent / "model-export.onnx"
    result = invoke("export", "--model", trained, "-o", path, "--size", 64)
    assert "checked" in result.output
    return path


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_passes_the_checker_and_carries_deepness_metadata(exported, trained):
    onnx.checker.check_model(str(exported), full_check=True)
    graph = onnx.load(str(exported))
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["probabilities"]
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, 64, 64]
    meta = metadata(exported)
    assert set(meta) >= DEEPNESS_KEYS
    values = {k: json.loads(meta[k]) for k in DEEPNESS_KEYS}
    assert values["model_type"] == "Segmentor"
    # Deepness: a JSON dict of consecutive ids to names.
    assert values["class_names"] == {"0": "other", "1": "water", "2": "vegetation"}
    assert values["resolution"] == 500.0  # NAIP sample: 5 m pixels, in cm
    assert values["tiles_size"] == 64 and isinstance(values["tiles_overlap"], int)
    assert 0 <= values["tiles_overlap"] < 100
    assert isinstance(values["seg_thresh"], float) and isinstance(values["seg_small_segment"], int)
    assert values["standardization_mean"] == [0.0] * 4
    assert values["standardization_std"] == pytest.approx([1 / 255] * 4)
    own = json.loads(meta["geoseg"])
    manifest = json.loads((trained / "geoseg_model.json").read_text())
    assert own["input"]["bands"] == ["red", "green", "blue", "nir"] == manifest["bands"]
    assert own["classes"] == manifest["classes"]
    assert own["normalization"]["mean"] == pytest.approx(manifest["normalization"]["mean"])
    assert own["manifest"]["backend"]["name"] == "segformer"


def test_onnx_backend_gives_the_torch_mask_on_the_source_grid(
    exported, trained, land_cover, invoke
):
    out = land_cover.root / "export-compare"
    common = [land_cover.scene, "--bands", "naip", "--size", 64, "-q"]
    invoke("predict", *common, "--backend", "onnx", "--model", exported, "-o", out / "onnx.tif")
    invoke(
        "predict", *common, "--backend", "segformer", "--model", trained, "-o", out / "torch.tif"
    )
    with (
        rasterio.open(out / "onnx.tif") as a,
        rasterio.open(out / "torch.tif") as b,
        rasterio.open(land_cover.scene) as src,
    ):
        assert (a.crs, a.transform, a.shape) == (src.crs, src.transform, src.shape)
        assert a.tags()["GEOSEG_CLASSES"] == b.tags()["GEOSEG_CLASSES"]
        onnx_mask, torch_mask = a.read(1), b.read(1)
    differing = float(np.mean(onnx_mask != torch_mask))
    print(f"onnx vs torch: {differing:.5%} of pixels differ")
    assert differing <= 0.001


def test_fp16_dynamic_batch_export_has_half_weights_and_agrees(
    exported, trained, land_cover, invoke
):
    half = trained.parent / "model-export-fp16.onnx"
    invoke("export", "--model", trained, "-o", half, "--size", 64, "--fp16", "--dynamic-batch")
    graph = onnx.load(str(half))
    weights = [t for t in graph.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # free batch
    out = land_cover.root / "export-fp16"
    common = [land_cover.scene, "--bands", "naip", "--size", 64, "-q", "--backend", "onnx"]
    invoke("predict", *common, "--model", half, "-o", out / "half.tif")
    invoke("predict", *common, "--model", exported, "-o", out / "full.tif")
    with rasterio.open(out / "half.tif") as a, rasterio.open(out / "full.tif") as b:
        assert np.mean(a.read(1) != b.read(1)) <= 0.01


def test_a_complete_export_is_skipped_and_other_settings_redo_it(exported, trained, invoke):
    before = exported.stat().st_mtime_ns
    result = invoke("export", "--model", trained, "-o", exported, "--size", 64)
    assert "complete, skipped" in result.output
    assert exported.stat().st_mtime_ns == before


def test_wrong_chip_size_and_wrong_model_are_refused_in_one_line(
    exported, trained, land_cover, invoke
):
    result = invoke(
        "predict", land_cover.scene, "--bands", "naip", "--backend", "onnx", "--model", exported,
        "-o", land_cover.root / "bad.tif", "--size", 128, expect=2,
    )  # fmt: skip
    assert "takes 64 px chips" in result.output and len(result.output.strip().splitlines()) == 1
    result = invoke(
        "predict", land_cover.scene, "--backend", "onnx", "--model", trained,
        "-o", land_cover.root / "bad.tif", expect=2,
    )  # fmt: skip
    assert "use --backend segformer" in result.output  # the manifest names its backend


def test_onnx_probabilities_match_torch_within_tolerance(exported, trained, land_cover):
    from geoseg.backend import ChipBatch
    from geoseg.plugins import create_backend

    with rasterio.open(land_cover.scene) as src:
        pixels = src.read(window=((0, 64), (0, 128))).astype(np.float32)
    images = np.stack([pixels[:, :, :64], pixels[:, :, 64:]])
    valid = np.ones((2, 64, 64), bool)
    valid[1, :, 40:] = False  # a chip reaching past the raster edge
    images[~valid[:, None].repeat(4, axis=1)] = 0
    batch = ChipBatch(images, valid, ("red", "green", "blue", "nir"), tiles=())
    torch_backend, onnx_backend = create_backend("segformer"), create_backend("onnx")
    torch_backend.load(str(trained), "cpu")
    onnx_backend.load(str(exported), "cpu")
    expected, got = torch_backend.predict(batch), onnx_backend.predict(batch)
    assert got.shape == expected.shape == (2, 3, 64, 64) and got.dtype == np.float32
    print(f"onnx vs torch: max probability difference {np.abs(got - expected).max():.2e}")
    np.testing.assert_allclose(got, expected, atol=1e-4)
