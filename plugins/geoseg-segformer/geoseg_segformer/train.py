"""The SegFormer training loop, on Accelerate.

The same code runs in one process (CPU, one GPU) and under ``accelerate launch
--num_processes N -m geoseg train ...`` (data-parallel, gradients synchronised by
Accelerate). Only the main process writes files; every process takes the same decisions
because validation scores are gathered from all of them.

Files written to the output folder:

- the best model so far (by validation mean IoU): LoRA adapter or full model, plus
  ``geoseg_segformer.json`` (see ``model.py``);
- ``history.json`` (one entry per epoch) and ``metrics.png``;
- ``checkpoint/``: model, optimizer, scheduler and random states after the last finished
  epoch, plus ``geoseg_state.json``, read by ``--resume``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from geoseg.atomic import atomic_output, ensure_folder
from geoseg.backend import TrainSettings, resolve_device
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.dataset import ChipDataset
from geoseg.errors import InputFileError, LabelsError, OptionError
from geoseg_segformer.augment import augment_batch
from geoseg_segformer.chips import ChipTensors, band_statistics, dataset_classes
from geoseg_segformer.metrics import confusion_matrix, segmentation_scores
from geoseg_segformer.model import (
    SETTINGS_FILE,
    ModelSettings,
    adapt_input_bands,
    apply_lora,
    head_modules,
    load_pretrained,
    parameter_counts,
)
from geoseg_segformer.options import DEFAULT_CHECKPOINT, SegformerOptions

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "geoseg_state.json"
HISTORY_FILE = "history.json"
PLOT_FILE = "metrics.png"
#: Learning rates that suit each mode: adapters and a fresh head tolerate a large step,
#: full fine-tuning of a pretrained encoder needs a small one (SegFormer paper: 6e-5).
DEFAULT_LR = {True: 5e-4, False: 6e-5}


def train_segformer(
    dataset: ChipDataset, settings: TrainSettings, options: SegformerOptions
) -> Path:
    """Fine-tune SegFormer on ``dataset``; the folder holding the best model."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    output = Path(settings.output_dir)
    train_records, val_records = _splits(dataset)
    device = resolve_device(settings.device)
    if device == "cpu" and options.mixed_precision == "fp16":
        raise OptionError("mixed_precision fp16 needs a GPU; use bf16 or no on the CPU")
    # "no" defers to `accelerate launch --mixed_precision` / the accelerate config.
    precision = None if options.mixed_precision == "no" else options.mixed_precision
    # Accelerate only forms a multi-process CPU group (gloo) when told it runs on the CPU;
    # otherwise each process launched by accelerate/torchrun would train alone.
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    if accelerator.device.type != device.split(":")[0]:
        log.warning("running on %s (chosen by accelerate), not %s", accelerator.device, device)
    main = accelerator.is_main_process
    show = settings.progress and main

    checkpoint = output / CHECKPOINT_DIR
    state = _read_state(checkpoint) if settings.resume else None
    if settings.resume and state is None:
        log.info("%s: no checkpoint to resume from; training from the start", output)
    if state is not None:
        base_model = state["base_model"]
        classes = ClassMap.from_json(state["classes"], source=str(checkpoint / STATE_FILE))
        mean, std = tuple(state["mean"]), tuple(state["std"])
        if tuple(state["band_names"]) != dataset.band_names:
            raise InputFileError(
                f"{dataset.root}: bands {', '.join(dataset.band_names)} differ from the "
                f"interrupted run's ({', '.join(state['band_names'])}); resume on the same chips"
            )
        if bool(state["lora"]) != options.lora:
            raise OptionError(
                f"lora={str(options.lora).lower()} differs from the interrupted run "
                f"(lora={str(bool(state['lora'])).lower()}); resume with the same options"
            )
    else:
        base_model = _base_model_id(settings.model)
        classes = dataset_classes(dataset, train_records + val_records)
        with tqdm(
            total=len(train_records), desc="band statistics", unit="chip",
            disable=not show, file=sys.stderr, dynamic_ncols=True,
        ) as bar:  # fmt: skip
            mean, std = band_statistics(dataset, train_records, bar.update)

    set_seed(settings.seed)
    model = load_pretrained(base_model, classes)
    conv_name = adapt_input_bands(model, dataset.band_names)
    if options.lora:
        trained = head_modules(model) + ([conv_name] if conv_name else [])
        model = apply_lora(model, options, trained)
    if main:
        # Only now that the weights loaded: a missing checkpoint leaves no folder behind.
        ensure_folder(output)
        if not settings.resume:
            # geoseg train only lets a fresh run into a non-empty folder with --overwrite.
            _remove_previous(output)
    trainable, total = parameter_counts(model)
    percent = 100.0 * trainable / total
    _report(
        show,
        f"{'LoRA' if options.lora else 'full fine-tuning'} on {base_model}: trainable "
        f"parameters {trainable:,} of {total:,} ({percent:.2f}%)",
    )

    train_loader = torch.utils.data.DataLoader(
        ChipTensors(dataset, train_records, mean, std, classes),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=options.num_workers,
    )
    val_loader = torch.utils.data.DataLoader(
        ChipTensors(dataset, val_records, mean, std, classes),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=options.num_workers,
    )
    lr = settings.lr if settings.lr is not None else DEFAULT_LR[options.lora]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=options.weight_decay,
    )
    # Accelerate steps a prepared scheduler once per process per optimizer step, so the
    # schedule is laid out over the steps of the whole (unsharded) data set.
    total_steps = max(1, settings.epochs * len(train_loader))
    warmup = int(options.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(warmup, total_steps))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    history: list[dict] = []
    best = {"epoch": None, "mean_iou": -math.inf}
    start = 0
    if state is not None:
        accelerator.load_state(str(checkpoint))
        history = list(state["history"])
        best = dict(state["best"])
        best["mean_iou"] = -math.inf if best["mean_iou"] is None else best["mean_iou"]
        start = int(state["epoch"])
        _report(show, f"resuming after epoch {start} of {settings.epochs}")

    band_names = dataset.band_names
    model_settings = ModelSettings(
        base_model=base_model,
        band_names=band_names,
        classes=classes,
        mean=mean,
        std=std,
        lora=options.lora,
        input_conv=conv_name,
        extra={
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_percent": round(percent, 4),
            "options": asdict(options),
        },
    )
    generator = torch.Generator()
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        generator.manual_seed(settings.seed * 100_003 + epoch * 1009 + accelerator.process_index)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        train_loss = _train_epoch(
            accelerator, model, train_loader, optimizer, scheduler, generator, options,
            desc=f"epoch {epoch + 1}/{settings.epochs}", show=show,
        )  # fmt: skip
        val_loss, confusion = _validate(accelerator, model, val_loader, len(classes), show=show)
        val_loss = None if math.isnan(val_loss) else val_loss
        scores = segmentation_scores(confusion, classes.names)
        entry = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **scores,
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - began, 3),
        }
        history.append(entry)
        # Validation chips without a labelled pixel leave no IoU; fall back to a loss.
        if scores["mean_iou"] is not None:
            miou = scores["mean_iou"]
        else:
            miou = -(val_loss if val_loss is not None else train_loss)
        improved = miou > best["mean_iou"]
        if improved:
            best = {"epoch": epoch + 1, "mean_iou": miou}
        _report(
            show,
            f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {_fmt(val_loss)}, "
            f"mean IoU {_fmt(scores['mean_iou'])}, accuracy {_fmt(scores['accuracy'])}"
            + (" (best so far, saved)" if improved else ""),
        )
        accelerator.wait_for_everyone()
        if improved:
            model_settings.extra.update(
                best_epoch=epoch + 1, best_mean_iou=scores["mean_iou"], scores=scores
            )
            if main:
                _export(accelerator.unwrap_model(model), model_settings, output)
        _save_checkpoint(
            accelerator, output,
            {
                "epoch": epoch + 1, "epochs": settings.epochs, "base_model": base_model,
                "classes": classes.to_json(), "band_names": list(band_names),
                "mean": list(mean), "std": list(std), "lora": options.lora,
                "history": history,
                "best": {**best, "mean_iou": None if best["mean_iou"] == -math.inf else best["mean_iou"]},
            },
        )  # fmt: skip
        if main:
            _write_history(output, history)
    accelerator.wait_for_everyone()
    if start >= settings.epochs:
        _report(show, f"{output}: already trained for {start} epochs; raise --epochs to go on")
    return output


def _splits(dataset: ChipDataset):
    if not dataset.has_labels:
        raise LabelsError(
            f"{dataset.root}: the chips have no labels; make the chip set with "
            "geoseg tile SRC -o CHIPS --labels LABELS --classes classes.json"
        )
    records = [r for r in dataset.records if r.label is not None]
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "val"]
    if not train:
        raise LabelsError(
            f"{dataset.root}: no chips in the train split; re-tile with a validation fraction below 1"
        )
    if not val:
        log.warning("%s: no validation chips; validating on the training chips", dataset.root)
        val = train
    return train, val


def _base_model_id(model: str | None) -> str:
    """The checkpoint to start from; local folders as absolute paths, so the adapter
    records where its base lives."""
    if not model:
        return DEFAULT_CHECKPOINT
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _warmup_linear(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _logits(model, images, size):
    logits = model(pixel_values=images).logits
    # SegFormer predicts at 1/4 resolution; the loss and scores are taken at label size.
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def _train_epoch(
    accelerator, model, loader, optimizer, scheduler, generator, options, *, desc, show
):
    model.train()
    losses = []
    with tqdm(
        total=len(loader), desc=desc, unit="batch", disable=not show, file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:  # fmt: skip
        for images, labels, valid in loader:
            if options.augment:
                images, labels, valid = augment_batch(
                    images, labels, valid, generator, options.jitter
                )
            logits = _logits(model, images, labels.shape[-2:])
            if (labels != IGNORE_INDEX).any():
                loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
            else:
                # Every process must run backward for gradients to synchronise.
                loss = logits.sum() * 0.0
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    mean_loss = torch.stack(losses).mean() if losses else torch.zeros((), device=accelerator.device)
    return float(accelerator.reduce(mean_loss, reduction="mean"))


def _validate(accelerator, model, loader, num_classes: int, *, show):
    model.eval()
    confusion = torch.zeros(
        (num_classes, num_classes), dtype=torch.int64, device=accelerator.device
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    pixels = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), tqdm(
        total=len(loader), desc="validation", unit="batch", disable=not show, file=sys.stderr,
        dynamic_ncols=True, leave=False,
    ) as bar:  # fmt: skip
        for images, labels, _valid in loader:
            logits = _logits(model, images, labels.shape[-2:])
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            keep = labels != IGNORE_INDEX
            if keep.any():
                loss_sum += F.cross_entropy(
                    logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
                ).double()
                pixels += keep.sum()
            confusion += confusion_matrix(logits.argmax(dim=1), labels, num_classes)
            bar.update(1)
    val_loss = float(loss_sum / pixels) if pixels > 0 else math.nan
    return val_loss, confusion.cpu().numpy()


def _export(model, settings: ModelSettings, output: Path) -> None:
    """Write the model and its settings into ``output``, replacing the previous best."""
    staging = output / f".export.part-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if settings.lora:
            model.save_pretrained(str(staging))
            # peft writes a template model card; the plugin README documents the folder.
            (staging / "README.md").unlink(missing_ok=True)
            size = sum(f.stat().st_size for f in staging.glob("adapter_*"))
        else:
            model.save_pretrained(str(staging))
            size = sum(f.stat().st_size for f in staging.glob("*.safetensors"))
        settings.extra["weights_bytes"] = size
        settings.write(staging)
        # The settings file goes last: a folder with it holds a complete model.
        names = sorted(p.name for p in staging.iterdir())
        names.remove(SETTINGS_FILE)
        (output / SETTINGS_FILE).unlink(missing_ok=True)
        for name in [*names, SETTINGS_FILE]:
            os.replace(staging / name, output / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_checkpoint(accelerator, output: Path, state: dict) -> None:
    """Save everything ``--resume`` needs, replacing the previous checkpoint as a whole."""
    staging = output / f"{CHECKPOINT_DIR}.part"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        final = output / CHECKPOINT_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    accelerator.wait_for_everyone()


def _remove_previous(output: Path) -> None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.part"):
        shutil.rmtree(output / name, ignore_errors=True)
    for name in (SETTINGS_FILE, HISTORY_FILE, PLOT_FILE):
        (output / name).unlink(missing_ok=True)


def _read_state(checkpoint: Path) -> dict | None:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(
            f"{path}: unreadable checkpoint state ({exc}); delete {checkpoint} and train again"
        ) from None


def _write_history(output: Path, history: list[dict]) -> None:
    with atomic_output(output / HISTORY_FILE) as tmp:
        tmp.write_text(json.dumps(history, indent=1) + "\n")
    plot_history(history, output / PLOT_FILE)


def plot_history(history: list[dict], path: Path) -> Path:
    """Loss and IoU curves per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, iou_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    loss_axes.plot(epochs, [_nan(h["val_loss"]) for h in history], marker="o", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_axes.legend()
    iou_axes.plot(
        epochs, [_nan(h["mean_iou"]) for h in history], marker="o", linewidth=2.5, label="mean IoU"
    )
    for name in history[-1]["per_class"]:
        values = [_nan(h["per_class"].get(name, {}).get("iou")) for h in history]
        iou_axes.plot(epochs, values, linestyle="--", label=name)
    iou_axes.set(xlabel="epoch", ylabel="IoU (validation)", title="IoU", ylim=(0, 1))
    iou_axes.legend(fontsize="small")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report(show: bool, message: str) -> None:
    """A line for the user, written between the progress bars (stderr), and to the log."""
    log.info(message)
    if show:
        tqdm.write(f"segformer: {message}", file=sys.stderr)
