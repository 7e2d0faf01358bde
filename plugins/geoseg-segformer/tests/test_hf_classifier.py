"""The ``hf-classifier`` backend through the CLI: one class per chip of 4-band NAIP chips.

Tiny random ``ViTConfig`` and ``ConvNextConfig`` classifiers saved with ``save_pretrained``
(never the hub) are trained with LoRA on chips tiled with ``--chip-labels majority``,
predicted onto the chip grid and evaluated per chip; a plain checkpoint saved with its
image processor answers as transformers' own processor + model do.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from safetensors.torch import load_file

CHIP = 32


def _save_vit(folder, num_channels=3, processor=False):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=CHIP, patch_size=8, num_channels=num_channels, num_labels=4,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    if processor:
        ViTImageProcessor(size={"height": CHIP, "width": CHIP}).save_pretrained(folder)
    return config


@pytest.fixture(scope="module")
def chip_set(land_cover, invoke):
    """36 chips of 32 px over the NAIP crop, each with its majority class."""
    chips = land_cover.root / "class-chips"
    if not chips.exists():
        invoke(
            "tile", land_cover.scene, "-o", chips, "--bands", "naip", "--size", CHIP,
            "--overlap", 0, "--labels", land_cover.labels, "--classes", land_cover.classes,
            "--chip-labels", "majority", "--val-fraction", 0.25, "-q",
        )  # fmt: skip
    return chips


def test_vit_lora_trains_saves_adapter_and_head_and_predicts_on_the_chips(
    land_cover, chip_set, invoke, tmp_path
):
    base = tmp_path / "tiny-vit"
    config = _save_vit(base)
    model = tmp_path / "model"
    result = invoke(
        "train", chip_set, "--backend", "hf-classifier", "-o", model, "--model", base,
        "--epochs", 2, "--batch-size", 8, "--lr", 0.01,
    )  # fmt: skip
    assert "LoRA on" in result.output and "ViTForImageClassification" in result.output

    settings = json.loads((model / "geoseg_segformer.json").read_text())
    classes = len(settings["classes"])
    hidden, layers, r = config.hidden_size, config.num_hidden_layers, 16
    lora = layers * 2 * r * (hidden + hidden)  # q_proj and v_proj: A (r x in) + B (out x r)
    head = hidden * classes + classes
    embedding = hidden * 4 * 8 * 8 + hidden  # the patch embedding widened to 4 bands
    trainable = lora + head + embedding
    assert settings["trainable_parameters"] == trainable
    frozen = settings["total_parameters"] - trainable
    assert frozen > 0 and settings["trainable_percent"] == pytest.approx(
        100 * trainable / settings["total_parameters"], abs=1e-3
    )
    assert settings["task"] == "classification"

    saved = load_file(model / "adapter_model.safetensors")
    assert not (model / "model.safetensors").exists()
    for key in saved:
        assert "lora_" in key or "classifier" in key or "patch_embeddings.projection" in key, key
    assert sum(v.numel() for v in saved.values()) == trainable
    manifest = json.loads((model / "geoseg_model.json").read_text())
    assert manifest["backend"]["name"] == "hf-classifier"
    assert manifest["bands"] == ["red", "green", "blue", "nir"]
    assert manifest["chip_size"] == CHIP

    pred = tmp_path / "pred" / "scene.gpkg"
    invoke(
        "predict", land_cover.scene, "-o", pred, "--backend", "hf-classifier", "--model",
        model, "--bands", "naip", "-q",
    )  # fmt: skip
    chips = gpd.read_file(pred, layer="chips")
    tiles = gpd.read_file(chip_set / "tiles.gpkg", layer="tiles")
    assert len(chips) == len(tiles) == 36
    by_cell = {(r.row, r.col): r.geometry.bounds for r in tiles.itertuples()}
    for row in chips.itertuples():
        assert row.geometry.bounds == pytest.approx(by_cell[(row.row, row.col)])
    probabilities = chips[[f"p_{c['name']}" for c in settings["classes"]]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    names = [c["name"] for c in settings["classes"]]
    assert list(chips["class_name"]) == [names[i] for i in probabilities.argmax(axis=1)]
    with (
        rasterio.open(land_cover.scene) as scene,
        rasterio.open(pred.with_suffix(".tif")) as coarse,
    ):
        assert coarse.transform == scene.transform * Affine.scale(CHIP)
        assert coarse.crs == scene.crs and (coarse.width, coarse.height) == (6, 6)
        assert coarse.bounds == pytest.approx(scene.bounds)

    report = tmp_path / "scores.json"
    result = invoke("evaluate", pred, chip_set, "--json", report, "-q")
    scores = json.loads(report.read_text())
    assert scores["chips"] == 36 and "chips 36" in result.output
    assert sum(map(sum, scores["confusion_matrix"]["counts"])) == 36


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_convnext_trains_and_predicts(land_cover, chip_set, invoke, tmp_path, lora):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    base = tmp_path / "tiny-convnext"
    ConvNextForImageClassification(
        ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    ).save_pretrained(base)
    model = tmp_path / "model"
    invoke(
        "train", chip_set, "--backend", "hf-classifier", "-o", model, "--model", base,
        "--epochs", 1, "--batch-size", 8, "--option", f"lora={str(lora).lower()}", "-q",
    )  # fmt: skip
    if lora:
        saved = load_file(model / "adapter_model.safetensors")
        assert any("pwconv1.lora_A" in k for k in saved)
        assert all("lora_" in k or "classifier" in k or "patch_embeddings" in k for k in saved)
    else:
        assert (model / "model.safetensors").is_file()
        assert not (model / "adapter_model.safetensors").exists()
    pred = tmp_path / "scene.gpkg"
    invoke(
        "predict", land_cover.scene, "-o", pred, "--backend", "hf-classifier", "--model",
        model, "--bands", "naip", "-q",
    )  # fmt: skip
    assert len(gpd.read_file(pred, layer="chips")) == 36


def test_a_hub_style_checkpoint_answers_as_its_image_processor_and_model(
    land_cover, invoke, tmp_path
):
    """8-bit RGB with a plain checkpoint: geoseg's class and probabilities per chip are
    AutoImageProcessor + AutoModelForImageClassification's on the same pixels."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    base = tmp_path / "hub-vit"
    _save_vit(base, processor=True)
    pred = tmp_path / "rgb.gpkg"
    invoke(
        "predict", land_cover.scene, "-o", pred, "--backend", "hf-classifier", "--model", base,
        "--bands", "naip", "--size", 64, "-q",
    )  # fmt: skip
    chips = gpd.read_file(pred, layer="chips").sort_values(["row", "col"])
    processor = AutoImageProcessor.from_pretrained(base)
    net = AutoModelForImageClassification.from_pretrained(base).eval()
    with rasterio.open(land_cover.scene) as scene:
        pixels = scene.read([1, 2, 3])  # red, green, blue, uint8
    images = [
        pixels[:, r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64].transpose(1, 2, 0)
        for r, c in zip(chips["row"], chips["col"], strict=True)
    ]
    with torch.no_grad():
        logits = net(**processor(images=images, return_tensors="pt")).logits
    expected = torch.softmax(logits, dim=1).numpy()
    names = [net.config.id2label[i] for i in range(net.config.num_labels)]
    got = chips[[f"p_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert list(chips["class_id"]) == expected.argmax(axis=1).tolist()

    result = invoke(
        "predict", land_cover.scene, "-o", tmp_path / "x.gpkg", "--backend", "hf-classifier",
        "--model", base, "--bands", "red=4,green=2,blue=3,x=1", "--size", 64,
    )  # fmt: skip
    assert "chips:" in result.output  # any band order: the model picks red, green, blue


def test_vit_base_lora_trains_the_share_of_the_lora_recipe():
    """ViT-base (shapes only, on the meta device) with 101 classes: rank-16 adapters on
    q_proj/v_proj plus the head are 667,493 weights, the 0.77% of Hugging Face's LoRA
    image-classification recipe (Food-101)."""
    from geoseg_segformer.classify import ClassificationOptions
    from geoseg_segformer.model import apply_lora, head_modules, parameter_counts
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):
        model = ViTForImageClassification(ViTConfig(num_labels=101))
        model = apply_lora(model, ClassificationOptions(), head_modules(model))
    trainable, total = parameter_counts(model)
    assert (trainable, total) == (667_493, 86_466_149)
    assert 100 * trainable / total == pytest.approx(0.772, abs=1e-3)
