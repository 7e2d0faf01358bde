"""Land-cover chips cut from the real NAIP sample, and a tiny SegFormer saved like a hub model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[3]
NAIP = REPO.parent / "shared" / "data" / "naip_rgbn_2020.tif"
CLASSES = [
    {"id": 0, "name": "other", "color": "#a0a0a0"},
    {"id": 1, "name": "water", "color": "#1f78b4"},
    {"id": 2, "name": "vegetation", "color": "#33a02c"},
]
CHIP = 64


def make_tiny_config(**overrides):
    """A SegFormer of two stages with a few thousand weights (mit-b0 has 3.7 million)."""
    from transformers import SegformerConfig

    settings = dict(
        num_encoder_blocks=2,
        depths=[1, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        sr_ratios=[4, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
    )
    settings.update(overrides)
    return SegformerConfig(**settings)


@pytest.fixture(scope="session")
def tiny_config():
    """Factory of tiny ``SegformerConfig`` objects (keyword arguments override)."""
    return make_tiny_config


def invoke_cli(*args, expect: int | None = 0):
    """Run ``geoseg ARGS...`` in-process and return the click Result (exit code checked)."""
    from geoseg.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if expect is not None and result.exit_code != expect:
        raise AssertionError(
            f"geoseg {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
            f"{result.output}\n{result.exc_info if result.exception else ''}"
        )
    return result


@pytest.fixture(scope="session")
def invoke():
    """``invoke("train", ..., expect=0)``: run the geoseg command line in-process."""
    return invoke_cli


@pytest.fixture(scope="session")
def land_cover(tmp_path_factory) -> SimpleNamespace:
    """A 192 px crop of the NAIP sample, a 3-class label raster over it, a chip set, and a
    tiny checkpoint folder.

    Labels come from the imagery itself (NDWI > 0 water, NDVI > 0.3 vegetation, else
    other), so a model can learn them from the four bands.
    """
    import torch
    from transformers import SegformerForSemanticSegmentation

    if not NAIP.exists():
        pytest.skip("../shared/data samples not present")
    root = tmp_path_factory.mktemp("land_cover")
    size = 3 * CHIP
    with rasterio.open(NAIP) as src:
        window = Window(512, 192, size, size)
        data = src.read(window=window)
        profile = src.profile
        profile.update(width=size, height=size, transform=src.window_transform(window))
    scene = root / "scene.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
    red, green, _blue, nir = data.astype(np.float64)
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    label = np.zeros((size, size), np.uint8)
    label[ndvi > 0.3] = 2
    label[ndwi > 0] = 1
    labels = root / "labels.tif"
    with rasterio.open(labels, "w", **dict(profile, count=1, nodata=255)) as dst:
        dst.write(label[None])
    classes = root / "classes.json"
    classes.write_text(json.dumps(CLASSES))

    torch.manual_seed(0)
    checkpoint = root / "tiny-segformer"
    SegformerForSemanticSegmentation(make_tiny_config()).save_pretrained(checkpoint)

    chips = root / "chips"
    invoke_cli(
        "tile", scene, "-o", chips, "--bands", "naip", "--size", CHIP, "--overlap", 0,
        "--labels", labels, "--classes", classes, "--val-fraction", 0.25, "-q",
    )  # fmt: skip
    return SimpleNamespace(
        root=root, scene=scene, labels=labels, label=label, classes=classes,
        checkpoint=checkpoint, chips=chips,
    )  # fmt: skip


@pytest.fixture(scope="session")
def lora_model(land_cover) -> Path:
    """A LoRA model trained for six epochs through ``geoseg train`` on the 4-band chips."""
    model = land_cover.root / "model-lora"
    invoke_cli(
        "train", land_cover.chips, "--backend", "segformer", "-o", model,
        "--model", land_cover.checkpoint, "--epochs", 6, "--batch-size", 2, "--lr", 0.01, "-q",
    )  # fmt: skip
    return model
