"""SegFormer models: loading checkpoints, LoRA adapters, input bands, saving and reloading.

A trained model folder holds either a LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors``, written by peft, with the decode head and any widened
patch embedding inside it as fully trained modules) or a fully fine-tuned model
(``config.json`` + ``model.safetensors``), and always ``geoseg_segformer.json``: base
checkpoint, band names, per-band normalisation, classes and training figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.classes import ClassMap
from geoseg.errors import BackendError, BandError, OptionError, WeightsError

log = logging.getLogger(__name__)

SETTINGS_FILE = "geoseg_segformer.json"
SETTINGS_VERSION = 1
RGB = ("red", "green", "blue")
#: Attention projections LoRA adapts by default, by naming convention: transformers 5.x
#: SegFormer, transformers 4.x SegFormer / ViT-style encoders, and short q/v names.
QUERY_VALUE_NAMES = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))
#: What the SegFormer image processor does to 8-bit RGB: rescale by 1/255, then ImageNet
#: mean/std. Used for plain checkpoints that were not trained by geoseg.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSettings:
    """What ``geoseg_segformer.json`` records next to the weights.

    ``mean``/``std``: per-band normalisation in raw source units, in ``band_names`` order.
    ``input_conv``: module name of the patch embedding that was adapted to the bands, or
    None when the checkpoint's own RGB embedding is used unchanged.
    """

    base_model: str
    band_names: tuple[str, ...]
    classes: ClassMap
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lora: bool = True
    input_conv: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SETTINGS_VERSION,
            "base_model": self.base_model,
            "lora": self.lora,
            "band_names": list(self.band_names),
            "input_conv": self.input_conv,
            "classes": self.classes.to_json(),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str) -> ModelSettings:
        try:
            known = {
                "format", "base_model", "lora", "band_names", "input_conv", "classes",
                "normalization",
            }  # fmt: skip
            return cls(
                base_model=str(data["base_model"]),
                band_names=tuple(data["band_names"]),
                classes=ClassMap.from_json(data["classes"], source=source),
                mean=tuple(float(v) for v in data["normalization"]["mean"]),
                std=tuple(float(v) for v in data["normalization"]["std"]),
                lora=bool(data["lora"]),
                input_conv=data.get("input_conv"),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(
                f"{source}: not a readable geoseg SegFormer settings file ({exc}); "
                "re-run geoseg train"
            ) from None

    def write(self, folder: Path) -> Path:
        path = folder / SETTINGS_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelSettings:
        path = folder / SETTINGS_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{path}: unreadable ({exc}); re-run geoseg train") from None
        return cls.from_json(data, source=str(path))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars; geoseg reports what matters."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft probes model.is_gradient_checkpointing, which transformers 5.x deprecates.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(checkpoint: str, classes: ClassMap | None = None):
    """A semantic-segmentation model from a hub id or local folder.

    With ``classes``, the output head gets one channel per class in ClassMap order
    (re-initialised when the checkpoint's head has another size).
    """
    local = Path(checkpoint).expanduser()
    looks_local = (
        local.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1
    )
    if looks_local:
        refuse_pickles(local)
    if looks_local and not (local / "config.json").is_file():
        raise WeightsError(
            f"{checkpoint}: not a model folder (no config.json); give a folder written by "
            "save_pretrained / geoseg train, or a hub id such as nvidia/mit-b0"
        )
    kwargs: dict[str, Any] = {}
    if classes is not None:
        kwargs = {
            "id2label": {i: c.name for i, c in enumerate(classes)},
            "label2id": {c.name: i for i, c in enumerate(classes)},
            "ignore_mismatched_sizes": True,
        }
    try:
        if looks_local:
            return _from_pretrained(str(local), kwargs)
        snapshot = cached_snapshot(checkpoint)
        if snapshot is not None:
            # Loaded from the cache folder itself: transformers 5 still asks the hub for an
            # adapter_config.json with local_files_only=True, and offline machines would
            # wait through its connection retries.
            return _from_pretrained(str(snapshot), kwargs)
        if hub_unreachable():
            # Asking anyway costs about 50 s of retries and a screen of HTTP errors.
            raise OSError("hub unreachable (offline)")
        return _from_pretrained(checkpoint, kwargs)
    except OSError as exc:
        reason = _first_line(exc)
        if looks_local:
            raise WeightsError(f"{checkpoint}: cannot load model ({reason})") from None
        if "connect" in reason.lower() or "offline" in reason.lower():
            raise WeightsError(
                f"cannot load {checkpoint!r}: not in the local Hugging Face cache and the hub "
                f"is unreachable; on a connected machine run `hf download {checkpoint}` (then "
                "copy ~/.cache/huggingface here), or pass --model a local checkpoint folder"
            ) from None
        raise WeightsError(f"cannot load {checkpoint!r}: {reason}") from None
    except ValueError as exc:
        raise WeightsError(
            f"{checkpoint}: not a semantic-segmentation checkpoint transformers can load "
            f"({_first_line(exc)}); use a SegFormer checkpoint such as nvidia/mit-b0"
        ) from None


def cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache folder holding ``repo_id``'s main revision, if it is cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if any(snapshot.glob("*.safetensors")) else None


#: Seconds a probe of the hub may take before geoseg calls it unreachable.
HUB_PROBE_TIMEOUT = 3.0
#: Suffixes of PyTorch pickle files (weights, optimizer states, whole checkpoints).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def hub_unreachable() -> bool:
    """True when offline mode is on or the hub does not answer within a few seconds."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT)).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), HUB_PROBE_TIMEOUT).close()
    except OSError:
        return True
    return False


def refuse_pickles(path: Path) -> None:
    """Raise ``WeightsError`` for weights that are PyTorch pickles, never loading them.

    A pickle can run code when it is loaded; geoseg loads safetensors only. ``path`` is a
    file given as the model, or a model folder holding pickles and no safetensors.
    """
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        found, folder = path, path.parent
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if not pickles:
            return
        found, folder = pickles[0], path
    else:
        return
    if (folder / "config.json").is_file():
        fix = (
            f"where you trust the file, convert the folder: python -c \"from transformers "
            f"import AutoModelForSemanticSegmentation as M; M.from_pretrained('{folder}')"
            f".save_pretrained('{folder}-safe')\" and pass --model {folder}-safe"
        )
    else:
        fix = "pass --model a folder written by save_pretrained or geoseg train"
    raise WeightsError(
        f"{found}: a PyTorch pickle; geoseg loads safetensors only (a pickle can run code "
        f"when loaded); {fix}"
    )


def _from_pretrained(source: str, kwargs: dict[str, Any], **options: Any):
    from transformers import AutoModelForSemanticSegmentation

    with quiet_transformers():
        # Never the pickle fallback (pytorch_model.bin) a checkpoint may also carry.
        return AutoModelForSemanticSegmentation.from_pretrained(
            source, use_safetensors=True, **kwargs, **options
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def input_conv(model) -> tuple[str, Any]:
    """Name and module of the convolution that first sees the pixels (the patch embedding)."""
    from torch import nn

    channels = getattr(model.config, "num_channels", None)
    first = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if channels is None or module.in_channels == channels:
                return name, module
            first = first or (name, module)
    if first is None:
        raise BackendError(f"{type(model).__name__} has no input convolution to adapt to the bands")
    return first


def _set_module(model, name: str, module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def adapt_input_bands(model, band_names: Sequence[str]) -> str | None:
    """Fit the patch embedding to ``band_names``; its module name, or None if left as is.

    The checkpoint's embedding takes red, green, blue. Each band named red, green or blue
    keeps its pretrained filter; any other band starts from the mean of the three, so a
    near-infrared band contributes like an average colour until training adjusts it. A
    single band (grayscale) gets the sum, which equals feeding it as R = G = B.
    """
    import torch
    from torch import nn

    band_names = tuple(band_names)
    name, conv = input_conv(model)
    if conv.in_channels != 3:
        if conv.in_channels == len(band_names):
            return None
        raise BandError(
            f"the checkpoint's patch embedding takes {conv.in_channels} bands but the chips "
            f"have {len(band_names)} ({', '.join(band_names)}); start from an RGB checkpoint"
        )
    if band_names == RGB:
        return None
    old = conv.weight.detach()
    if len(band_names) == 1 and band_names[0] not in RGB:
        filters = [old.sum(dim=1)]
    else:
        mean = old.mean(dim=1)
        filters = [old[:, RGB.index(b)] if b in RGB else mean for b in band_names]
    wider = nn.Conv2d(
        len(band_names),
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=old.device, dtype=old.dtype)
    with torch.no_grad():
        wider.weight.copy_(torch.stack(filters, dim=1))
        if conv.bias is not None:
            wider.bias.copy_(conv.bias.detach())
    _set_module(model, name, wider)
    model.config.num_channels = len(band_names)
    return name


def head_modules(model) -> list[str]:
    """Top-level modules outside the pretrained backbone: the decode head(s), trained in full."""
    backbone = {getattr(model, "base_model_prefix", ""), "backbone"}
    names = [name for name, _ in model.named_children() if name not in backbone]
    if not names:
        raise BackendError(
            f"cannot tell the decode head of {type(model).__name__} from its backbone"
        )
    return names


def lora_targets(model) -> list[str]:
    """Default LoRA targets: the attention query and value projections, by name."""
    from torch import nn

    linear = {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    for pair in QUERY_VALUE_NAMES:
        if set(pair) <= linear:
            return list(pair)
    raise OptionError(
        f"cannot find attention query/value projections in {type(model).__name__}; name the "
        f"layers to adapt with --option target_modules=NAME,NAME (linear layers: "
        f"{', '.join(sorted(linear)[:12])})"
    )


def apply_lora(model, options, trained_modules: Sequence[str]):
    """Wrap ``model`` in a peft LoRA model; ``trained_modules`` are trained in full."""
    from peft import LoraConfig, get_peft_model

    targets = list(options.target_modules) or lora_targets(model)
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        bias=options.bias,
        target_modules=targets,
        modules_to_save=list(trained_modules),
    )
    try:
        with quiet_transformers():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise OptionError(f"target_modules {','.join(targets)}: {_first_line(exc)}") from None


def parameter_counts(model) -> tuple[int, int]:
    """Trainable and total parameters of the model as it runs (peft's frozen copies of
    fully trained modules not counted twice)."""
    trainable = total = 0
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def normalization_for_plain(folder: Path | None, channels: int) -> tuple[tuple, tuple]:
    """Mean and std in raw 8-bit units for a checkpoint not trained by geoseg."""
    mean, std, scale = IMAGENET_MEAN, IMAGENET_STD, 1 / 255
    processor = folder / "preprocessor_config.json" if folder is not None else None
    if processor is not None and processor.is_file():
        data = json.loads(processor.read_text())
        mean = tuple(data.get("image_mean") or mean)
        std = tuple(data.get("image_std") or std)
        scale = float(data.get("rescale_factor") or scale) if data.get("do_rescale", True) else 1.0
    if len(mean) != channels:
        mean, std = (float(np.mean(mean)),) * channels, (float(np.mean(std)),) * channels
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def load_for_prediction(model: str, device: str = "cpu", *, merge: bool = True):
    """The model in eval mode on ``device`` and its settings.

    ``model``: a folder written by ``geoseg train`` (adapter or full), or any SegFormer
    checkpoint (hub id or folder) with a trained semantic-segmentation head.
    """
    folder = Path(model).expanduser()
    refuse_pickles(folder)
    if (folder / SETTINGS_FILE).is_file():
        settings = ModelSettings.read(folder)
        if settings.lora:
            net = _load_adapter(folder, settings, merge=merge)
        else:
            net = load_pretrained(str(folder))
    else:
        net = load_pretrained(model)
        labels = getattr(net.config, "id2label", None) or {}
        channels = int(getattr(net.config, "num_channels", 3))
        names = [str(labels.get(i, f"class_{i}")) for i in range(len(labels))]
        mean, std = normalization_for_plain(folder if folder.is_dir() else None, channels)
        settings = ModelSettings(
            base_model=model,
            band_names=RGB if channels == 3 else tuple(f"band{i}" for i in range(1, channels + 1)),
            classes=ClassMap.from_names(_unique(names)),
            mean=mean,
            std=std,
            lora=False,
        )
    return net.to(device).eval(), settings


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _load_adapter(folder: Path, settings: ModelSettings, *, merge: bool):
    from peft import PeftModel

    try:
        base = load_pretrained(settings.base_model, settings.classes)
    except WeightsError as exc:
        raise WeightsError(
            f"{folder} is a LoRA adapter on base checkpoint {settings.base_model}: {exc}"
        ) from None
    if settings.input_conv:
        adapt_input_bands(base, settings.band_names)
    with quiet_transformers():
        net = PeftModel.from_pretrained(base, str(folder))
    return net.merge_and_unload() if merge else net
