"""The ``hf`` backend on five transformers segmentation architectures, through the CLI.

Each architecture is a tiny random config saved with ``save_pretrained`` to a folder
(never the hub) and loaded the way a user's checkpoint is: tile a 4-band raster with
labels, train one epoch with LoRA and one in full, predict georeferenced, evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from safetensors.torch import load_file

NAIP = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "naip_rgbn_2020.tif"
CLASSES = [
    {"id": 0, "name": "other", "color": "#a0a0a0"},
    {"id": 1, "name": "water", "color": "#1f78b4"},
    {"id": 2, "name": "vegetation", "color": "#33a02c"},
]
SCENE = 128  # pixels: four 64 px chips (MobileViTV2 needs 64: it downsamples 32x, then unfolds 2x2)
CHIP = 64


def _tiny_configs():
    from transformers import (
        BeitConfig,
        ConvNextConfig,
        DPTConfig,
        MobileViTV2Config,
        SegformerConfig,
        UperNetConfig,
    )

    vit = dict(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=CHIP, patch_size=8,
    )  # fmt: skip
    return {
        "segformer": SegformerConfig(
            num_encoder_blocks=2,
            depths=[1, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[1, 2],
            sr_ratios=[4, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
        ),  # fmt: skip
        "upernet-convnext": UperNetConfig(
            backbone_config=ConvNextConfig(
                num_stages=2,
                hidden_sizes=[8, 16],
                depths=[1, 1],
                out_features=["stage1", "stage2"],
            ),
            hidden_size=16,
            use_auxiliary_head=False,
            pool_scales=[1, 2],
        ),  # fmt: skip
        "mobilevitv2-deeplabv3": MobileViTV2Config(
            width_multiplier=0.25, aspp_out_channels=16, image_size=CHIP
        ),
        # With the auxiliary heads of the hub's ADE20K checkpoints (dropped when loaded).
        "beit": BeitConfig(
            **vit, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], auxiliary_channels=8
        ),
        "dpt": DPTConfig(
            **vit,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[8, 8, 16, 16],
            fusion_hidden_size=16,
            use_auxiliary_head=True,
            reassemble_factors=[4, 2, 1, 0.5],
        ),  # fmt: skip
    }


#: What the default LoRA targets are on each architecture in transformers 5.x.
EXPECTED_TARGETS = {
    "segformer": {"q_proj", "v_proj"},
    "upernet-convnext": {"pwconv1", "pwconv2"},
    "mobilevitv2-deeplabv3": {"qkv_proj.convolution"},
    "beit": {"q_proj", "v_proj"},
    "dpt": {"query", "value"},
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory, invoke):
    """A 128 px 4-band NAIP crop, labels from its own bands, and its chip set."""
    if not NAIP.exists():
        pytest.skip("../shared/data samples not present")
    root = tmp_path_factory.mktemp("hf_scene")
    with rasterio.open(NAIP) as src:
        window = Window(512, 192, SCENE, SCENE)
        data = src.read(window=window)
        profile = dict(src.profile, width=SCENE, height=SCENE)
        profile["transform"] = src.window_transform(window)
    image = root / "scene.tif"
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(data)
    red, green, _blue, nir = data.astype(np.float64)
    label = np.zeros((SCENE, SCENE), np.uint8)
    label[(nir - red) / np.maximum(nir + red, 1) > 0.3] = 2
    label[(green - nir) / np.maximum(green + nir, 1) > 0] = 1
    labels = root / "labels.tif"
    with rasterio.open(labels, "w", **dict(profile, count=1, nodata=255)) as dst:
        dst.write(label[None])
    classes = root / "classes.json"
    classes.write_text(json.dumps(CLASSES))
    chips = root / "chips"
    invoke(
        "tile", image, "-o", chips, "--bands", "naip", "--size", CHIP, "--overlap", 0,
        "--labels", labels, "--classes", classes, "--val-fraction", 0.25, "-q",
    )  # fmt: skip
    return root, image, labels, chips


@pytest.mark.parametrize("architecture", sorted(EXPECTED_TARGETS))
def test_architecture_trains_with_lora_and_in_full_then_predicts_and_evaluates(
    architecture, scene, invoke
):
    from transformers import AutoModelForSemanticSegmentation

    root, image, labels, chips = scene
    torch.manual_seed(0)
    checkpoint = root / f"tiny-{architecture}"
    AutoModelForSemanticSegmentation.from_config(_tiny_configs()[architecture]).save_pretrained(
        checkpoint
    )
    fractions = {}
    for mode in ("lora", "full"):
        model = root / f"model-{architecture}-{mode}"
        result = invoke(
            "train", chips, "--backend", "hf", "-o", model, "--model", checkpoint,
            "--epochs", 1, "--batch-size", 2, "--option", f"lora={str(mode == 'lora').lower()}",
        )  # fmt: skip
        assert "trainable parameters" in result.output
        manifest = json.loads((model / "geoseg_model.json").read_text())
        assert manifest["backend"]["name"] == "hf"
        assert manifest["bands"] == ["red", "green", "blue", "nir"]
        assert manifest["normalization"]["kind"] == "standardize"
        assert len(manifest["normalization"]["mean"]) == 4
        settings = manifest["backend_settings"]
        fractions[mode] = settings["trainable_parameters"] / settings["total_parameters"]

        out = root / f"pred-{architecture}-{mode}.tif"
        invoke(
            "predict",
            image,
            "-o",
            out,
            "--backend",
            "hf",
            "--model",
            model,
            "--bands",
            "naip",
            "-q",
        )
        with rasterio.open(out) as mask, rasterio.open(image) as src:
            assert mask.transform == src.transform and mask.crs == src.crs
            assert (mask.width, mask.height) == (src.width, src.height)
            assert set(np.unique(mask.read(1))) <= {0, 1, 2}
        scores = root / f"scores-{architecture}-{mode}.json"
        invoke("evaluate", out, labels, "--json", scores)
        assert 0 <= json.loads(scores.read_text())["overall_accuracy"] <= 1

        if mode == "lora":
            adapter = json.loads((model / "adapter_config.json").read_text())
            short = {
                ".".join(t.split(".")[-2:]) if t.endswith(".convolution") else t.split(".")[-1]
                for t in adapter["target_modules"]
            }
            assert short == EXPECTED_TARGETS[architecture]
            assert not (model / "model.safetensors").exists()
            saved = load_file(model / "adapter_model.safetensors")
        else:
            saved = load_file(model / "model.safetensors")
            assert not json.loads((model / "config.json").read_text()).get("use_auxiliary_head")
        assert not any("auxiliary_head" in key for key in saved)
    assert 0 < fractions["lora"] < fractions["full"] == 1.0


def test_lora_targets_override_and_a_name_that_matches_nothing(scene, invoke):
    from transformers import AutoModelForSemanticSegmentation

    root, _image, _labels, chips = scene
    checkpoint = root / "tiny-override"
    AutoModelForSemanticSegmentation.from_config(_tiny_configs()["dpt"]).save_pretrained(checkpoint)
    model = root / "model-override"
    invoke(
        "train", chips, "--backend", "hf", "-o", model, "--model", checkpoint, "--epochs", 1,
        "--option", "lora_targets=query,key,value", "-q",
    )  # fmt: skip
    targets = json.loads((model / "adapter_config.json").read_text())["target_modules"]
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"query", "key", "value"}

    result = invoke(
        "train", chips, "--backend", "hf", "-o", root / "never", "--model", checkpoint,
        "--epochs", 1, "--option", "lora_targets=query,valu", "-q", expect=2,
    )  # fmt: skip
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "lora_targets valu names no layer of DPTForSemanticSegmentation" in lines[0]
    assert "available:" in lines[0] and "query" in lines[0] and "value" in lines[0]
    assert not (root / "never").exists()


def test_mobilenetv2_deeplabv3_trains_in_full_and_refuses_lora_in_one_line(scene, invoke):
    from transformers import AutoModelForSemanticSegmentation, MobileNetV2Config

    root, image, labels, chips = scene
    checkpoint = root / "tiny-mobilenetv2"
    config = MobileNetV2Config(depth_multiplier=0.25, image_size=CHIP, num_labels=3)
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(checkpoint)
    for option in ("lora=true", "lora_targets=expand_1x1.convolution"):
        result = invoke(
            "train", chips, "--backend", "hf", "-o", root / "never", "--model", checkpoint,
            "--epochs", 1, "--option", option, "-q", expect=2,
        )  # fmt: skip
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "--option lora=false" in lines[0], result.output
    model = root / "model-mobilenetv2-full"
    invoke(
        "train", chips, "--backend", "hf", "-o", model, "--model", checkpoint, "--epochs", 1,
        "--batch-size", 2, "--option", "lora=false", "-q",
    )  # fmt: skip
    out = root / "pred-mobilenetv2.tif"
    invoke(
        "predict", image, "-o", out, "--backend", "hf", "--model", model, "--bands", "naip", "-q"
    )
    with rasterio.open(out) as mask, rasterio.open(image) as src:
        assert mask.transform == src.transform and mask.crs == src.crs
    invoke("evaluate", out, labels)


def test_a_fine_tuned_checkpoint_predicts_as_is_with_its_image_processor(scene, invoke):
    from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor

    root, image, _labels, _chips = scene
    checkpoint = root / "tiny-upernet-ade"
    config = _tiny_configs()["upernet-convnext"]
    config.id2label, config.label2id = {0: "road", 1: "tree"}, {"road": 0, "tree": 1}
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(checkpoint)
    SegformerImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(checkpoint)
    out = root / "pred-plain.tif"
    invoke(
        "predict", image, "-o", out, "--backend", "hf", "--model", checkpoint, "--bands", "naip",
        "--size", CHIP, "-q",
    )  # fmt: skip
    with rasterio.open(out) as mask, rasterio.open(image) as src:
        assert mask.transform == src.transform and mask.crs == src.crs
        assert set(np.unique(mask.read(1))) <= {0, 1}
        assert "tree" in json.dumps(mask.tags())
    from geoseg.plugins import create_backend

    backend = create_backend("hf")
    backend.load(str(checkpoint), device="cpu")
    settings = backend.model_settings  # the processor's rescale, mean and std, in 8-bit units
    assert settings.band_names == ("red", "green", "blue")
    assert settings.mean == pytest.approx((127.5,) * 3) and settings.std == pytest.approx(
        (63.75,) * 3
    )
