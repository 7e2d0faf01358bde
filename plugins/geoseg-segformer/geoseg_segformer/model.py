"""Hugging Face segmentation models: checkpoints, LoRA adapters, input bands, reloading.

Any ``AutoModelForSemanticSegmentation`` checkpoint (SegFormer, UperNet with a ConvNeXt
or Swin backbone, BEiT, Data2VecVision, DPT, MobileNetV2/MobileViT(V2)-DeepLabV3, ...).

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
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.classes import ClassMap
from geoseg.errors import BackendError, BandError, OptionError, WeightsError
from geoseg.weights import hub_unreachable, refuse_pickles

log = logging.getLogger(__name__)

SETTINGS_FILE = "geoseg_segformer.json"
SETTINGS_VERSION = 1
RGB = ("red", "green", "blue")
#: Layers LoRA adapts by default, the first group whose names all occur in the backbone:
#: attention query/value projections as transformers 5.x and 4.x name them, fused
#: query-key-value projections (MobileViTV2's ``qkv_proj``), then the pointwise layers of
#: a ConvNeXt backbone (no attention). MobileNetV2's layers are not among them: its
#: TensorFlow-style padding reads ``stride`` from each convolution, which a peft LoRA
#: wrapper does not have; train it with ``lora=false``.
LORA_TARGET_GROUPS = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("q", "v"),
    ("qkv",),
    ("qkv_proj",),
    ("pwconv1", "pwconv2"),
)
#: Leaf names of the convolution inside a wrapper layer (``qkv_proj.convolution``).
CONV_LEAVES = ("convolution", "conv")
#: What most image processors (SegFormer's, ViT's) do to 8-bit RGB: rescale by 1/255, then ImageNet
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
                f"{source}: not a readable geoseg model settings file ({exc}); re-run geoseg train"
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


#: The transformers auto class of each model task of this plugin.
AUTO_CLASSES = {
    "segmentation": "AutoModelForSemanticSegmentation",
    "classification": "AutoModelForImageClassification",
}
#: A checkpoint of each task to name in messages.
EXAMPLE_CHECKPOINTS = {
    "segmentation": "nvidia/mit-b0",
    "classification": "google/vit-base-patch16-224-in21k",
}


def load_pretrained(checkpoint: str, classes: ClassMap | None = None, *, task="segmentation"):
    """A semantic-segmentation model (``task="classification"``: an image classifier)
    from a hub id or local folder.

    With ``classes``, the output head gets one channel per class in ClassMap order
    (re-initialised when the checkpoint's head has another size).
    """
    kwargs: dict[str, Any] = {}
    if classes is not None:
        kwargs = {
            "id2label": {i: c.name for i, c in enumerate(classes)},
            "label2id": {c.name: i for i, c in enumerate(classes)},
            "ignore_mismatched_sizes": True,
        }
    looks_local = _looks_local(checkpoint)
    try:
        source = checkpoint_source(checkpoint, task=task)
        return drop_auxiliary_head(_from_pretrained(source, kwargs, task=task))
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
        kind = "semantic-segmentation" if task == "segmentation" else "image-classification"
        raise WeightsError(
            f"{checkpoint}: not a {kind} checkpoint transformers can load "
            f"({_first_line(exc)}); use an {AUTO_CLASSES[task]} checkpoint such "
            f"as {EXAMPLE_CHECKPOINTS[task]}"
        ) from None


def drop_auxiliary_head(model):
    """``model`` without its auxiliary head (UperNet, BEiT, Data2VecVision, DPT).

    The auxiliary head only feeds the checkpoint's own loss; geoseg's loss and predictions
    use the main logits, so it would cost compute and never learn. Its config says so,
    so a saved model reloads without it.
    """
    if getattr(model, "auxiliary_head", None) is not None:
        model.auxiliary_head = None
        if getattr(model.config, "use_auxiliary_head", False):
            model.config.use_auxiliary_head = False
    return model


def _looks_local(checkpoint: str) -> bool:
    local = Path(checkpoint).expanduser()
    return local.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1


def checkpoint_source(checkpoint: str, *, task: str = "segmentation") -> str:
    """What to hand to ``from_pretrained`` for a hub id or folder, without waiting on an
    unreachable hub; pickles refused. OSError "offline" when a hub id is not cached and
    the hub does not answer."""
    local = Path(checkpoint).expanduser()
    if _looks_local(checkpoint):
        refuse_pickles(local, model_class=AUTO_CLASSES[task])
        if not (local / "config.json").is_file():
            raise WeightsError(
                f"{checkpoint}: not a model folder (no config.json); give a folder written by "
                f"save_pretrained / geoseg train, or a hub id such as {EXAMPLE_CHECKPOINTS[task]}"
            )
        return str(local)
    snapshot = cached_snapshot(checkpoint)
    if snapshot is not None:
        # Loaded from the cache folder itself: transformers 5 still asks the hub for an
        # adapter_config.json with local_files_only=True, and offline machines would
        # wait through its connection retries.
        return str(snapshot)
    if hub_unreachable():
        # Asking anyway costs about 50 s of retries and a screen of HTTP errors.
        raise OSError("hub unreachable (offline)")
    return checkpoint


def image_normalization(checkpoint: str, channels: int) -> tuple[tuple, tuple]:
    """Mean and std in raw 8-bit units from the checkpoint's ``AutoImageProcessor``
    (rescale, then its ``image_mean``/``image_std``); ImageNet's when it has none."""
    mean, std, scale = IMAGENET_MEAN, IMAGENET_STD, 1 / 255
    processor = load_image_processor(checkpoint)
    if processor is not None:
        if getattr(processor, "do_normalize", True):
            mean = tuple(np.atleast_1d(getattr(processor, "image_mean", None) or mean))
            std = tuple(np.atleast_1d(getattr(processor, "image_std", None) or std))
        else:
            mean, std = (0.0,) * 3, (1.0,) * 3
        rescale = getattr(processor, "rescale_factor", None) or scale
        scale = float(rescale) if getattr(processor, "do_rescale", True) else 1.0
    if len(mean) != channels:
        mean, std = (float(np.mean(mean)),) * channels, (float(np.mean(std)),) * channels
    return tuple(float(m) / scale for m in mean), tuple(float(s) / scale for s in std)


def load_image_processor(checkpoint: str):
    """The checkpoint's ``AutoImageProcessor``, or None when it has none."""
    try:
        from transformers import AutoImageProcessor

        with quiet_transformers():
            return AutoImageProcessor.from_pretrained(checkpoint_source(checkpoint))
    except (OSError, ValueError, KeyError) as exc:
        log.debug("%s: no image processor (%s); ImageNet normalisation", checkpoint, exc)
        return None


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


def _from_pretrained(
    source: str, kwargs: dict[str, Any], *, task: str = "segmentation", **options: Any
):
    import transformers

    auto_class = getattr(transformers, AUTO_CLASSES[task])
    with quiet_transformers():
        # Never the pickle fallback (pytorch_model.bin) a checkpoint may also carry.
        return auto_class.from_pretrained(source, use_safetensors=True, **kwargs, **options)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def input_conv(model) -> tuple[str, Any]:
    """Name and module of the convolution that first sees the pixels (the patch embedding)."""
    from torch import nn

    channels = _config_channels(model.config)
    first = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if channels is None or module.in_channels == channels:
                return name, module
            first = first or (name, module)
    if first is None:
        raise BackendError(f"{type(model).__name__} has no input convolution to adapt to the bands")
    return first


def _config_channels(config) -> int | None:
    """Input channels the config declares (UperNet and DPT-hybrid: on the backbone's)."""
    channels = getattr(config, "num_channels", None)
    backbone = getattr(config, "backbone_config", None)
    if channels is None and backbone is not None:
        channels = getattr(backbone, "num_channels", None)
    return channels


def _set_channels(model, conv_name: str, old: int, new: int) -> None:
    """Record ``new`` input channels wherever the model checks or saves them: configs
    (saved in config.json, so a reload builds the wider embedding) and the embedding
    modules above the convolution (ViT-style and ConvNeXt embeddings check pixel_values)."""
    for config in (model.config, getattr(model.config, "backbone_config", None)):
        if config is not None and getattr(config, "num_channels", None) == old:
            config.num_channels = new
    for name, module in model.named_modules():
        above = not name or conv_name.startswith(name + ".")
        if above and getattr(module, "num_channels", None) == old:
            module.num_channels = new


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
    _set_channels(model, name, conv.in_channels, len(band_names))
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


def _backbone_layers(model) -> list[str]:
    """Names of the linear and convolution layers outside the head modules."""
    from torch import nn

    heads = tuple(head + "." for head in head_modules(model))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not name.startswith(heads)
    ]


def _layer_name(full_name: str) -> str:
    """A layer's short name as LoRA targets it: ``q_proj``, or ``qkv_proj.convolution``
    for the convolution inside a wrapper layer."""
    parts = full_name.split(".")
    if len(parts) > 1 and parts[-1] in CONV_LEAVES:
        return ".".join(parts[-2:])
    return parts[-1]


def available_layers(model) -> list[str]:
    """Short names of the backbone's linear and convolution layers, sorted."""
    return sorted({_layer_name(name) for name in _backbone_layers(model)})


def lora_targets(model) -> list[str]:
    """Default LoRA targets, by name: the first of ``LORA_TARGET_GROUPS`` the backbone has."""
    found = set(available_layers(model))
    for group in LORA_TARGET_GROUPS:
        chosen = []
        for short in group:
            match = [n for n in found if n == short or n.split(".")[0] == short]
            if not match:
                break
            chosen.extend(sorted(match))
        else:
            return chosen
    raise OptionError(
        f"cannot find attention query/value projections in {type(model).__name__}; name the "
        f"layers to adapt with --option lora_targets=NAME,NAME (available: "
        f"{', '.join(sorted(found))}), or train every weight with --option lora=false"
    )


def lora_modules(model, targets: Sequence[str]) -> list[str]:
    """Full names of the backbone layers ``targets`` name (a name matches a layer whose
    dotted name ends with it); OptionError listing the available names for a name that
    matches none (a typo would otherwise leave that layer silently untouched)."""
    from torch import nn

    layers = _backbone_layers(model)

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(name, t) for name in layers)]
    if unmatched:
        raise OptionError(
            f"lora_targets {','.join(unmatched)} names no layer of {type(model).__name__}'s "
            f"backbone; available: {', '.join(available_layers(model))}"
        )
    chosen = [name for name in layers if any(matches(name, t) for t in targets)]
    if getattr(model.config, "tf_padding", False) and any(
        isinstance(model.get_submodule(name), nn.Conv2d) for name in chosen
    ):
        raise OptionError(
            f"lora_targets {','.join(targets)}: {type(model).__name__} pads the TensorFlow way, "
            "reading each convolution's stride, which a LoRA wrapper does not have; adapt "
            "linear layers only, or train every weight with --option lora=false"
        )
    return chosen


def apply_lora(model, options, trained_modules: Sequence[str]):
    """Wrap ``model`` in a peft LoRA model; ``trained_modules`` are trained in full.

    Adapters go on backbone layers only, by full name, so a head layer of the same short
    name (trained in full anyway) is never wrapped twice.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(options.lora_targets) or lora_targets(model)
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        bias=options.bias,
        target_modules=lora_modules(model, targets),
        modules_to_save=unambiguous_modules(model, trained_modules),
    )
    try:
        with quiet_transformers():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise OptionError(f"lora_targets {','.join(targets)}: {_first_line(exc)}") from None


def unambiguous_modules(model, names: Sequence[str]) -> list[str]:
    """``names`` as peft's ``modules_to_save`` can take them: peft wraps every module whose
    name merely ends with one (DPT's ``head`` holds a ``head.head``, which would be wrapped
    a second time), so such a module is given as its children instead."""
    keys = [key for key, _ in model.named_modules()]
    chosen: list[str] = []
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if not any(key != name and key.endswith(name) for key in keys):
            chosen.append(name)
            continue
        module = model.get_submodule(name)
        if any(True for _ in module.parameters(recurse=False)):
            raise BackendError(
                f"cannot train {type(model).__name__}'s {name} in full next to LoRA adapters "
                "(peft matches it by suffix); train every weight with --option lora=false"
            )
        pending.extend(
            f"{name}.{child}"
            for child, sub in module.named_children()
            if any(True for _ in sub.parameters())
        )
    return chosen


def segmentation_logits(model, pixel_values, size):
    """Class logits ``(N, C, H, W)`` float32 at ``size`` (the chip's), whatever resolution
    the model predicts at (1/4 for SegFormer, 1/32 for MobileNetV2-DeepLabV3, 2x for DPT)."""
    import torch.nn.functional as F

    kwargs = {"interpolate_pos_encoding": True} if _interpolates(model) else {}
    logits = model(pixel_values=pixel_values, **kwargs).logits
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


def _interpolates(model) -> bool:
    """Whether the model takes ``interpolate_pos_encoding`` (ViT-style position embeddings
    on chips of another size than the checkpoint's images: BEiT, Data2VecVision)."""
    import inspect

    inner = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    cached = getattr(inner, "_geoseg_interpolates", None)
    if cached is None:
        cached = "interpolate_pos_encoding" in inspect.signature(inner.forward).parameters
        inner._geoseg_interpolates = cached
    return cached


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


def load_for_prediction(model: str, device: str = "cpu", *, merge: bool = True):
    """The model in eval mode on ``device`` and its settings.

    ``model``: a folder written by ``geoseg train`` (adapter or full), or any
    semantic-segmentation checkpoint (hub id or folder) with a trained head, read with
    its image processor's normalisation.
    """
    folder = Path(model).expanduser()
    refuse_pickles(folder, model_class="AutoModelForSemanticSegmentation")
    if (folder / SETTINGS_FILE).is_file():
        settings = ModelSettings.read(folder)
        if settings.lora:
            net = _load_adapter(folder, settings, merge=merge)
        else:
            net = load_pretrained(str(folder))
    else:
        net = load_pretrained(model)
        settings = checkpoint_settings(model, net)
    return net.to(device).eval(), settings


def checkpoint_settings(model: str, net, **extra) -> ModelSettings:
    """Settings of a checkpoint geoseg did not train: its labels as classes, red, green and
    blue for a 3-channel input (band1.. otherwise), its image processor's normalisation."""
    labels = getattr(net.config, "id2label", None) or {}
    channels = int(_config_channels(net.config) or 3)
    names = [str(labels.get(i, f"class_{i}")) for i in range(len(labels))]
    mean, std = image_normalization(model, channels)
    return ModelSettings(
        base_model=model,
        band_names=RGB if channels == 3 else tuple(f"band{i}" for i in range(1, channels + 1)),
        classes=ClassMap.from_names(_unique(names)),
        mean=mean,
        std=std,
        lora=False,
        extra=extra,
    )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _load_adapter(
    folder: Path, settings: ModelSettings, *, merge: bool, task: str = "segmentation"
):
    from peft import PeftModel

    try:
        base = load_pretrained(settings.base_model, settings.classes, task=task)
    except WeightsError as exc:
        raise WeightsError(
            f"{folder} is a LoRA adapter on base checkpoint {settings.base_model}: {exc}"
        ) from None
    if settings.input_conv:
        adapt_input_bands(base, settings.band_names)
    with quiet_transformers():
        net = PeftModel.from_pretrained(base, str(folder))
    return net.merge_and_unload() if merge else net
