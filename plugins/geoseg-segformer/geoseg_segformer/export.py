"""ONNX export of SegFormer (and other Hugging Face segmentation) models for ``geoseg export``.

The exported graph is the model with LoRA adapters merged, wrapped so that it reads raw
source values of the model's bands, standardises them per band as ``predict`` does,
and returns softmax class probabilities upsampled to the chip size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

from geoseg.errors import BackendError
from geoseg.export import INPUT_NAME, OUTPUT_NAME, ExportedModel, ExportSettings

log = logging.getLogger(__name__)


def probability_module(net, mean, std, flip_channels: bool = False):
    """``net`` (a transformers semantic-segmentation model) as a module from raw pixels
    ``(N, B, H, W)`` to class probabilities ``(N, C, H, W)``; ``flip_channels`` reverses
    the bands after normalising (MobileViT's processors hand it BGR)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SegformerProbabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, image):
            pixels = (image - self.mean) / self.std
            if flip_channels:
                pixels = pixels.flip(1)
            logits = self.net(pixel_values=pixels).logits
            logits = F.interpolate(
                logits, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
            return torch.softmax(logits, dim=1)

    return SegformerProbabilities().eval()


def export_segformer(model: str, path: Path, settings: ExportSettings) -> ExportedModel:
    """Export the model folder (or checkpoint) ``model`` to the ONNX file ``path``."""
    import torch

    from geoseg_segformer.model import load_for_prediction

    # merge=True: peft's merge_and_unload on the freshly loaded copy; the folder is untouched.
    net, model_settings = load_for_prediction(model, "cpu", merge=True)
    reference = _checkpoint_input(model)
    flip = reference is not None and reference.flip_channels
    if reference is not None:
        shape = reference.model_shape(settings.size, settings.size)
        if shape != (settings.size, settings.size):
            log.warning(
                "%s: its image processor resizes %d px chips to %dx%d, which the ONNX graph "
                "does not; export with --size %d to predict as the checkpoint's own pipeline",
                model, settings.size, shape[0], shape[1], shape[0],
            )  # fmt: skip
    module = probability_module(net.float(), model_settings.mean, model_settings.std, flip)
    bands = tuple(model_settings.band_names)
    example = torch.zeros((1, len(bands), settings.size, settings.size), dtype=torch.float32)
    dynamic = {INPUT_NAME: {0: "batch"}} if settings.dynamic_batch else None
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=settings.opset,
                dynamic_axes=dynamic if dynamic else None,
                dynamo=False,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise BackendError(
            f"{model}: torch cannot export this model to ONNX opset {settings.opset} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); try another --opset"
        ) from None
    return ExportedModel(
        bands=bands,
        classes=model_settings.classes,
        normalization={
            "kind": "standardize",
            "mean": [float(v) for v in model_settings.mean],
            "std": [float(v) for v in model_settings.std],
        },
    )


def _checkpoint_input(model: str):
    """The image processor's shaping of chips for a checkpoint geoseg did not train."""
    from geoseg_segformer.model import SETTINGS_FILE, load_image_processor
    from geoseg_segformer.processor import checkpoint_input

    if (Path(model).expanduser() / SETTINGS_FILE).is_file():
        return None
    return checkpoint_input(load_image_processor(model))


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter warns about traced shapes that are fixed on purpose here."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
