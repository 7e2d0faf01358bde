"""Model pieces on a tiny SegFormer: band widening, LoRA targets, options."""

from __future__ import annotations

import pytest
import torch
from geoseg_segformer.model import adapt_input_bands, apply_lora, input_conv, lora_targets
from geoseg_segformer.options import SegformerOptions

from geoseg.config import build_options
from geoseg.errors import BandError, OptionError


@pytest.fixture
def segformer(tiny_config):
    from transformers import SegformerForSemanticSegmentation

    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(tiny_config(num_labels=3)).eval()


def test_rgb_bands_keep_the_pretrained_embedding(segformer):
    _, conv = input_conv(segformer)
    assert adapt_input_bands(segformer, ("red", "green", "blue")) is None
    assert input_conv(segformer)[1] is conv


def test_widened_embedding_keeps_rgb_filters_and_starts_nir_from_their_mean(segformer):
    name, conv = input_conv(segformer)
    rgb = conv.weight.detach().clone()
    assert adapt_input_bands(segformer, ("blue", "red", "nir", "green")) == name
    wide = input_conv(segformer)[1].weight.detach()
    assert wide.shape[1] == 4 and segformer.config.num_channels == 4
    assert torch.equal(wide[:, 0], rgb[:, 2])  # blue
    assert torch.equal(wide[:, 1], rgb[:, 0])  # red
    assert torch.equal(wide[:, 3], rgb[:, 1])  # green
    assert torch.allclose(wide[:, 2], rgb.mean(dim=1))  # nir
    assert segformer(pixel_values=torch.zeros(1, 4, 32, 32)).logits.shape == (1, 3, 8, 8)


def test_grayscale_embedding_equals_feeding_the_band_as_rgb(segformer):
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        as_rgb = segformer(pixel_values=image.expand(1, 3, 32, 32)).logits
        adapt_input_bands(segformer, ("gray",))
        as_gray = segformer(pixel_values=image).logits
    torch.testing.assert_close(as_gray, as_rgb, atol=1e-5, rtol=1e-4)


def test_a_checkpoint_for_other_bands_is_refused(segformer):
    adapt_input_bands(segformer, ("red", "green", "blue", "nir"))
    with pytest.raises(BandError, match="takes 4 bands but the chips have 2"):
        adapt_input_bands(segformer, ("red", "nir"))


def test_lora_targets_are_found_by_name_and_only_they_train(segformer):
    targets = lora_targets(segformer)
    names = {n.rsplit(".", 1)[-1] for n, _ in segformer.named_modules()}
    # transformers 5.x calls them q_proj/v_proj, 4.x query/value: whichever is installed.
    assert targets in (["q_proj", "v_proj"], ["query", "value"])
    assert set(targets) <= names
    model = apply_lora(segformer, SegformerOptions(r=4), ["decode_head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for name in trainable:
        assert "lora_" in name or "decode_head.modules_to_save" in name, name
    assert any(f"{targets[0]}.lora_A" in n for n in trainable)
    assert not any("k_proj.lora" in n or "key.lora" in n for n in trainable)


def test_unknown_lora_targets_name_the_option_and_the_available_layers(segformer):
    with pytest.raises(OptionError, match="lora_targets nonexistent names no layer.*q_proj"):
        apply_lora(segformer, SegformerOptions(lora_targets=("nonexistent",)), ["decode_head"])


def test_plain_checkpoints_are_read_with_their_image_processor(segformer, tmp_path):
    from geoseg_segformer.model import image_normalization
    from transformers import AutoImageProcessor, SegformerImageProcessor

    segformer.save_pretrained(tmp_path)
    assert image_normalization(str(tmp_path), 3)[0] == pytest.approx((123.675, 116.28, 103.53))
    SegformerImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path)
    assert tuple(AutoImageProcessor.from_pretrained(tmp_path).image_mean) == (0.5,) * 3
    mean, std = image_normalization(str(tmp_path), 3)
    assert mean == pytest.approx((127.5,) * 3) and std == pytest.approx((63.75,) * 3)


def test_options_from_key_value_pairs_are_validated_by_field():
    options = build_options(SegformerOptions, ["r=8", "alpha=32", "lora_targets=q_proj,k_proj"])
    assert (options.r, options.alpha, options.lora_targets) == (8, 32.0, ("q_proj", "k_proj"))
    assert build_options(SegformerOptions, ["lora=false"]).lora is False
    with pytest.raises(OptionError, match="r must be a positive integer"):
        build_options(SegformerOptions, ["r=0"])
    with pytest.raises(OptionError, match="bias"):
        build_options(SegformerOptions, ["bias=some"])
    with pytest.raises(OptionError, match="dropout"):
        build_options(SegformerOptions, ["dropout=1.5"])
    # The training core's options are the backend's too, validated the same way.
    assert build_options(SegformerOptions, ["warmup=0.2"]).warmup == 0.2
    with pytest.raises(OptionError, match="option warmup is a fraction"):
        build_options(SegformerOptions, ["warmup=2"])
    with pytest.raises(OptionError, match="warmup_fraction"):
        build_options(SegformerOptions, ["warmup_fraction=0.1"])


def test_a_hub_checkpoint_in_the_cache_loads_offline(tiny_config, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from geoseg_segformer.model import load_pretrained
    from transformers import SegformerForSemanticSegmentation

    from geoseg.classes import ClassMap
    from geoseg.errors import WeightsError

    # The layout `hf download geoseg/tiny-segformer` leaves in the Hugging Face cache.
    repo = tmp_path / "hub" / "models--geoseg--tiny-segformer"
    SegformerForSemanticSegmentation(tiny_config()).save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = load_pretrained("geoseg/tiny-segformer", ClassMap.from_names(["a", "b", "c"]))
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(WeightsError, match="hf download geoseg/other-model"):
        load_pretrained("geoseg/other-model")
