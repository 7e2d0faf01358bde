"""Mask-decoder training: frozen encoders, cached embeddings, prompts redrawn every epoch.

The loop runs unchanged on one CPU, one GPU or under ``accelerate launch`` (data
parallel): Accelerate places the model, wraps it for gradient synchronisation, shards the
chips and handles mixed precision; only the main process writes files.

Each step reads a batch of chips, gets their image embeddings from the cache (running the
frozen vision encoder only for chips not cached yet), draws prompts from each chip's
ground truth (one prompt per positive point, with the chip's negative points, or one per
perturbed box; the target is the water component the prompt came from), and trains the
mask decoder on the decoder's low-resolution masks, plus SAM's IoU head on the masks' real
IoU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.atomic import atomic_output, ensure_folder
from geoseg.backend import Prompts, TrainSettings
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.dataset import ChipDataset, ChipRecord
from geoseg.errors import BandError, ClassError, LabelsError, OptionError
from geoseg.prompts import PromptSettings, sample_prompts
from geoseg_sam.cache import EmbeddingCache, default_cache_dir
from geoseg_sam.decode import pad_points, run_decoder, segment_chip
from geoseg_sam.model import (
    DEFAULT_CHECKPOINT,
    checkpoint_identity,
    freeze_encoders,
    image_embeddings,
    load_decoder,
    load_sam,
    save_decoder,
)
from geoseg_sam.options import SamOptions
from geoseg_sam.preprocess import BandStretch, ModelInput, select_bands

log = logging.getLogger(__name__)

SETTINGS_FILE = "geoseg_sam.json"
DECODER_FILE = "decoder.safetensors"
HISTORY_FILE = "history.json"
PLOT_FILE = "history.png"
STATE_DIR = "training_state"
FORMAT_VERSION = 1
DEFAULT_LR = 1e-4
#: Chips sampled to measure the 8-bit stretch.
STRETCH_CHIPS = 64
#: Weight of the IoU-head loss, as in the SAM paper.
IOU_LOSS_WEIGHT = 1.0
#: Weight of the focal term in loss=focal (the SAM paper's 20:1 focal:dice).
FOCAL_WEIGHT = 20.0
MAX_GRAD_NORM = 1.0


def training_prompt_settings(options: SamOptions, seed: int, *, perturb: bool = True) -> PromptSettings:
    """How prompts are drawn from ground truth (and, without perturbation, from auto masks)."""
    boxes = options.prompt == "boxes"
    return PromptSettings(
        points=0 if boxes else options.positive,
        negative=options.negative,
        boxes=boxes,
        erode=options.erode_radius,
        perturb=options.perturb if perturb else 0,
        seed=seed,
    )


class ChipSet(torch.utils.data.Dataset):
    """Chips of one split as 8-bit model input and binary targets (255 = ignore)."""

    def __init__(
        self,
        dataset: ChipDataset,
        records: list[ChipRecord],
        bands: tuple[str, ...],
        stretch: BandStretch,
        target_id: int,
    ) -> None:
        self.dataset = dataset
        self.records = records
        self.bands = bands
        self.stretch = stretch
        self.target_id = target_id

    def __len__(self) -> int:
        return len(self.records)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        record = self.records[index]
        data, valid = self.dataset.read_image(record)
        return select_bands(data, self.dataset.band_names, self.bands, source=str(record.image)), valid

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        data, valid = self.raw(index)
        label = self.dataset.read_label(record)
        if label.shape != valid.shape:
            raise LabelsError(f"{record.label}: label is {label.shape}, image is {valid.shape}; re-run geoseg tile")
        target = np.where(label == self.target_id, 1, 0).astype(np.uint8)
        target[(label == IGNORE_INDEX) | ~valid] = IGNORE_INDEX
        return {"index": index, "image": self.stretch.apply(data, valid), "target": target}


@dataclass
class TrainingPrompt:
    """One training prompt in SAM's frame and the chip mask it should produce."""

    chip: int
    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    target: np.ndarray  # (H, W) bool: the component the prompt came from
    valid: np.ndarray  # (H, W) bool: pixels the loss may use
    weight: float = 1.0


def draw_training_prompts(
    target: np.ndarray,
    chip: int,
    settings: PromptSettings,
    rng: np.random.Generator,
    frame: ModelInput,
    max_prompts: int,
) -> list[TrainingPrompt]:
    """Prompts of one chip from its target (H, W) uint8 (1 water, 255 ignore)."""
    from skimage.measure import label as label_components

    valid = target != IGNORE_INDEX
    water = (target == 1) & valid
    if not water.any():
        return []
    drawn = sample_prompts(water, settings, rng, valid)
    # Same labelling as sample_prompts, so its component ids index these components.
    components = label_components(water, connectivity=2)
    height, width = target.shape
    negatives = drawn.prompts.points[drawn.prompts.labels != 1]
    negatives = frame.points(negatives, height, width)
    found: list[TrainingPrompt] = []
    positive = np.flatnonzero(drawn.prompts.labels == 1)
    for i in positive:
        point = frame.points(drawn.prompts.points[i : i + 1], height, width)
        points = np.concatenate([point, negatives])
        labels = np.zeros(len(points), np.int64)
        labels[0] = 1
        found.append(
            TrainingPrompt(
                chip, points, labels, None, components == drawn.point_components[i], valid
            )
        )
    boxes = frame.boxes(drawn.prompts.boxes, height, width)
    for box, component in zip(boxes, drawn.box_components, strict=True):
        points = negatives if len(negatives) else None
        labels = np.zeros(len(negatives), np.int64) if len(negatives) else None
        found.append(TrainingPrompt(chip, points, labels, box, components == component, valid))
    if len(found) > max_prompts:
        keep = rng.choice(len(found), max_prompts, replace=False)
        found = [found[i] for i in sorted(keep)]
    return found


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str
) -> torch.Tensor:
    """Per-prompt loss (T,) of decoder logits (T, L, L) against soft targets, where weight > 0."""
    logits = logits.float()
    probability = torch.sigmoid(logits)
    dims = (1, 2)
    overlap = (probability * target * weight).sum(dims)
    total = (probability * weight).sum(dims) + (target * weight).sum(dims)
    dice = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    pixels = weight.sum(dims).clamp_min(1.0)
    if kind == "dice":
        return dice
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "dicece":
        return dice + (bce * weight).sum(dims) / pixels
    # Sigmoid focal loss (alpha 0.25, gamma 2) as in the SAM paper, mixed 20:1 with dice.
    p_t = probability * target + (1 - probability) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    focal = alpha_t * (1 - p_t) ** 2 * bce
    return FOCAL_WEIGHT * (focal * weight).sum(dims) / pixels + dice


def mask_iou(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """IoU (T,) of thresholded logits (T, L, L) with targets, where weight > 0."""
    predicted = (logits > 0).float() * weight
    truth = (target > 0.5).float() * weight
    union = ((predicted + truth) > 0).float().sum((1, 2))
    inter = (predicted * truth).sum((1, 2))
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


@dataclass
class RunState:
    """What a resumed run picks up: the epoch reached, history and best score so far."""

    epoch: int = 0
    history: list[dict[str, Any]] | None = None
    best_score: float = -math.inf
    best_epoch: int = 0
    scheduler: dict[str, Any] | None = None


def train_decoder(
    dataset: ChipDataset,
    settings: TrainSettings,
    options: SamOptions,
) -> Path:
    """Train SAM's mask decoder on ``dataset`` and save the model in ``settings.output_dir``."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = Path(settings.output_dir)
    target_name, target_id = _target_class(dataset, options)
    train_records = dataset.split("train")
    val_records = dataset.split("val")
    if not train_records:
        raise LabelsError(f"{dataset.root}: no chips in the train split; re-run geoseg tile with a smaller --val-fraction")
    missing = [b for b in options.bands if b not in dataset.band_names]
    if missing:
        raise BandError(
            f"{dataset.root}: option bands={','.join(options.bands)} but the chips have no "
            f"{','.join(missing)} (they have {','.join(dataset.band_names)})"
        )

    # A seedable sampler shuffles by (seed, epoch), so a resumed run sees the same order.
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=settings.seed),
        **_accelerator_arguments(settings.device),
    )
    main = accelerator.is_main_process
    set_seed(settings.seed)
    device = accelerator.device

    base = settings.model or DEFAULT_CHECKPOINT
    state = RunState(history=[])
    saved_settings: dict[str, Any] | None = None
    resuming = settings.resume and (out / STATE_DIR / "state.json").is_file()
    if settings.resume and not resuming:
        log.warning("%s holds no training state to resume; training from the start", out)
    if resuming:
        saved_settings = json.loads((out / SETTINGS_FILE).read_text())
        base = settings.model or saved_settings["base_model"]
    model, frame = load_sam(base)
    checkpoint_id = checkpoint_identity(model)
    if saved_settings is not None:
        _check_resumable(saved_settings, checkpoint_id, options, out)
    freeze_encoders(model)

    rng = np.random.default_rng(settings.seed)
    if saved_settings is not None:
        stretch = BandStretch.from_json(saved_settings["stretch"])
    else:
        stretch = _fit_stretch(dataset, train_records, options, rng)
    train_set = ChipSet(dataset, train_records, options.bands, stretch, target_id)
    val_set = ChipSet(dataset, val_records, options.bands, stretch, target_id)
    prompt_settings = training_prompt_settings(options, settings.seed)

    cache_folder = None
    if options.cache_enabled:
        cache_folder = Path(options.cache).expanduser() if options.cache else default_cache_dir()
    cache = EmbeddingCache(cache_folder, checkpoint_id, frame.size)

    loader = torch.utils.data.DataLoader(
        train_set, batch_size=settings.batch_size, shuffle=True, collate_fn=_collate,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    decoder_parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        decoder_parameters, lr=settings.lr or DEFAULT_LR, weight_decay=options.weight_decay
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(options, steps_per_epoch * settings.epochs)
    )
    if resuming:
        state = _load_state(out, accelerator.unwrap_model(model), optimizer, scheduler)
    history = state.history or []
    sam = accelerator.unwrap_model(model)
    encoder_chips = 0

    def encode(images: np.ndarray) -> torch.Tensor:
        nonlocal encoder_chips
        encoder_chips += len(images)
        with torch.no_grad(), accelerator.autocast():
            pixel_values = frame.pixel_values(images, device)
            return image_embeddings(sam, pixel_values)

    if state.epoch >= settings.epochs:
        log.warning("%s was already trained for %d epochs; nothing to do (raise --epochs to go on)", out, state.epoch)
    if main:
        ensure_folder(out)
        _write_settings(out, base, checkpoint_id, frame, stretch, options, dataset, target_name, settings, state)
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        model.train()
        loader.set_epoch(epoch)
        epoch_rng = np.random.default_rng([settings.seed, epoch, accelerator.process_index])
        encoder_chips, cache.hits, cache.misses = 0, 0, 0
        started = time.perf_counter()
        running, seen = 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", leave=True,
            disable=not (settings.progress and main), dynamic_ncols=True,
        )
        for batch in bar:
            embeddings = cache.embeddings(batch["image"], encode, device)
            prompts: list[TrainingPrompt] = []
            for row, target in enumerate(batch["target"]):
                prompts += draw_training_prompts(
                    target, row, prompt_settings, epoch_rng, frame, options.max_prompts
                )
            if not prompts:
                # Every process must step together; a zero-weight prompt keeps this one in.
                prompts = [_dummy_prompt(batch["target"][0], frame)]
            loss = training_step(model, embeddings, prompts, frame, options, device)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(decoder_parameters, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
            seen += 1
            bar.set_postfix(loss=f"{running / seen:.4f}")
        train_seconds = time.perf_counter() - started
        totals = accelerator.reduce(
            torch.tensor([running, seen, encoder_chips, cache.hits], device=device, dtype=torch.float64),
            reduction="sum",
        )
        started = time.perf_counter()
        iou, f1 = _validate(
            model, val_set, cache, encode, frame, options, settings, accelerator,
        )
        record = {
            "epoch": epoch,
            "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
            "val_iou": iou,
            "val_f1": f1,
            "lr": float(scheduler.get_last_lr()[0]),
            "steps": steps_per_epoch,
            "train_seconds": round(train_seconds, 3),
            "val_seconds": round(time.perf_counter() - started, 3),
            "encoder_chips": int(totals[2]),
            "cache_hits": int(totals[3]),
        }
        history.append(record)
        if record["val_iou"] is not None:
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_iou=f"{iou:.3f}", val_f1=f"{f1:.3f}")
        bar.close()
        score = iou if iou is not None else -record["train_loss"]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch
        state.epoch = epoch
        if main:
            _log_epoch(record, val_records)
            _save_epoch(out, sam, optimizer, scheduler, state, history, improved,
                        plot=epoch == settings.epochs)
            _write_settings(out, base, checkpoint_id, frame, stretch, options, dataset, target_name, settings, state)
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _accelerator_arguments(device: str) -> dict[str, Any]:
    from geoseg.backend import resolve_device

    arguments: dict[str, Any] = {}
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ
    name = resolve_device(device.split(":")[0]) if device != "auto" else resolve_device("auto")
    if name == "cpu":
        arguments["cpu"] = True
    if not launched:
        if name == "cuda":
            arguments["mixed_precision"] = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            arguments["mixed_precision"] = "no"
    return arguments


def _target_class(dataset: ChipDataset, options: SamOptions) -> tuple[str, int]:
    """The class SAM learns to segment: ``option target``, or the one non-background class."""
    classes = dataset.classes or ClassMap.from_names(["background", "water"])
    if options.target is not None:
        return options.target, classes.id_of(options.target, source=f"{dataset.root} (option target)")
    foreground = [c for c in classes if c.id != 0]
    if len(foreground) != 1:
        raise ClassError(
            f"{dataset.root}: SAM segments one class but the chips have "
            f"{', '.join(c.name for c in foreground) or 'none besides background'}; pick one "
            f"with --option target=NAME"
        )
    return foreground[0].name, foreground[0].id


def _fit_stretch(
    dataset: ChipDataset, records: list[ChipRecord], options: SamOptions, rng: np.random.Generator
) -> BandStretch:
    chosen = records
    if len(records) > STRETCH_CHIPS:
        chosen = [records[i] for i in sorted(rng.choice(len(records), STRETCH_CHIPS, replace=False))]

    def chips():
        for record in chosen:
            data, valid = dataset.read_image(record)
            yield select_bands(data, dataset.band_names, options.bands, source=str(record.image)), valid

    return BandStretch.fit(chips(), options.bands, options.percentiles, rng)


def lr_schedule(options: SamOptions, total_steps: int):
    """The learning-rate factor per optimizer step: linear warm-up, then cosine or linear decay."""
    warmup = int(round(options.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if options.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    # Keep numpy: images feed the cache's content hash, targets the prompt sampler.
    return {
        "index": [item["index"] for item in items],
        "image": np.stack([item["image"] for item in items]),
        "target": np.stack([item["target"] for item in items]),
    }


def _dummy_prompt(target: np.ndarray, frame: ModelInput) -> TrainingPrompt:
    height, width = target.shape
    box = frame.boxes(np.array([[0, 0, width, height]], np.float32), height, width)[0]
    empty = np.zeros(target.shape, bool)
    return TrainingPrompt(0, None, None, box, empty, ~empty, weight=0.0)


def training_step(
    model,
    embeddings: torch.Tensor,
    prompts: list[TrainingPrompt],
    frame: ModelInput,
    options: SamOptions,
    device: torch.device,
) -> torch.Tensor:
    """The loss of one batch of prompts, each decoded against its chip's embedding."""
    chips = torch.as_tensor([p.chip for p in prompts], device=device)
    points = labels = boxes = None
    if any(p.points is not None for p in prompts):
        # Box prompts of chips without room for negatives get padding points only.
        empty = (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
        stacked, stacked_labels = pad_points(
            [(p.points, p.labels) if p.points is not None else empty for p in prompts]
        )
        points = torch.as_tensor(stacked, device=device)[:, None]
        labels = torch.as_tensor(stacked_labels, device=device)[:, None]
    if prompts[0].box is not None:
        boxes = torch.as_tensor(np.stack([p.box for p in prompts]), device=device)[:, None]
    logits, scores = run_decoder(model, embeddings[chips], points, labels, boxes, options.multimask)
    logits, scores = logits[:, 0], scores[:, 0]
    size = logits.shape[-1]
    targets = frame.targets_to_low_res(
        torch.as_tensor(np.stack([p.target for p in prompts]), device=device, dtype=torch.float32), size
    )
    # Pixels to learn from: the chip (not SAM's padding), minus ignored pixels.
    valid = torch.as_tensor(np.stack([p.valid for p in prompts]), device=device, dtype=torch.float32)
    weights = (frame.targets_to_low_res(valid, size) > 0.5).float()
    per_prompt = mask_loss(logits, targets, weights, options.loss)
    real_iou = mask_iou(logits.detach(), targets, weights)
    per_prompt = per_prompt + IOU_LOSS_WEIGHT * (scores.float() - real_iou) ** 2
    prompt_weights = torch.as_tensor([p.weight for p in prompts], device=device)
    return (per_prompt * prompt_weights).sum() / prompt_weights.sum().clamp_min(1.0)


@torch.no_grad()
def _validate(model, val_set: ChipSet, cache: EmbeddingCache, encode, frame: ModelInput,
              options: SamOptions, settings: TrainSettings, accelerator) -> tuple[float | None, float | None]:
    """Water IoU and F1 over the val split, with prompts drawn the same way each epoch."""
    if len(val_set) == 0:
        return None, None
    model.eval()
    sam = accelerator.unwrap_model(model)
    device = accelerator.device
    prompt_settings = training_prompt_settings(options, settings.seed)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # tp, fp, fn
    mine = list(range(accelerator.process_index, len(val_set), accelerator.num_processes))
    for start in range(0, len(mine), settings.batch_size):
        items = [val_set[i] for i in mine[start : start + settings.batch_size]]
        chip_prompts: list[Prompts] = []
        for item in items:
            target = item["target"]
            valid = target != IGNORE_INDEX
            rng = np.random.default_rng([settings.seed, item["index"]])
            water = (target == 1) & valid
            chip_prompts.append(sample_prompts(water, prompt_settings, rng, valid).prompts)
        prompted = [i for i, p in enumerate(chip_prompts) if not p.empty]
        embeddings = (
            cache.embeddings(np.stack([items[i]["image"] for i in prompted]), encode, device)
            if prompted else None
        )
        for i, item in enumerate(items):
            target = torch.as_tensor(item["target"], device=device)
            height, width = target.shape
            if i in prompted:
                probability = segment_chip(
                    sam, embeddings[prompted.index(i)], chip_prompts[i], frame, height, width,
                    options.multimask,
                )
                predicted = probability > 0.5
            else:
                predicted = torch.zeros_like(target, dtype=torch.bool)
            valid = target != IGNORE_INDEX
            truth = (target == 1) & valid
            predicted = predicted & valid
            counts[0] += (predicted & truth).sum()
            counts[1] += (predicted & ~truth).sum()
            counts[2] += (~predicted & truth).sum()
    counts = accelerator.reduce(counts, reduction="sum")
    tp, fp, fn = (float(c) for c in counts)
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def _log_epoch(record: dict[str, Any], val_records: list[ChipRecord]) -> None:
    val = (
        f" val IoU {record['val_iou']:.4f} F1 {record['val_f1']:.4f}"
        if record["val_iou"] is not None else " (no val chips)"
    )
    log.info(
        "epoch %d: loss %.4f%s; %d chips encoded, %d from cache; %.1fs",
        record["epoch"], record["train_loss"], val, record["encoder_chips"], record["cache_hits"],
        record["train_seconds"],
    )


def _check_resumable(saved: dict[str, Any], checkpoint_id: str, options: SamOptions, out: Path) -> None:
    if saved.get("checkpoint_id") != checkpoint_id:
        raise OptionError(
            f"{out}: was trained from base checkpoint {saved.get('base_model')}, not the one "
            f"given with --model; resume with the same --model or train afresh with --overwrite"
        )
    if tuple(saved.get("bands", ())) != options.bands:
        raise OptionError(
            f"{out}: was trained on bands {','.join(saved.get('bands', ()))}; resume with "
            f"--option bands={','.join(saved.get('bands', ()))} or train afresh with --overwrite"
        )


def _write_settings(out: Path, base: str, checkpoint_id: str, frame: ModelInput, stretch: BandStretch,
                    options: SamOptions, dataset: ChipDataset, target_name: str,
                    settings: TrainSettings, state: RunState) -> None:
    base_path = Path(base).expanduser()
    document = {
        "format": FORMAT_VERSION,
        "backend": "sam",
        "base_model": str(base_path.resolve()) if base_path.exists() else base,
        "checkpoint_id": checkpoint_id,
        "input_size": frame.size,
        "image_mean": list(frame.mean),
        "image_std": list(frame.std),
        "bands": list(options.bands),
        "stretch": stretch.to_json() | {"percentiles": list(options.percentiles)},
        "class_name": target_name,
        "chip_size": dataset.chip_size,
        "prompt": {
            "kind": options.prompt,
            "positive": options.positive,
            "negative": options.negative,
            "erode": options.erode_radius,
            "perturb": options.perturb,
            "max_prompts": options.max_prompts,
        },
        "multimask": options.multimask,
        "loss": options.loss,
        "auto_prompts": {"index": options.index or "ndwi", "threshold": options.threshold or "otsu"},
        "training": {
            "dataset": str(dataset.root.resolve()),
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr or DEFAULT_LR,
            "weight_decay": options.weight_decay,
            "schedule": options.schedule,
            "warmup": options.warmup,
            "seed": settings.seed,
            "epochs_done": state.epoch,
            "best_epoch": state.best_epoch,
        },
    }
    with atomic_output(out / SETTINGS_FILE) as tmp:
        tmp.write_text(json.dumps(document, indent=2))


def _save_epoch(out: Path, sam, optimizer, scheduler, state: RunState,
                history: list[dict[str, Any]], improved: bool, *, plot: bool) -> None:
    """Write the last-epoch training state, the best decoder, the history and its plot."""
    state_dir = ensure_folder(out / STATE_DIR)
    with atomic_output(state_dir / DECODER_FILE) as tmp:
        save_decoder(sam, tmp, {"epoch": str(state.epoch)})
    with atomic_output(state_dir / "optimizer.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    document = {
        "epoch": state.epoch,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "scheduler": scheduler.state_dict(),
        "history": history,
    }
    # Written last: its presence says the files above are complete for this epoch.
    with atomic_output(state_dir / "state.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2, default=float))
    if improved:
        with atomic_output(out / DECODER_FILE) as tmp:
            save_decoder(sam, tmp, {"epoch": str(state.epoch)})
    with atomic_output(out / HISTORY_FILE) as tmp:
        tmp.write_text(json.dumps(history, indent=2))
    # Drawing takes longer than a decoder epoch on small sets: only at the end of a run.
    if plot:
        with atomic_output(out / PLOT_FILE) as tmp:
            plot_history(history, tmp)


def _load_state(out: Path, sam, optimizer, scheduler) -> RunState:
    state_dir = out / STATE_DIR
    document = json.loads((state_dir / "state.json").read_text())
    load_decoder(sam, state_dir / DECODER_FILE)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(document["scheduler"])
    return RunState(
        epoch=int(document["epoch"]),
        history=list(document["history"]),
        best_score=float(document["best_score"]),
        best_epoch=int(document["best_epoch"]),
    )


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation metrics per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(8, 3.5), dpi=100)
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    if any(h.get("val_iou") is not None for h in history):
        metric_axes.plot(epochs, [h["val_iou"] for h in history], marker="o", label="val IoU")
        metric_axes.plot(epochs, [h["val_f1"] for h in history], marker="s", label="val F1")
        metric_axes.set_ylim(0, 1)
        metric_axes.legend()
    metric_axes.set_xlabel("epoch")
    figure.suptitle("SAM mask-decoder training")
    figure.tight_layout()
    figure.savefig(path, format="png")
