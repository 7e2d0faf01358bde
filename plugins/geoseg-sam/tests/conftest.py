"""A tiny SAM saved like a hub checkpoint, shared by the SAM tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def write_tiny_sam(folder: Path) -> Path:
    """A 1 MB SAM: 128 px input, 8 px patches, 2 encoder layers, 64-channel embeddings."""
    from transformers import SamConfig, SamModel
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    size, patch, channels = 128, 8, 64
    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch,
            output_channels=channels,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=channels // 2,
            # SamVisionConfig's default (1e-10) leaves random encoders blind to the image.
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(
            hidden_size=channels, image_size=size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=channels,
            mlp_dim=2 * channels,
            num_hidden_layers=2,
            num_attention_heads=2,
            iou_head_hidden_dim=channels,
        ),
    )
    torch.manual_seed(0)
    SamModel(config).save_pretrained(folder)
    SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def save_tiny_sam():
    """``save_tiny_sam(folder)``: write the tiny SAM and its processor to ``folder``."""
    return write_tiny_sam
