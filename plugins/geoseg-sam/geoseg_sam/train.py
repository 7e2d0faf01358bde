"""Mask-decoder training through the training core: frozen encoders, cached embeddings,
prompts redrawn every epoch.

The core (``geoseg.training``) runs the loop, on one CPU, one GPU or under ``accelerate
launch``, with its split policy, schedule, metrics, resume, history and manifest. This
module supplies SAM's part as a ``TrainingTask``: each step takes a batch of chips, gets
their image embeddings from the cache (running the frozen vision encoder only for chips
not cached yet), draws prompts from each chip's ground truth (one prompt per positive
point, with the chip's negative points, or one per perturbed box; the target is the water
component the prompt came from), and trains the mask decoder on the decoder's
low-resolution masks, plus SAM's IoU head on the masks' real IoU. Validation segments
each val chip from prompts drawn the same way every epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.dataset import ChipDataset, ChipRecord
from geoseg.errors import BandError, ClassError, OptionError
from geoseg.prompts import PromptSettings, sample_prompts
from geoseg.training import TrainingRun, TrainingTask
from geoseg_sam.cache import EmbeddingCache, default_cache_dir
from geoseg_sam.decode import pad_points, run_decoder, segment_chip
from geoseg_sam.model import (
    DEFAULT_CHECKPOINT,
    checkpoint_identity,
    freeze_encoders,
    image_embeddings,
    load_sam,
    save_decoder,
)
from geoseg_sam.options import SamOptions
from geoseg_sam.preprocess import BandStretch, ModelInput, select_bands

log = logging.getLogger(__name__)

SETTINGS_FILE = "geoseg_sam.json"
DECODER_FILE = "decoder.safetensors"
FORMAT_VERSION = 1
DEFAULT_LR = 1e-4
#: Chips sampled to measure the 8-bit stretch.
STRETCH_CHIPS = 64
#: Weight of the IoU-head loss, as in the SAM paper.
IOU_LOSS_WEIGHT = 1.0
#: Weight of the focal term in loss=focal (the SAM paper's 20:1 focal:dice).
FOCAL_WEIGHT = 20.0


def training_prompt_settings(
    options: SamOptions, seed: int, *, perturb: bool = True
) -> PromptSettings:
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


def _target_class(dataset: ChipDataset, options: SamOptions) -> tuple[str, int]:
    """The class SAM learns to segment: ``option target``, or the one non-background class."""
    classes = dataset.classes or ClassMap.from_names(["background", "water"])
    if options.target is not None:
        return options.target, classes.id_of(
            options.target, source=f"{dataset.root} (option target)"
        )
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
    if options.stretch == "off":
        return BandStretch.identity(options.bands)
    chosen = records
    if len(records) > STRETCH_CHIPS:
        chosen = [
            records[i] for i in sorted(rng.choice(len(records), STRETCH_CHIPS, replace=False))
        ]

    def chips():
        for record in chosen:
            data, valid = dataset.read_image(record)
            yield (
                select_bands(data, dataset.band_names, options.bands, source=str(record.image)),
                valid,
            )

    return BandStretch.fit(chips(), options.bands, options.percentiles, rng)


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
        torch.as_tensor(np.stack([p.target for p in prompts]), device=device, dtype=torch.float32),
        size,
    )
    # Pixels to learn from: the chip (not SAM's padding), minus ignored pixels.
    valid = torch.as_tensor(
        np.stack([p.valid for p in prompts]), device=device, dtype=torch.float32
    )
    weights = (frame.targets_to_low_res(valid, size) > 0.5).float()
    per_prompt = mask_loss(logits, targets, weights, options.loss)
    real_iou = mask_iou(logits.detach(), targets, weights)
    per_prompt = per_prompt + IOU_LOSS_WEIGHT * (scores.float() - real_iou) ** 2
    prompt_weights = torch.as_tensor([p.weight for p in prompts], device=device)
    return (per_prompt * prompt_weights).sum() / prompt_weights.sum().clamp_min(1.0)


class SamTask(TrainingTask):
    """SAM's part of a training run: the mask decoder learns, both encoders stay frozen."""

    standardize = False  # SAM sees an 8-bit stretch of three bands, fitted here
    default_lr = DEFAULT_LR

    def __init__(self, options: SamOptions) -> None:
        self.options = options
        self.base = DEFAULT_CHECKPOINT
        self.target_name, self.target_id = "water", 1
        self.checkpoint_id = ""
        self.stretch: BandStretch | None = None
        self.frame: ModelInput | None = None
        self.cache: EmbeddingCache | None = None
        self.sam = None
        self.encoder_chips = 0
        self.prompt_settings = training_prompt_settings(options, 0)
        self.rng = np.random.default_rng(0)
        self.band_names: tuple[str, ...] = ()

    def classes(self, dataset: ChipDataset, records) -> ClassMap:
        self.target_name, self.target_id = _target_class(dataset, self.options)
        return ClassMap.from_names(["background", self.target_name])

    def label_lookup(self, classes: ClassMap) -> np.ndarray:
        """The target class is channel 1; every other class is background, 255 ignored."""
        table = np.zeros(256, np.uint8)
        table[self.target_id] = 1
        table[IGNORE_INDEX] = IGNORE_INDEX
        return table

    def input_bands(self, run: TrainingRun) -> tuple[str, ...]:
        return self.options.bands

    def setup(self, run: TrainingRun) -> None:
        dataset = run.dataset
        missing = [b for b in self.options.bands if b not in dataset.band_names]
        if missing:
            raise BandError(
                f"{dataset.root}: option bands={','.join(self.options.bands)} but the chips have no "
                f"{','.join(missing)} (they have {','.join(dataset.band_names)})"
            )
        self.band_names = dataset.band_names
        resumed = run.resumed
        self.base = run.settings.model or (resumed or {}).get("base_model") or DEFAULT_CHECKPOINT
        if resumed is not None:
            self.target_name, self.target_id = resumed["class_name"], int(resumed["class_id"])
        self.prompt_settings = training_prompt_settings(self.options, run.settings.seed)

    def build_model(self, run: TrainingRun):
        model, self.frame = load_sam(self.base)
        self.checkpoint_id = checkpoint_identity(model)
        resumed = run.resumed
        if resumed is not None:
            _check_resumable(resumed, self.checkpoint_id, self.options, run.settings.output_dir)
            self.stretch = BandStretch.from_json(resumed["stretch"])
        else:
            rng = np.random.default_rng(run.settings.seed)
            self.stretch = _fit_stretch(run.dataset, run.train_records, self.options, rng)
        freeze_encoders(model)
        folder = None
        if self.options.cache_enabled:
            folder = (
                Path(self.options.cache).expanduser() if self.options.cache else default_cache_dir()
            )
        self.cache = EmbeddingCache(folder, self.checkpoint_id, self.frame.size)
        self.sam = model
        return model

    def transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The chip as SAM's 8-bit input (3, H, W) and its uint8 target (1 water, 255 ignore)."""
        data = select_bands(sample["image"], self.band_names, self.options.bands)
        image = self.stretch.apply(data, sample["valid"])
        return {"index": sample["index"], "image": image, "label": sample["label"].astype(np.uint8)}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        # Keep numpy: images feed the cache's content hash, targets the prompt sampler.
        return {
            "index": [s["index"] for s in samples],
            "image": np.stack([s["image"] for s in samples]),
            "label": np.stack([s["label"] for s in samples]),
        }

    def begin_epoch(self, run: TrainingRun) -> None:
        self.rng = run.epoch_rng()
        self.encoder_chips, self.cache.hits, self.cache.misses = 0, 0, 0

    def encode(self, images: np.ndarray, run: TrainingRun) -> torch.Tensor:
        self.encoder_chips += len(images)
        with torch.no_grad(), run.accelerator.autocast():
            return image_embeddings(self.sam, self.frame.pixel_values(images, run.device))

    def embeddings(self, images: np.ndarray, run: TrainingRun) -> torch.Tensor:
        return self.cache.embeddings(images, lambda chips: self.encode(chips, run), run.device)

    def training_step(self, model, batch, run: TrainingRun):
        embeddings = self.embeddings(batch["image"], run)
        prompts: list[TrainingPrompt] = []
        for row, target in enumerate(batch["label"]):
            prompts += draw_training_prompts(
                target, row, self.prompt_settings, self.rng, self.frame, self.options.max_prompts
            )
        if not prompts:
            # Every process must step together; a zero-weight prompt keeps this one in.
            prompts = [_dummy_prompt(batch["label"][0], self.frame)]
        return training_step(model, embeddings, prompts, self.frame, self.options, run.device)

    def epoch_summary(self, run: TrainingRun) -> dict[str, Any]:
        totals = run.accelerator.reduce(
            torch.tensor([self.encoder_chips, self.cache.hits], device=run.device,
                         dtype=torch.float64),
            reduction="sum",
        )  # fmt: skip
        return {"encoder_chips": int(totals[0]), "cache_hits": int(totals[1])}

    def validation_step(self, model, batch, run: TrainingRun):
        """Water where SAM segments it from prompts drawn from each val chip's truth."""
        settings = training_prompt_settings(self.options, run.settings.seed)
        chip_prompts = []
        for index, target in zip(batch["index"], batch["label"], strict=True):
            valid = target != IGNORE_INDEX
            rng = np.random.default_rng([run.settings.seed, index])
            chip_prompts.append(sample_prompts((target == 1) & valid, settings, rng, valid).prompts)
        prompted = [i for i, p in enumerate(chip_prompts) if not p.empty]
        count, height, width = batch["label"].shape
        predicted = torch.zeros((count, height, width), dtype=torch.int64, device=run.device)
        if prompted:
            embeddings = self.embeddings(batch["image"][prompted], run)
            for j, i in enumerate(prompted):
                probability = segment_chip(
                    self.sam, embeddings[j], chip_prompts[i], self.frame, height, width,
                    self.options.multimask,
                )  # fmt: skip
                predicted[i] = (probability > 0.5).long()
        return predicted, None

    def save_weights(self, model, folder: Path, run: TrainingRun) -> None:
        import json

        save_decoder(model, folder / DECODER_FILE, {"epoch": str(run.epoch)})
        (folder / SETTINGS_FILE).write_text(json.dumps(self.state(run), indent=2))

    def state(self, run: TrainingRun) -> dict[str, Any]:
        """``geoseg_sam.json``: what ``SamBackend.load`` and a resumed run need."""
        options = self.options
        base_path = Path(self.base).expanduser()
        return {
            "format": FORMAT_VERSION,
            "backend": "sam",
            "base_model": str(base_path.resolve()) if base_path.exists() else self.base,
            "checkpoint_id": self.checkpoint_id,
            "input_size": self.frame.size,
            "image_mean": list(self.frame.mean),
            "image_std": list(self.frame.std),
            "bands": list(options.bands),
            "stretch": self.stretch.to_json() | {"percentiles": list(options.percentiles)},
            "class_name": self.target_name,
            "class_id": self.target_id,
            "chip_size": run.dataset.chip_size,
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
            "auto_prompts": {
                "index": options.index or "auto",
                "threshold": options.threshold or "auto",
            },
        }

    def normalization(self, run: TrainingRun) -> dict[str, Any]:
        return {"kind": "percentile_stretch", "bands": list(self.options.bands),
                **self.stretch.to_json(), "percentiles": list(self.options.percentiles)}  # fmt: skip


def _check_resumable(saved: dict[str, Any], checkpoint_id: str, options: SamOptions, out) -> None:
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
