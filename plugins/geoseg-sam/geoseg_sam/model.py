"""Loading SAM checkpoints, freezing the encoders, and the decoder weights geoseg saves.

A checkpoint is a hub id (``facebook/sam-vit-base``, ``-large``, ``-huge``) or a local
folder written by ``save_pretrained``. Only the mask decoder is ever trained, so a trained
model folder holds just ``decoder.safetensors`` plus settings naming the base checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.errors import WeightsError
from geoseg.weights import hub_unreachable, refuse_pickles
from geoseg_sam.preprocess import IMAGENET_MEAN, IMAGENET_STD, ModelInput

if TYPE_CHECKING:
    import torch
    from transformers import SamModel

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "facebook/sam-vit-base"
DECODER_PREFIX = "mask_decoder."
#: Chips per vision-encoder call: bounds the global-attention activations (about 1 GB per
#: 1024 px chip at ViT-B) without costing throughput.
ENCODER_BATCH = 4


def load_sam(checkpoint: str | None) -> tuple[SamModel, ModelInput]:
    """A ``SamModel`` in eval mode and its input frame, from a hub id or a local folder.

    Raises WeightsError with one line saying how to get the weights when they are missing.
    """
    from transformers import SamModel
    from transformers.utils import logging as hf_logging

    # The weight-loading bar would interleave with geoseg's own progress bars.
    hf_logging.disable_progress_bar()
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    folder = Path(checkpoint).expanduser()
    try:
        if folder.exists():
            refuse_pickles(folder, model_class="SamModel")
            _check_folder(folder)
            # Never the pickle fallback (pytorch_model.bin) a folder may also carry.
            model = SamModel.from_pretrained(folder, use_safetensors=True)
        elif _looks_like_path(checkpoint):
            raise WeightsError(
                f"{checkpoint}: no such folder; point --model at a SAM checkpoint folder, a "
                f"trained geoseg SAM model or a hub id such as {DEFAULT_CHECKPOINT}"
            )
        else:
            model = _from_hub(SamModel, checkpoint)
    except WeightsError:
        raise
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise WeightsError(
            f"cannot load SAM checkpoint {checkpoint}: {reason}; point --model at a folder "
            f"written by SamModel.save_pretrained or at a hub id such as {DEFAULT_CHECKPOINT}"
        ) from None
    if getattr(model.config, "model_type", None) != "sam":
        raise WeightsError(
            f"{checkpoint}: not a SAM checkpoint (model type {model.config.model_type})"
        )
    model.eval()
    return model, _model_input(model, checkpoint)


def _looks_like_path(checkpoint: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local folder."""
    return checkpoint.startswith((".", "/", "~")) or "\\" in checkpoint or checkpoint.count("/") > 1


def _check_folder(folder: Path) -> None:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise WeightsError(
            f"{folder}: not a SAM checkpoint folder (no config.json); give a folder written by "
            f"SamModel.save_pretrained, a trained geoseg SAM model, or a hub id such as "
            f"{DEFAULT_CHECKPOINT}"
        )


def _from_hub(model_cls, hub_id: str):
    """Load from the local Hugging Face cache first, and ask the hub only when it answers."""
    try:
        return model_cls.from_pretrained(hub_id, local_files_only=True, use_safetensors=True)
    except OSError:
        pass
    how = (
        f"on a connected machine run `hf download {hub_id}` and copy the cache into this "
        f"machine's HF_HOME ({_hf_home()}), or pass --model /path/to/a/local/sam/folder"
    )
    if hub_unreachable():
        raise WeightsError(
            f"SAM checkpoint {hub_id} is not in the local cache and the Hugging Face hub is unreachable: {how}"
        )
    try:
        return model_cls.from_pretrained(hub_id, use_safetensors=True)
    except OSError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise WeightsError(f"cannot download SAM checkpoint {hub_id} ({reason}): {how}") from None


def _hf_home() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HOME)


def _model_input(model: SamModel, checkpoint: str) -> ModelInput:
    """The input frame: the encoder's image size and the processor's normalisation, if saved."""
    size = int(model.config.vision_config.image_size)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    path = getattr(model, "name_or_path", None) or checkpoint
    processor_file = _processor_config(path)
    if processor_file is not None:
        config = json.loads(processor_file.read_text())
        mean = tuple(config.get("image_mean") or mean)
        std = tuple(config.get("image_std") or std)
    return ModelInput(size=size, mean=mean, std=std)


def _processor_config(checkpoint: str) -> Path | None:
    folder = Path(checkpoint).expanduser()
    if folder.is_dir():
        found = folder / "preprocessor_config.json"
        return found if found.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(checkpoint, "preprocessor_config.json")
    return Path(cached) if isinstance(cached, str) else None


def image_embeddings(model: SamModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Frozen-encoder embeddings (N, C, h, w) float32 of (N, 3, S, S) pixel values."""
    import torch

    with torch.no_grad():
        return torch.cat(
            [
                model.get_image_embeddings(pixel_values[start : start + ENCODER_BATCH]).float()
                for start in range(0, len(pixel_values), ENCODER_BATCH)
            ]
        )


def freeze_encoders(model: SamModel) -> None:
    """Freeze everything but the mask decoder."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(DECODER_PREFIX))


def decoder_state(model: SamModel) -> dict[str, torch.Tensor]:
    """The mask decoder's weights, keyed as in the full model (``mask_decoder.*``)."""
    return {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(DECODER_PREFIX)
    }


def save_decoder(model: SamModel, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the mask decoder's weights to a safetensors file."""
    from safetensors.torch import save_file

    save_file(decoder_state(model), str(path), metadata=metadata or {})


def load_decoder(model: SamModel, path: Path) -> None:
    """Load mask decoder weights saved by ``save_decoder`` into ``model``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise WeightsError(
            f"{path}: cannot read the decoder weights ({exc}); retrain the model"
        ) from None
    unexpected = [k for k in state if not k.startswith(DECODER_PREFIX)]
    if unexpected:
        raise WeightsError(
            f"{path}: holds weights other than the mask decoder ({unexpected[0]}, ...)"
        )
    expected = decoder_state(model)
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    if set(state) != set(expected) or any(tuple(state[k].shape) != shapes[k] for k in state):
        raise WeightsError(
            f"{path}: decoder weights do not fit the base checkpoint (different SAM size?); "
            f"predict with the checkpoint the model was trained from"
        )
    model.load_state_dict(state, strict=False)


def checkpoint_identity(model: SamModel) -> str:
    """A short content hash of the frozen encoder, so cached embeddings match their encoder.

    Hashes the configuration, the patch embedding and the neck: cheap, and any change of
    checkpoint changes them.
    """
    digest = hashlib.sha256()
    digest.update(model.config.vision_config.to_json_string(use_diff=False).encode())
    encoder = model.vision_encoder
    for tensor in (
        encoder.patch_embed.projection.weight,
        encoder.neck.conv1.weight,
        encoder.neck.conv2.weight,
    ):
        digest.update(tensor.detach().to("cpu").float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]
