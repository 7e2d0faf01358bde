"""The training core: one loop that every learned backend trains through.

A backend that trains supplies a ``TrainingTask``: how to build its model, the loss of one
step, predictions for validation, and how to save its weights. Everything else lives here
and behaves the same for every backend:

- Accelerate set-up: device, mixed precision, ``accelerate launch`` data parallelism (only
  the main process writes files), gradient accumulation;
- ``ChipSamples``, a map-style torch dataset over a ``ChipDataset`` with N-band
  augmentation (flips, 90-degree turns, per-band brightness/contrast) applied to image,
  label and valid mask together;
- one train/val split policy (``split_records``): the chip set's split; with no val chips,
  a seeded fraction of the training chips is held out, and training chips are never
  validated on;
- AdamW with linear warm-up then cosine or linear decay, gradient clipping, best-epoch
  tracking on one named metric, optional early stopping;
- resume through ``accelerator.save_state`` (trainable weights as safetensors);
- ``history.json`` (one schema), ``history.png`` and the model manifest
  ``geoseg_model.json`` (see ``geoseg.manifest``);
- validation scores from ``geoseg.evaluate.Evaluation``, the implementation
  ``geoseg evaluate`` uses;
- a ``TrainingProgress`` channel that the CLI turns into bars and one line per epoch.

torch and accelerate are imported only when a run starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geoseg.atomic import atomic_output, ensure_folder
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.config import option
from geoseg.dataset import ChipDataset, ChipRecord
from geoseg.errors import BandError, InputFileError, LabelsError, OptionError

if TYPE_CHECKING:
    from geoseg.backend import Backend, TrainSettings

__all__ = [
    "TrainingOptions",
    "TrainingTask",
    "TrainingRun",
    "TrainingProgress",
    "Normalization",
    "ChipSamples",
    "augment_chip",
    "confusion_matrix",
    "validation_scores",
    "options_json",
    "train_backend",
]

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
PLOT_FILE = "history.png"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "geoseg_state.json"
STATE_VERSION = 1
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 8
#: Metrics ``monitor`` can name; the best epoch has the highest (lowest for a loss).
MONITORS = ("mean_iou", "overall_accuracy", "val_loss")
SCHEDULES = ("cosine", "linear")
PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainingOptions:
    """Options every trainable backend shares (``--option key=value``); each says what it
    does in its ``help``, which ``geoseg backends NAME`` prints."""

    weight_decay: float = option(
        0.01, applies="train", help="AdamW weight decay on the trained weights."
    )
    warmup: float = option(
        0.05,
        applies="train",
        help="Fraction of the optimizer steps with a linearly rising learning rate.",
    )
    schedule: Literal["cosine", "linear"] = option(
        "cosine",
        applies="train",
        help="How the learning rate decays to 0 after the warm-up: cosine or linear.",
    )
    max_grad_norm: float = option(1.0, applies="train", help="Gradient clipping (0: off).")
    accumulate: int = option(1, applies="train", help="Batches per optimizer step.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = option(
        "auto",
        applies="train",
        help="auto (bf16 or fp16 on a GPU, none on the CPU; under accelerate launch the "
        "launcher's choice), no, fp16 or bf16.",
    )
    augment: bool = option(
        True,
        applies="train",
        help="Random flips and 90-degree turns of image and label together, and per-band "
        "brightness/contrast jitter.",
    )
    jitter: float = option(
        0.1,
        applies="train",
        help="Size of augment's per-band brightness/contrast jitter, in standard deviations "
        "of each band (0: none).",
    )
    monitor: Literal["mean_iou", "overall_accuracy", "val_loss"] = option(
        "mean_iou",
        applies="train",
        help="The validation metric that picks the best epoch: mean_iou, overall_accuracy "
        "or val_loss.",
    )
    patience: int = option(
        0, applies="train", help="Stop after this many epochs without a better one (0: never)."
    )
    val_fraction: float = option(
        0.2,
        applies="train",
        help="Share of the training chips held out for validation when the chip set has no "
        "val split.",
    )
    num_workers: int = option(0, applies="train", help="Data-loading processes.")

    def __post_init__(self) -> None:
        if not 0 <= self.weight_decay < 1:
            raise OptionError(f"option weight_decay must be in [0, 1), got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            raise OptionError(
                f"option warmup is a fraction of the training steps in [0, 1), got {self.warmup}"
            )
        choices = (
            ("schedule", SCHEDULES),
            ("mixed_precision", PRECISIONS),
            ("monitor", MONITORS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise OptionError(
                    f"option {name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.max_grad_norm < 0:
            raise OptionError(
                f"option max_grad_norm must be >= 0 (0: off), got {self.max_grad_norm}"
            )
        for name in ("accumulate", "patience", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(f"option {name} must be a whole number >= 0, got {value!r}")
        if self.accumulate < 1:
            raise OptionError("option accumulate must be at least 1")
        if not 0 <= self.jitter < 1:
            raise OptionError(f"option jitter must be in [0, 1), got {self.jitter}")
        if not 0 < self.val_fraction < 1:
            raise OptionError(f"option val_fraction must be in (0, 1), got {self.val_fraction}")


# --------------------------------------------------------------------------- progress


class TrainingProgress:
    """Where a run reports what it does; the CLI shows it, the default only logs.

    Called on the main process only. ``stage`` opens a bar of ``total`` steps
    (``advance`` moves it, ``end_stage`` closes it); ``epoch`` gets each history entry
    once validated, with ``line`` its one-line summary (``epoch_line``).
    """

    def message(self, text: str) -> None:
        log.info(text)

    def warning(self, text: str) -> None:
        log.warning(text)

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1, loss: float | None = None) -> None:
        pass

    def end_stage(self) -> None:
        pass

    def epoch(self, record: dict[str, Any], line: str) -> None:
        log.info(line)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch, the same for every backend: loss and validation scores."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    parts = [f"train loss {number(record['train_loss'])}"]
    if record.get("validated"):
        if record.get("val_loss") is not None:
            parts.append(f"val loss {number(record['val_loss'])}")
        parts.append(f"mean IoU {number(record['mean_iou'])}")
        parts.append(f"accuracy {number(record['overall_accuracy'])}")
        parts += [f"{name} IoU {number(s['iou'])}" for name, s in record["per_class"].items()]
    else:
        parts.append("no validation chips")
    line = f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts)
    return line + (" (best so far, saved)" if record.get("best") else "")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Normalization:
    """Per-band standardisation ``(value - mean) / std`` in raw source units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(B, H, W) float32 standardised values; invalid pixels hold 0."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        image = (data.astype(np.float32) - mean) / std
        image[:, ~valid] = 0
        return image

    def to_json(self) -> dict[str, Any]:
        return {"kind": "standardize", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalization:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


def band_statistics(
    dataset: ChipDataset,
    records: Sequence[ChipRecord],
    progress: Callable[[int], None] | None = None,
) -> Normalization:
    """Mean and standard deviation of each band over the valid pixels of ``records``.

    In raw source units, in ``dataset.band_names`` order. A band without spread gets a
    standard deviation of 1 so normalising it never divides by zero.
    """
    bands = len(dataset.band_names)
    total = np.zeros(bands, np.float64)
    squares = np.zeros(bands, np.float64)
    count = 0
    for record in records:
        data, valid = dataset.read_image(record)
        pixels = data[:, valid].astype(np.float64)
        total += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
        if progress is not None:
            progress(1)
    if count == 0:
        raise LabelsError(f"{dataset.root}: the training chips hold no valid pixels")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-6] = 1.0
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def dataset_classes(
    dataset: ChipDataset, records: Sequence[ChipRecord], *, per_chip: bool = False
) -> ClassMap:
    """The chip set's classes, or generic ones for the ids its labels hold.

    ``per_chip``: the classes the chips' own classes (``chip_class``) hold, so a chip
    classifier gets no output for a class no chip is labelled with.
    """
    if per_chip:
        ids = {r.chip_class for r in records if r.chip_class is not None}
        if not ids:
            raise LabelsError(
                f"{dataset.root}: no chip has a class of its own; tile with --chip-labels "
                "or --class-folders for a chip classifier"
            )
        if dataset.classes is not None:
            return dataset.classes.with_ids(ids)
        return ClassMap.from_ids(ids)
    if dataset.classes is not None:
        return dataset.classes
    ids = set()
    for record in records:
        ids.update(int(v) for v in np.unique(dataset.read_label(record)))
    ids.discard(IGNORE_INDEX)
    if not ids:
        raise LabelsError(f"{dataset.root}: the label chips hold no class ids, only 255 (ignore)")
    return ClassMap.from_ids(ids)


def class_lookup(classes: ClassMap) -> np.ndarray:
    """(256,) uint8 table from class id to output channel; 255 for ids outside ``classes``."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for channel, info in enumerate(classes):
        table[info.id] = channel
    return table


def augment_chip(
    image: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    jitter: float = 0.1,
    standardized: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A randomly flipped, turned and jittered copy of one chip.

    ``image`` (B, H, W) float32, ``label`` and ``valid`` (H, W), transformed together.
    Overhead scenes have no "up", so flips and 90-degree turns give equally valid chips.
    The jitter scales contrast and shifts brightness per band, in units of the band's
    standard deviation (1 for a ``standardized`` image, else the chip's own spread), so
    it extends to near-infrared and any other band. Invalid pixels stay 0.
    """
    if rng.random() < 0.5:
        image, label, valid = image[:, :, ::-1], label[:, ::-1], valid[:, ::-1]
    if rng.random() < 0.5:
        image, label, valid = image[:, ::-1], label[::-1], valid[::-1]
    turns = int(rng.integers(0, 4)) if image.shape[-1] == image.shape[-2] else 0
    if turns:
        image = np.rot90(image, turns, axes=(-2, -1))
        label, valid = np.rot90(label, turns), np.rot90(valid, turns)
    image = np.ascontiguousarray(image, dtype=np.float32)
    label, valid = np.ascontiguousarray(label), np.ascontiguousarray(valid)
    if jitter > 0:
        bands = image.shape[0]
        contrast = 1 + (rng.random(bands) * 2 - 1) * jitter
        brightness = (rng.random(bands) * 2 - 1) * jitter
        if standardized:
            scale = np.ones(bands)
        else:
            scale = image[:, valid].std(axis=1) if valid.any() else np.ones(bands)
        centre = 0.0 if standardized else image[:, valid].mean(axis=1)[:, None, None]
        shifted = (image - centre) * contrast[:, None, None].astype(np.float32) + centre
        image = shifted + (brightness * scale)[:, None, None].astype(np.float32)
        image = (image * valid).astype(np.float32)
    return image, label, valid


class ChipSamples:
    """A map-style torch dataset of the labelled chips ``records`` of a chip set.

    Each sample is a dict: ``index`` (int), ``image`` (B, H, W) float32 (standardised when
    ``normalization`` is given, raw source values otherwise; invalid pixels 0),
    ``label`` (H, W) int64 output channels (255 = ignore, also on invalid pixels) and
    ``valid`` (H, W) bool. With ``per_chip``, ``label`` is the chip's own class
    (``ChipRecord.chip_class``) as one int64 output channel, and no label chip is read. With ``augment``, the chip is augmented by ``augment_chip``
    with a generator seeded by (seed, epoch, index), so runs, resumed runs and any number
    of loader workers give the same chips. ``transform`` (a backend's) maps each sample.
    """

    def __init__(
        self,
        dataset: ChipDataset,
        records: Sequence[ChipRecord],
        lookup: np.ndarray,
        normalization: Normalization | None = None,
        *,
        augment: bool = False,
        jitter: float = 0.0,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        per_chip: bool = False,
    ) -> None:
        self.per_chip = per_chip
        self.dataset = dataset
        self.records = list(records)
        self.lookup = lookup
        self.normalization = normalization
        self.augment = augment
        self.jitter = jitter
        self.seed = seed
        self.transform = transform
        #: Set by the training loop before each epoch (loader workers copy it).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        data, valid = self.dataset.read_image(record)
        if self.per_chip:
            chip_class = IGNORE_INDEX if record.chip_class is None else record.chip_class
            ids = np.zeros(valid.shape, np.uint8)  # turned with the image, then dropped
        else:
            ids = self.dataset.read_label(record)
        if ids.shape != valid.shape:
            raise LabelsError(
                f"{record.label}: label is {ids.shape}, image is {valid.shape}; re-run geoseg tile"
            )
        if self.normalization is not None:
            image = self.normalization.apply(data, valid)
        else:
            image = np.where(valid, data, 0).astype(np.float32)
        label = self.lookup[ids]
        label[~valid] = IGNORE_INDEX
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, label, valid = augment_chip(
                image, label, valid, rng, self.jitter, self.normalization is not None
            )
        if self.per_chip:
            label = np.asarray(self.lookup[chip_class])
        sample = {"index": index, "image": image, "label": label.astype(np.int64), "valid": valid}
        return self.transform(sample) if self.transform is not None else sample


def split_records(
    dataset: ChipDataset,
    val_fraction: float,
    seed: int,
    progress: TrainingProgress | None = None,
    *,
    per_chip: bool = False,
) -> tuple[list[ChipRecord], list[ChipRecord]]:
    """The train and val chips: the chip set's split, else a seeded held-out fraction.

    Training chips are never validated on. A lone training chip trains without
    validation; ``progress.warning`` says either once. ``per_chip``: the chips with a
    class of their own (``chip_class``) are the labelled ones.
    """
    if per_chip:
        labelled = [r for r in dataset.records if r.chip_class is not None]
        if not labelled:
            raise LabelsError(
                f"{dataset.root}: no chip has a class of its own (a chip classifier learns "
                f"one class per chip); make the chip set with geoseg tile SRC -o {dataset.root} "
                "--labels LABELS --chip-labels majority, or from class folders with --class-folders"
            )
    else:
        labelled = [r for r in dataset.records if r.label is not None]
    if not labelled:
        raise LabelsError(
            f"{dataset.root}: the chips have no labels; make the chip set with geoseg tile "
            f"SRC -o {dataset.root} --labels LABELS"
        )
    train = [r for r in labelled if r.split == "train"]
    val = [r for r in labelled if r.split == "val"]
    if not train:
        raise LabelsError(
            f"{dataset.root}: no chips in the train split; re-run geoseg tile with a "
            "smaller --val-fraction"
        )
    if val:
        return train, val
    if len(train) < 2:
        if progress is not None:
            progress.warning(
                f"{dataset.root}: one labelled chip and no val split; training without "
                "validation (tile a larger area or with --val-fraction for scores)"
            )
        return train, []
    held = min(len(train) - 1, max(1, round(val_fraction * len(train))))
    order = np.random.default_rng(seed).permutation(len(train))
    chosen = set(order[:held].tolist())
    if progress is not None:
        progress.warning(
            f"{dataset.root}: no validation chips in the chip set; holding out {held} of "
            f"{len(train)} training chips for validation (option val_fraction="
            f"{val_fraction:g}, seed {seed})"
        )
    return (
        [r for i, r in enumerate(train) if i not in chosen],
        [r for i, r in enumerate(train) if i in chosen],
    )


# --------------------------------------------------------------------------- schedule, metrics


def lr_factor(warmup: float, total_steps: int, schedule: str = "cosine") -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: linear warm-up over a ``warmup`` fraction
    of ``total_steps``, then cosine or linear decay to 0."""
    warmup_steps = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def confusion_matrix(predicted, target, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """(C, C) int64 torch tensor of pixel counts, rows = true channel, columns = predicted."""
    import torch

    keep = target != ignore_index
    index = target[keep].long() * num_classes + predicted[keep].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def validation_scores(confusion: np.ndarray, classes: ClassMap) -> dict[str, Any]:
    """Mean IoU, overall accuracy and per-class IoU/F1/precision/recall of a confusion
    matrix over ``classes`` (channel order), through ``geoseg.evaluate.Evaluation``."""
    from geoseg.evaluate import Evaluation

    result = Evaluation(classes, np.asarray(confusion, np.int64)).to_dict()
    return {
        "mean_iou": result["mean_iou"],
        "overall_accuracy": result["overall_accuracy"],
        "per_class": {
            row["name"]: {k: row[k] for k in ("iou", "f1", "precision", "recall")}
            for row in result["classes"]
        },
    }


# --------------------------------------------------------------------------- the task


class TrainingTask:
    """What a learned backend supplies to the training core; subclass and override.

    Must override ``build_model``, ``training_step``, ``validation_step`` and
    ``save_weights``. Every hook gets the ``TrainingRun`` (dataset, classes, options,
    accelerator, epoch ...). Batches are what ``collate`` makes of ``ChipSamples``
    samples (by default torch's collation: ``image`` (N, B, H, W) float32, ``label``
    (N, H, W) int64, ``valid`` (N, H, W) bool, ``index`` (N,), on the run's device).
    """

    #: Learning rate when ``--lr`` is not given.
    default_lr: float = 1e-4
    #: Standardise bands by their mean/std over the training chips (saved in the manifest).
    standardize: bool = True
    #: What a label is: ``"pixels"`` (a class per pixel, batches' ``label`` (N, H, W)) or
    #: ``"chips"`` (the chip's own class, ``ChipRecord.chip_class``: ``label`` (N,)).
    labels: Literal["pixels", "chips"] = "pixels"

    def classes(self, dataset: ChipDataset, records: Sequence[ChipRecord]) -> ClassMap:
        """Output classes in channel order (default: the chip set's)."""
        return dataset_classes(dataset, records, per_chip=self.labels == "chips")

    def label_lookup(self, classes: ClassMap) -> np.ndarray:
        """(256,) uint8 table from label id to output channel (255: ignore)."""
        return class_lookup(classes)

    def input_bands(self, run: TrainingRun) -> tuple[str, ...]:
        """Band names the model reads, in its input order (the manifest records them)."""
        return run.dataset.band_names

    def setup(self, run: TrainingRun) -> None:
        """Called before ``build_model``; ``run.resumed`` holds ``state()`` of the
        interrupted run when resuming (check it fits, restore from it)."""

    def build_model(self, run: TrainingRun):
        """The torch model to train; parameters with ``requires_grad`` are trained."""
        raise NotImplementedError

    def transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Map one ``ChipSamples`` sample (in the loader, before collation)."""
        return sample

    def collate(self, samples: list[dict[str, Any]]) -> Any:
        """A batch from samples; None here means torch's default collation."""
        return None

    def begin_epoch(self, run: TrainingRun) -> None:
        """Called before the training steps of ``run.epoch``."""

    def training_step(self, model, batch, run: TrainingRun):
        """The scalar loss of one batch (the core runs backward and the optimizer).

        Every process must return a loss connected to the trained weights, even for a
        batch with nothing to learn (multiply by 0), or gradients cannot synchronise.
        """
        raise NotImplementedError

    def epoch_summary(self, run: TrainingRun) -> dict[str, Any]:
        """Extra numbers for this epoch's history entry, after its training steps."""
        return {}

    def validation_step(self, model, batch, run: TrainingRun):
        """``(predicted, pixel_loss)`` for a validation batch: predicted output channels
        (N, H, W) int64 tensor, and the per-pixel loss (N, H, W) float (0 where the label
        is ignored) or None when the backend has no validation loss. With ``labels =
        "chips"`` both are per chip: (N,)."""
        raise NotImplementedError

    def save_weights(self, model, folder: Path, run: TrainingRun) -> None:
        """Write the trained weights (no pickle) and the backend's own files to ``folder``;
        ``model`` is unwrapped. ``Backend.load`` must read them back."""
        raise NotImplementedError

    def state(self, run: TrainingRun) -> dict[str, Any]:
        """JSON settings of this run: saved with checkpoints (``run.resumed`` on resume)
        and in the manifest's ``backend_settings``."""
        return {}

    def normalization(self, run: TrainingRun) -> dict[str, Any] | None:
        """The input normalisation for the manifest (default: the core's standardisation)."""
        return run.normalization.to_json() if run.normalization is not None else None


@dataclass
class TrainingRun:
    """What a run knows; handed to every ``TrainingTask`` hook."""

    backend: str
    dataset: ChipDataset
    settings: TrainSettings
    options: TrainingOptions
    classes: ClassMap
    train_records: list[ChipRecord]
    val_records: list[ChipRecord]
    progress: TrainingProgress
    epochs: int
    batch_size: int
    lr: float
    accelerator: Any = None
    normalization: Normalization | None = None
    resumed: dict[str, Any] | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def epoch_rng(self) -> np.random.Generator:
        """A generator for this epoch and process, the same in a resumed run."""
        return np.random.default_rng(
            [self.settings.seed, self.epoch, self.accelerator.process_index]
        )

    def report(self, text: str) -> None:
        """A message for the user (main process only)."""
        if self.is_main:
            self.progress.message(text)


# --------------------------------------------------------------------------- the loop


def train_backend(
    backend: Backend, task: TrainingTask, dataset: ChipDataset, settings: TrainSettings
) -> Path:
    """Train ``task``'s model on ``dataset``; the folder holding the best model.

    Files in ``settings.output_dir``: the backend's weights and files plus
    ``geoseg_model.json`` (the best epoch so far, replaced atomically), ``history.json``
    and ``history.png``, and ``checkpoint/`` (everything ``--resume`` needs after the
    last finished epoch).
    """
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    from geoseg.backend import resolve_device

    options = backend.options if isinstance(backend.options, TrainingOptions) else TrainingOptions()
    output = Path(settings.output_dir)
    progress = settings.progress or TrainingProgress()
    epochs = settings.epochs or DEFAULT_EPOCHS
    batch_size = settings.batch_size or DEFAULT_BATCH_SIZE
    lr = settings.lr if settings.lr is not None else task.default_lr

    device = resolve_device(settings.device)
    precision = _mixed_precision(options.mixed_precision, device)
    # Accelerate only forms a multi-process CPU group (gloo) when told it runs on the CPU;
    # otherwise each process launched by accelerate/torchrun would train alone. A seedable
    # sampler shuffles by (seed, epoch), so a resumed run sees the same order.
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=options.accumulate,
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=settings.seed
        ),
    )
    main = accelerator.is_main_process
    channel = progress if main else TrainingProgress()
    if accelerator.device.type != device.split(":")[0]:
        log.warning("running on %s (chosen by accelerate), not %s", accelerator.device, device)

    checkpoint = output / CHECKPOINT_DIR
    state = _read_state(checkpoint) if settings.resume else None
    if settings.resume and state is None:
        channel.warning(f"{output}: no checkpoint to resume from; training from the start")
    if state is not None:
        _check_resumable(state, backend.name, dataset, output)
        train_records, val_records = _records_by_name(dataset, state)
        classes = ClassMap.from_json(state["classes"], source=str(checkpoint / STATE_FILE))
    else:
        train_records, val_records = split_records(
            dataset, options.val_fraction, settings.seed, channel, per_chip=task.labels == "chips"
        )
        classes = task.classes(dataset, train_records + val_records)

    run = TrainingRun(
        backend=backend.name, dataset=dataset, settings=settings, options=options,
        classes=classes, train_records=train_records, val_records=val_records,
        progress=channel, epochs=epochs, batch_size=batch_size, lr=lr,
        accelerator=accelerator, resumed=state["task"] if state is not None else None,
    )  # fmt: skip
    if task.standardize:
        if state is not None and state.get("normalization"):
            run.normalization = Normalization.from_json(state["normalization"])
        else:
            channel.stage("band statistics", len(train_records))
            run.normalization = band_statistics(dataset, train_records, channel.advance)
            channel.end_stage()

    set_seed(settings.seed)
    task.setup(run)
    model = task.build_model(run)
    if main:
        # Only now that the weights loaded: a missing checkpoint leaves no folder behind.
        ensure_folder(output)
        if not settings.resume:
            # geoseg train lets a fresh run into a non-empty folder only with --overwrite.
            _remove_previous(output)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise OptionError(f"backend {backend.name!r}: the model has no trainable weights")

    lookup = task.label_lookup(classes)

    def samples(records, augment: bool) -> ChipSamples:
        return ChipSamples(
            dataset, records, lookup, run.normalization, augment=augment,
            jitter=options.jitter, seed=settings.seed, transform=task.transform,
            per_chip=task.labels == "chips",
        )  # fmt: skip

    collate = task.collate if type(task).collate is not TrainingTask.collate else None
    train_set = samples(train_records, options.augment)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, num_workers=options.num_workers,
        collate_fn=collate,
    )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        samples(val_records, False), batch_size=batch_size, shuffle=False,
        num_workers=options.num_workers, collate_fn=collate,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=options.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    # A prepared scheduler steps once per process per optimizer step: lay the schedule
    # out over the optimizer steps of all processes.
    steps_per_epoch = max(1, math.ceil(len(train_loader) / options.accumulate))
    total_steps = epochs * steps_per_epoch * accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(options.warmup, total_steps, options.schedule)
    )
    scheduler = accelerator.prepare(scheduler)
    _save_trained_weights_only(accelerator)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "score": None}
    stale_epochs = 0
    start = 0
    if state is not None:
        import pickle

        try:
            accelerator.load_state(str(checkpoint), strict=False)
        except pickle.UnpicklingError:
            # torch.load(weights_only=True) refused objects other than tensors: never load them.
            from geoseg.errors import WeightsError

            raise WeightsError(
                f"{checkpoint}: the training checkpoint holds objects other than tensors "
                f"(optimizer.bin or random states are pickles geoseg will not unpickle: they can "
                f"run code); delete {checkpoint} and train again without --resume"
            ) from None
        history = list(state["history"])
        best = dict(state["best"])
        stale_epochs = int(state.get("stale_epochs", 0))
        start = int(state["epoch"])
        if state.get("stopped_early"):
            run.report(
                f"{output}: training stopped early after epoch {start} (option patience); "
                "nothing to resume (train afresh with --overwrite)"
            )
        elif start < epochs:
            run.report(f"resuming after epoch {start} of {epochs}")
    stopped_before = state is not None and bool(state.get("stopped_early"))

    for epoch in range(start + 1, 0 if stopped_before else epochs + 1):
        run.epoch = epoch
        began = time.perf_counter()
        train_set.epoch = epoch
        train_loader.set_epoch(epoch)
        task.begin_epoch(run)
        train_loss = _train_epoch(run, task, model, train_loader, optimizer, scheduler, trainable)
        train_seconds = time.perf_counter() - began
        record: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "steps": len(train_loader),
        }  # fmt: skip
        record.update(task.epoch_summary(run))
        validated = time.perf_counter()
        record.update(_validate(run, task, model, val_loader))
        record["lr"] = float(scheduler.get_last_lr()[0])
        record["train_seconds"] = round(train_seconds, 3)
        record["val_seconds"] = round(time.perf_counter() - validated, 3)
        score = _monitored(record, options.monitor)
        improved = best["score"] is None or score > best["score"]
        if improved:
            metric = _metric_name(record, options)
            best = {"epoch": epoch, "score": score, "metric": metric, "value": record[metric]}
            stale_epochs = 0
        else:
            stale_epochs += 1
        record["best"] = improved
        history.append(record)
        stop = options.patience > 0 and stale_epochs >= options.patience and epoch < epochs
        channel.epoch(record, epoch_line(record, epochs))
        accelerator.wait_for_everyone()
        if improved and main:
            _export(task, accelerator.unwrap_model(model), run, backend, best)
        _save_checkpoint(
            accelerator, output,
            {
                "format": STATE_VERSION, "backend": backend.name, "epoch": epoch,
                "epochs": epochs, "band_names": list(dataset.band_names),
                "classes": classes.to_json(),
                "train_chips": [r.name for r in train_records],
                "val_chips": [r.name for r in val_records],
                "normalization": run.normalization.to_json() if run.normalization else None,
                "task": task.state(run), "history": history, "best": best,
                "stale_epochs": stale_epochs, "stopped_early": stop,
            },
        )  # fmt: skip
        if main:
            with atomic_output(output / HISTORY_FILE) as tmp:
                tmp.write_text(json.dumps(history, indent=1) + "\n")
        if stop:
            run.report(
                f"stopping early: {options.monitor} has not improved for {stale_epochs} epochs "
                f"(option patience={options.patience}); best epoch {best['epoch']}"
            )
            break
    accelerator.wait_for_everyone()
    if stopped_before:
        pass
    elif start >= epochs:
        run.report(f"{output}: already trained for {start} epochs; raise --epochs to go on")
    elif main and history:
        # Drawing takes longer than an epoch on small sets: once, at the end of a run.
        plot_history(history, output / PLOT_FILE)
    accelerator.end_training()
    return output


def _mixed_precision(choice: str, device: str) -> str | None:
    if choice == "auto":
        if "ACCELERATE_MIXED_PRECISION" in os.environ:
            return None  # accelerate launch --mixed_precision decides
        if device.startswith("cuda"):
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if device == "cpu" and choice == "fp16":
        raise OptionError("option mixed_precision=fp16 needs a GPU; use bf16 or no on the CPU")
    return choice


def _train_epoch(run, task, model, loader, optimizer, scheduler, trainable) -> float:
    import torch

    accelerator = run.accelerator
    options = run.options
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    steps = 0
    run.progress.stage(f"epoch {run.epoch}/{run.epochs}", len(loader))
    for batch in loader:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = task.training_step(model, batch, run)
            accelerator.backward(loss)
            if accelerator.sync_gradients and options.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().double()
        steps += 1
        run.progress.advance(1, float(total) / steps)
    run.progress.end_stage()
    sums = accelerator.reduce(
        torch.stack([total, torch.tensor(float(steps), dtype=torch.float64, device=total.device)]),
        reduction="sum",
    )
    return float(sums[0] / sums[1].clamp_min(1.0))


def _validate(run, task, model, loader) -> dict[str, Any]:
    """Validation scores of one epoch, gathered from every process."""
    import torch

    if not run.val_records:
        return {"validated": False, "val_loss": None, "mean_iou": None,
                "overall_accuracy": None, "per_class": {}}  # fmt: skip
    accelerator = run.accelerator
    model.eval()
    channels = len(run.classes)
    confusion = torch.zeros((channels, channels), dtype=torch.int64, device=accelerator.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    pixels = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    has_loss = False
    run.progress.stage("validation", len(loader))
    with torch.no_grad():
        for batch in loader:
            with accelerator.autocast():
                predicted, pixel_loss = task.validation_step(model, batch, run)
            labels = torch.as_tensor(batch["label"], device=accelerator.device).long()
            predicted = predicted.long()
            if pixel_loss is None:
                predicted, labels = accelerator.gather_for_metrics((predicted, labels))
            else:
                has_loss = True
                predicted, labels, pixel_loss = accelerator.gather_for_metrics(
                    (predicted, labels, pixel_loss.float())
                )
                keep = labels != IGNORE_INDEX
                loss_sum += pixel_loss[keep].double().sum()
                pixels += keep.sum()
            confusion += confusion_matrix(predicted, labels, channels)
            run.progress.advance(1)
    run.progress.end_stage()
    val_loss = float(loss_sum / pixels) if has_loss and pixels > 0 else None
    return {"validated": True, "val_loss": val_loss,
            **validation_scores(confusion.cpu().numpy(), run.classes)}  # fmt: skip


def _metric_name(record: dict[str, Any], options: TrainingOptions) -> str:
    if not record["validated"]:
        return "train_loss"
    if options.monitor == "val_loss" and record["val_loss"] is None:
        return "mean_iou"
    return options.monitor if record[options.monitor] is not None else "val_loss"


def _monitored(record: dict[str, Any], monitor: str) -> float:
    """The score that picks the best epoch, higher is better; losses are negated.

    Without validation (or without a labelled val pixel) the training loss stands in.
    """
    if record["validated"]:
        if monitor == "val_loss" and record["val_loss"] is not None:
            return -record["val_loss"]
        if monitor != "val_loss" and record[monitor] is not None:
            return float(record[monitor])
        if monitor == "val_loss" and record["mean_iou"] is not None:
            return float(record["mean_iou"])
        if record["val_loss"] is not None:
            return -record["val_loss"]
    return -record["train_loss"]


def _save_trained_weights_only(accelerator) -> None:
    """Checkpoints hold only what training changes: trained parameters and buffers.

    A frozen SAM image encoder or a LoRA model's base weights come back from the base
    checkpoint, so a checkpoint stays the size of what is trained.
    """

    def keep_trained(models, weights, output_dir) -> None:
        for i, model in enumerate(models):
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            names |= {n for n, _ in model.named_buffers()}
            weights[i] = {k: v for k, v in weights[i].items() if k in names}

    accelerator.register_save_state_pre_hook(keep_trained)


def _export(task: TrainingTask, model, run: TrainingRun, backend: Backend, best: dict) -> None:
    """Write the model and its manifest into the output folder, replacing the previous best.

    The manifest goes last: a folder with it holds a complete model.
    """
    from geoseg.manifest import MANIFEST_FILE, training_manifest

    output = Path(run.settings.output_dir)
    staging = output / f".export.part-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        task.save_weights(model, staging, run)
        manifest = training_manifest(backend, task, run, best)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        names = sorted(p.name for p in staging.iterdir() if p.name != MANIFEST_FILE)
        (output / MANIFEST_FILE).unlink(missing_ok=True)
        for name in [*names, MANIFEST_FILE]:
            target = output / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_checkpoint(accelerator, output: Path, state: dict) -> None:
    """Save everything ``--resume`` needs, replacing the previous checkpoint as a whole."""
    staging = output / f"{CHECKPOINT_DIR}.part"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, default=float) + "\n")
        final = output / CHECKPOINT_DIR
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    accelerator.wait_for_everyone()


def _remove_previous(output: Path) -> None:
    from geoseg.manifest import MANIFEST_FILE

    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.part"):
        shutil.rmtree(output / name, ignore_errors=True)
    for name in (MANIFEST_FILE, HISTORY_FILE, PLOT_FILE):
        (output / name).unlink(missing_ok=True)


def _read_state(checkpoint: Path) -> dict | None:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(
            f"{path}: unreadable checkpoint state ({exc}); delete {checkpoint} and train again"
        ) from None
    if state.get("format") != STATE_VERSION:
        raise InputFileError(
            f"{path}: checkpoint written by another geoseg version; train afresh with --overwrite"
        )
    return state


def _check_resumable(state: dict, backend: str, dataset: ChipDataset, output: Path) -> None:
    if state["backend"] != backend:
        raise OptionError(
            f"{output}: the interrupted run trained backend {state['backend']!r}, not "
            f"{backend!r}; resume with --backend {state['backend']} or train afresh with --overwrite"
        )
    if tuple(state["band_names"]) != dataset.band_names:
        raise BandError(
            f"{dataset.root}: bands {', '.join(dataset.band_names)} differ from the "
            f"interrupted run's ({', '.join(state['band_names'])}); resume on the same chips"
        )


def _records_by_name(dataset: ChipDataset, state: dict) -> tuple[list, list]:
    """The interrupted run's train and val chips (its held-out chips stay held out)."""
    by_name = {r.name: r for r in dataset.records}
    missing = [n for n in state["train_chips"] + state["val_chips"] if n not in by_name]
    if missing:
        raise InputFileError(
            f"{dataset.root}: chip {missing[0]} of the interrupted run is gone; resume on the "
            "same chips or train afresh with --overwrite"
        )
    return [by_name[n] for n in state["train_chips"]], [by_name[n] for n in state["val_chips"]]


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation IoU per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def values(key: str, entries: Iterable[dict]) -> list[float]:
        return [np.nan if h.get(key) is None else h[key] for h in entries]

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, iou_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, values("train_loss", history), marker="o", label="train")
    if any(h.get("val_loss") is not None for h in history):
        loss_axes.plot(epochs, values("val_loss", history), marker="o", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axes.legend()
    if any(h.get("validated") for h in history):
        iou_axes.plot(epochs, values("mean_iou", history), marker="o", linewidth=2.5,
                      label="mean IoU")  # fmt: skip
        for name in history[-1]["per_class"]:
            per_class = [h["per_class"].get(name, {}).get("iou") for h in history]
            iou_axes.plot(epochs, [np.nan if v is None else v for v in per_class],
                          linestyle="--", label=name)  # fmt: skip
        iou_axes.legend(fontsize="small")
    iou_axes.set(xlabel="epoch", ylabel="IoU (validation)", title="IoU", ylim=(0, 1))
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def options_json(options: Any) -> dict[str, Any]:
    """A backend's options as JSON values."""
    try:
        return json.loads(json.dumps(asdict(options), default=str))
    except TypeError:
        return {}
