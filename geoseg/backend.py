"""The backend contract: what a model plugin receives and must return.

A backend is small on purpose. The core does all raster I/O, tiling, band selection,
prompt mapping, blending of overlapping chips, writing and vectorizing. A backend gets
batches of chips as arrays and returns per-pixel class probabilities; a backend that
trains gets the chip dataset written by ``geoseg tile`` and an output folder.

Backends are registered through the ``register_backends`` hook (see ``hookspecs.py``),
the same way for geoseg's own backends and for third parties. ``docs/plugins.md`` walks
through writing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from geoseg.classes import ClassMap
from geoseg.errors import BackendError

if TYPE_CHECKING:
    from geoseg.dataset import ChipDataset
    from geoseg.export import ExportedModel, ExportSettings
    from geoseg.prompts import Prompts
    from geoseg.raster import RasterSource
    from geoseg.training import TrainingTask
    from geoseg.windows import Tile

__all__ = [
    "Backend",
    "Capabilities",
    "ChipBatch",
    "TrainSettings",
    "NoOptions",
    "CONTRACT_VERSION",
    "KINDS",
    "resolve_device",
]

#: Version of this contract. A backend declares the version it was written for in
#: ``Backend.contract_version``; the plugin manager refuses a mismatch with a clear message.
#: Version 2: training through ``geoseg.training`` (``Backend.training_task``), the model
#: manifest ``geoseg_model.json``, ``TrainSettings`` with "not given" values and a
#: progress channel (see docs/plugins.md, "Contract version").
CONTRACT_VERSION = 2
#: What a backend's ``predict`` answers: a class per pixel, or a class per chip.
KINDS = ("pixels", "chips")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, shown by ``geoseg backends`` and checked by the engine.

    ``classes``: fixed output class names in channel order, or empty when the classes
    come from the model or the training data. ``bands``: band names the backend reads, in
    the order it wants them (empty: every band of the source, in file order).
    ``weights``: False for a backend that loads no model weights, so ``--model`` given to
    it is refused instead of silently ignored. ``kind``: ``"pixels"`` for a backend whose
    ``predict`` answers a class per pixel (N, C, H, W), ``"chips"`` for one that answers a
    class per chip (N, C) (chip classification: ``geoseg.chip_predict`` writes its
    outputs, see docs/plugins.md).
    """

    binary: bool = False
    classes: tuple[str, ...] = ()
    needs_prompts: bool = False
    trains: bool = False
    bands: tuple[str, ...] = ()
    chip_size: int = 512
    weights: bool = True
    kind: Literal["pixels", "chips"] = "pixels"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"Capabilities.kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )

    def describe(self) -> str:
        parts = [f"kind={self.kind}", "binary" if self.binary else "multi-class"]
        if self.needs_prompts:
            parts.append("prompts")
        if self.trains:
            parts.append("trains")
        if self.bands:
            parts.append("bands=" + ",".join(self.bands))
        parts.append(f"chip={self.chip_size}")
        return " ".join(parts)


@dataclass
class ChipBatch:
    """A batch of chips handed to ``Backend.predict``.

    ``images`` (N, B, H, W) float32 holds the raw source values of the bands named in
    ``band_names`` (invalid and padded pixels hold 0); ``valid`` (N, H, W) bool marks
    real pixels. ``tiles`` georeference each chip. ``prompts`` is None unless the backend
    needs prompts; then it holds one ``geoseg.prompts.Prompts`` per chip.
    """

    images: np.ndarray
    valid: np.ndarray
    band_names: tuple[str, ...]
    tiles: tuple[Tile, ...]
    prompts: tuple[Prompts, ...] | None = None
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class TrainSettings:
    """What ``geoseg train`` passes to ``Backend.train``.

    ``model``: base checkpoint (hub id or folder) or None for the backend's default.
    ``epochs``, ``batch_size`` and ``lr`` are None when the user did not give them: the
    backend's defaults apply (a backend can warn when a given value does not apply).
    ``device``: auto, cpu, cuda or mps. ``progress``: where the run reports progress,
    messages and one line per epoch (a ``geoseg.training.TrainingProgress``); None logs only.
    """

    output_dir: Path
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    progress: Any = None


@dataclass(frozen=True)
class NoOptions:
    """Options of a backend that takes none."""


class Backend:
    """Base class of every backend. Subclass it and register the subclass.

    Lifetime for prediction: ``Backend(options)``, ``load(model, device)`` once, then per
    raster ``begin_raster(source)`` followed by ``predict(batch)`` for each batch.
    """

    #: Short unique name used on the command line (``--backend NAME``).
    name: ClassVar[str] = ""
    #: One line for ``geoseg backends``.
    description: ClassVar[str] = ""
    #: The contract version the backend was written for.
    contract_version: ClassVar[int] = CONTRACT_VERSION
    #: A dataclass of the backend's options, validated in its ``__post_init__``; filled
    #: from ``--option key=value`` pairs and ``--config`` files.
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def capabilities(cls) -> Capabilities:
        """What the backend can do with its default options and no model loaded: what
        ``geoseg backends`` lists. Override as a classmethod."""
        return Capabilities()

    def loaded_capabilities(self) -> Capabilities:
        """What this instance does, given its options and, after ``load``, its model (the
        bands it was trained on, its chip size, its classes). The engine, ``geoseg train``
        and ``classes()`` read this one; the default is the static ``capabilities()``."""
        return type(self).capabilities()

    def load(self, model: str | None, device: str = "auto") -> None:
        """Load weights from a hub id or local folder (None: the backend's default).

        Raise ``WeightsError`` with one line saying how to get missing weights.
        """

    def classes(self) -> ClassMap:
        """Output classes, in the channel order of ``predict``'s result. Valid after load."""
        names = self.loaded_capabilities().classes
        if not names:
            raise NotImplementedError(f"backend {self.name} must implement classes()")
        return ClassMap.from_names(names)

    def prompt_settings(self) -> Mapping[str, Any] | None:
        """Settings for automatic prompts (``--prompts auto``), or None for defaults.

        Keys are the keyword arguments of ``geoseg.prompts.PromptSettings``.
        """
        return None

    def begin_raster(self, source: RasterSource) -> None:
        """Called before the chips of one raster; compute whole-raster statistics here."""

    def predict(self, batch: ChipBatch) -> np.ndarray:
        """Class probabilities (N, C, H, W) float32 for a batch; C = ``len(classes())``.

        A backend of kind ``"chips"`` returns one row per chip instead: (N, C) float32.
        The engine keeps the returned array and blends into it in place while the next
        batch is predicted: return a new array each call, not a buffer reused across calls.
        """
        raise NotImplementedError

    def training_task(self) -> TrainingTask | None:
        """What this backend trains through the training core (``geoseg.training``):
        model build, loss, forward step, saving weights. None: it does not train there."""
        return None

    def train(self, dataset: ChipDataset, settings: TrainSettings) -> Path:
        """Train on a chip dataset and save the model in ``settings.output_dir``.

        Returns the folder holding the model. The default runs ``training_task()`` through
        the training core; a backend with its own trainer may override this instead.
        """
        task = self.training_task()
        if task is None:
            raise BackendError(
                f"backend {self.name!r} does not train; pick a backend whose capabilities "
                f"include 'trains' (see geoseg backends)"
            )
        from geoseg.training import train_backend

        return train_backend(self, task, dataset, settings)

    def export_onnx(self, model: str, path: Path, settings: ExportSettings) -> ExportedModel:
        """Write the model folder ``model`` as an ONNX graph to ``path`` (``geoseg export``).

        The graph takes ``image`` (N, B, S, S) float32 raw source values of the returned
        ``ExportedModel.bands`` and gives ``probabilities`` (N, C, S, S) float32, softmax
        over ``ExportedModel.classes``; S = ``settings.size``. The core writes the
        metadata, checks the graph and moves it to its final name (``geoseg.export``).
        """
        raise BackendError(f"backend {self.name!r} does not export to ONNX")


def __getattr__(name: str) -> Any:
    # Contract v1 had Prompts here; it now lives with the prompt code.
    if name == "Prompts":
        from geoseg.prompts import Prompts

        return Prompts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_device(name: str = "auto") -> str:
    """A torch device name for ``auto``, ``cpu``, ``cuda`` or ``mps``."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise BackendError("--device mps was asked for but MPS is not available; use --device cpu")
    if name not in {"cpu", "mps"} and not name.startswith("cuda"):
        raise BackendError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return name
