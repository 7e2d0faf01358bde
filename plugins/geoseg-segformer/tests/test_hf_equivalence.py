"""geoseg's ``hf`` backend against Hugging Face's own pipeline, on every architecture it runs.

Each architecture is a tiny random model saved with the image processor its hub
checkpoints carry (sizes scaled down), loaded the way a user's hub id or folder is. The
reference is ``AutoImageProcessor -> model -> post_process_semantic_segmentation`` (and
``pipeline("image-segmentation")``) on an 8-bit RGB chip of the NAIP sample; geoseg is
``geoseg predict --backend hf --bands rgb`` on the same chip written as a GeoTIFF, once
at the processor's size and once at another size, which the processor resizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window

NAIP = Path(__file__).resolve().parents[3] / "examples" / "data" / "naip_rgbn_2020.tif"
#: The processors' size (the hub's are 512 or 640): ViT-style models are built for it.
SIZE = 64
#: MobileNet and MobileViT see 1/32 of it: 4 x 4 logits.
MOBILE_SIZE = 128
#: Chip sizes as a multiple of the processor's: its own, and one it resizes (not a multiple).
CHIPS = {"processor size": 1.0, "other size": 1.5625}
LABELS = {0: "road", 1: "tree", 2: "water"}
MIN_AGREEMENT = 0.999
#: Largest difference allowed between log-probabilities (logits up to a per-pixel shift):
#: the random MobileNetV2 turns the float32 rounding of normalised pixels (6e-8) into 1e-4.
LOG_PROB_TOLERANCE = 1e-3


def _architectures():
    """Tiny config and processor per architecture, the processor set as on the hub."""
    from transformers import (
        BeitConfig,
        BeitImageProcessor,
        ConvNextConfig,
        Data2VecVisionConfig,
        DPTConfig,
        DPTImageProcessor,
        MobileNetV2Config,
        MobileNetV2ImageProcessor,
        MobileViTImageProcessor,
        MobileViTV2Config,
        SegformerConfig,
        SegformerImageProcessor,
        UperNetConfig,
    )

    square = {"height": SIZE, "width": SIZE}
    mobile = {"height": MOBILE_SIZE, "width": MOBILE_SIZE}
    vit = dict(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=SIZE, patch_size=8,
    )  # fmt: skip
    half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return {
        # nvidia/segformer-b0-finetuned-ade-512-512
        "segformer": (
            SegformerConfig(
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
            SegformerImageProcessor(size=square),
        ),
        # openmmlab/upernet-convnext-small
        "upernet-convnext": (
            UperNetConfig(
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
            SegformerImageProcessor(size=square),
        ),
        # microsoft/beit-base-finetuned-ade-640-640
        "beit": (
            BeitConfig(**vit, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], auxiliary_channels=8),
            BeitImageProcessor(size=square, do_center_crop=False, **half),
        ),
        # facebook/data2vec-vision-base-ft1k (BEiT's processor)
        "data2vec-vision": (
            Data2VecVisionConfig(
                **vit, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], auxiliary_channels=8
            ),
            BeitImageProcessor(size=square, do_center_crop=False, **half),
        ),
        # Intel/dpt-large-ade (bicubic)
        "dpt": (
            DPTConfig(
                **vit,
                backbone_out_indices=[0, 1, 2, 3],
                neck_hidden_sizes=[8, 8, 16, 16],
                fusion_hidden_size=16,
                use_auxiliary_head=True,
                reassemble_factors=[4, 2, 1, 0.5],
            ),  # fmt: skip
            DPTImageProcessor(size=square, keep_aspect_ratio=False, **half),
        ),
        # apple/deeplabv3-mobilevit-small: shortest edge, centre crop, BGR, no normalisation
        "mobilevitv2-deeplabv3": (
            MobileViTV2Config(width_multiplier=0.25, aspp_out_channels=16, image_size=MOBILE_SIZE),
            MobileViTImageProcessor(
                size={"shortest_edge": MOBILE_SIZE}, crop_size=mobile, do_flip_channel_order=True
            ),
        ),
        # google/deeplabv3_mobilenet_v2_1.0_513
        "mobilenetv2-deeplabv3": (
            MobileNetV2Config(depth_multiplier=0.25, image_size=MOBILE_SIZE),
            MobileNetV2ImageProcessor(
                size={"shortest_edge": MOBILE_SIZE}, crop_size=mobile, **half
            ),
        ),
    }


ARCHITECTURES = sorted(_architectures())


@pytest.fixture(scope="module")
def naip_chips(tmp_path_factory):
    """``naip_chips(size)``: a GeoTIFF of the 4-band NAIP sample and its 8-bit RGB (H, W, 3)."""
    root = tmp_path_factory.mktemp("hf-equivalence")
    written = {}

    def chip(size: int) -> tuple[Path, np.ndarray]:
        if size not in written:
            with rasterio.open(NAIP) as src:
                window = Window(300, 240, size, size)
                data = src.read(window=window)
                profile = src.profile | dict(
                    width=size, height=size, transform=src.window_transform(window)
                )
            path = root / f"chip-{size}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
            written[size] = (path, np.ascontiguousarray(data[:3].transpose(1, 2, 0)))
        return written[size]

    chip.root = root
    return chip


def save_checkpoint(folder: Path, architecture: str) -> tuple[Path, int]:
    """The tiny model and its processor in ``folder``; and the processor's size."""
    from transformers import AutoModelForSemanticSegmentation

    config, processor = _architectures()[architecture]
    config.id2label = LABELS
    config.label2id = {name: i for i, name in LABELS.items()}
    torch.manual_seed(0)
    model = AutoModelForSemanticSegmentation.from_config(config)
    # At the configs' initializer range the random models barely depend on the image:
    # weights drawn at unit gain, batch norm statistics measured on the sample and the
    # classes' logits centred on the test chips keep them of order one.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and "embeddings" not in name:
                weight.copy_(
                    torch.randn(weight.shape, generator=generator) / weight[0].numel() ** 0.5
                )
    size = int(config.image_size) if hasattr(config, "image_size") else SIZE
    with rasterio.open(NAIP) as src:
        sample = src.read((1, 2, 3), window=Window(300, 240, 4 * size, size)).astype(np.float32)
    batch = torch.from_numpy(np.stack(np.split(sample, 4, axis=-1)) / 127.5 - 1.0)
    for norm in model.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.momentum = None
            norm.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(pixel_values=batch)
        model.eval()
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        if classifier.bias is not None:
            with rasterio.open(NAIP) as src:
                other = int(size * CHIPS["other size"])
                wider = src.read((1, 2, 3), window=Window(300, 240, other, other))
            wider = torch.from_numpy(wider[None].astype(np.float32) / 127.5 - 1.0)
            wider = F.interpolate(wider, size=(size, size), mode="bilinear", antialias=True)
            chips = torch.cat([batch[:1], wider])
            classifier.bias -= model(pixel_values=chips).logits.mean(dim=(0, 2, 3))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, size


def reference(folder: Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (H, W) from ``post_process_semantic_segmentation`` and log-probabilities
    (C, H, W) of the logits it resamples, for an 8-bit RGB image (H, W, 3)."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    height, width = image.shape[:2]
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    classes = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])
    logits = F.interpolate(outputs.logits, (height, width), mode="bilinear", align_corners=False)
    return classes[0].numpy(), torch.log_softmax(logits[0].double(), dim=0).numpy()


def pipeline_classes(folder: Path, image: np.ndarray) -> np.ndarray:
    """Class ids (H, W) from ``transformers.pipeline("image-segmentation")``."""
    from PIL import Image
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(folder), device="cpu")
    ids = {name: i for i, name in LABELS.items()}
    classes = np.full(image.shape[:2], 255, np.uint8)
    for segment in segmenter(Image.fromarray(image), subtask="semantic"):
        classes[np.asarray(segment["mask"]) > 0] = ids[segment["label"]]
    return classes


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zero_shot_checkpoint_predicts_what_its_processor_and_pipeline_predict(
    architecture, naip_chips, invoke
):
    folder, size = save_checkpoint(naip_chips.root / f"tiny-{architecture}", architecture)
    for name, factor in CHIPS.items():
        chip, image = naip_chips(int(size * factor))
        expected, log_probabilities = reference(folder, image)
        # Not a trivial reference: two classes or more, and log-probabilities that vary
        # over the chip far beyond the tolerance.
        assert len(np.unique(expected)) >= 2
        assert np.ptp(log_probabilities, axis=(1, 2)).max() > 10 * LOG_PROB_TOLERANCE
        out = naip_chips.root / f"pred-{architecture}-{chip.stem}.tif"
        invoke(
            "predict", chip, "-o", out, "--backend", "hf", "--model", folder, "--bands", "rgb",
            "--size", len(image), "--overlap", 0, "--probabilities", "--device", "cpu", "-q",
        )  # fmt: skip
        with rasterio.open(out) as mask, rasterio.open(chip) as src:
            assert mask.transform == src.transform and mask.crs == src.crs
            predicted = mask.read(1)
        with rasterio.open(out.with_name(f"{out.stem}_probabilities.tif")) as probabilities:
            ours = np.log(probabilities.read().astype(np.float64))
        same = float((predicted == expected).mean())
        difference = float(np.abs(ours - log_probabilities).max())
        piped = float((pipeline_classes(folder, image) == expected).mean())
        print(
            f"hf {architecture} {name} {len(image)} px: {100 * same:.4f}% "
            f"(pipeline {100 * piped:.4f}%), max log-probability difference {difference:.1e} of range {np.abs(log_probabilities).max():.1f}"
        )
        assert piped == 1.0
        assert same >= MIN_AGREEMENT
        assert difference <= LOG_PROB_TOLERANCE


def test_training_can_normalise_bands_as_the_checkpoint_was_pretrained(land_cover, invoke):
    """``normalization=checkpoint``: the processor's mean and std instead of the chips'."""
    import json

    model = land_cover.root / "model-checkpoint-normalization"
    invoke(
        "train", land_cover.chips, "--backend", "hf", "-o", model, "--model",
        land_cover.checkpoint, "--epochs", 1, "--batch-size", 4,
        "--option", "normalization=checkpoint", "-q",
    )  # fmt: skip
    saved = json.loads((model / "geoseg_segformer.json").read_text())["normalization"]
    imagenet_mean = [0.485 * 255, 0.456 * 255, 0.406 * 255]
    imagenet_std = [0.229 * 255, 0.224 * 255, 0.225 * 255]
    # red, green, blue as ImageNet (no processor saved); nir as their mean.
    assert saved["mean"] == pytest.approx(imagenet_mean + [sum(imagenet_mean) / 3])
    assert saved["std"] == pytest.approx(imagenet_std + [sum(imagenet_std) / 3])
    manifest = json.loads((model / "geoseg_model.json").read_text())
    assert manifest["normalization"]["mean"] == pytest.approx(saved["mean"])


def test_the_export_graph_of_a_bgr_checkpoint_keeps_its_channel_order(naip_chips):
    """What ``geoseg export`` wraps a plain MobileViT checkpoint in hands it BGR, as its
    processor does (torch's ONNX exporter itself cannot trace MobileViTV2 yet)."""
    from geoseg_segformer.export import _checkpoint_input, probability_module
    from geoseg_segformer.model import load_for_prediction

    folder, size = save_checkpoint(naip_chips.root / "tiny-bgr-export", "mobilevitv2-deeplabv3")
    _chip, image = naip_chips(size)
    expected, log_probabilities = reference(folder, image)
    net, settings = load_for_prediction(str(folder), "cpu")
    flip = _checkpoint_input(str(folder)).flip_channels
    module = probability_module(net, settings.mean, settings.std, flip)
    with torch.no_grad():
        probabilities = module(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))
    probabilities = probabilities[0].double().numpy()
    assert flip
    assert float((probabilities.argmax(axis=0) == expected).mean()) >= MIN_AGREEMENT
    assert float(np.abs(np.log(probabilities) - log_probabilities).max()) <= LOG_PROB_TOLERANCE
