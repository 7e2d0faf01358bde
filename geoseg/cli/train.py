"""``geoseg train``: hand a chip dataset written by ``geoseg tile`` to a backend that trains."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from geoseg.cli.options import (
    backend_option,
    backend_settings_options,
    device_option,
    model_option,
    quiet_option,
    seed_option,
)


class TrainingBar:
    """The training core's progress channel as bars and lines on stderr.

    ``quiet`` keeps only warnings. Lines are written between the bars (tqdm.write) so a
    bar never swallows them.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar = None  # a tqdm bar while a stage runs

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def message(self, text: str) -> None:
        if not self.quiet:
            self._write(text)

    def warning(self, text: str) -> None:
        self._write(f"warning: {text}")

    def stage(self, name: str, total: int) -> None:
        self.end_stage()
        if not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=name, unit="batch", file=sys.stderr,
                dynamic_ncols=True, leave=False,
            )  # fmt: skip

    def advance(self, steps: int = 1, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch(self, record: dict, line: str) -> None:
        self.message(line)


@click.command()
@click.argument("chips_dir", type=click.Path(path_type=Path))
@backend_option("Backend to train (see geoseg backends).")
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the trained model.",
)
@model_option("Base checkpoint to start from (default: the backend's).")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs (default: the backend's, 10).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Chips per step (default: the backend's, 8).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate (default: the backend's).",
)
@device_option
@click.option("--resume", is_flag=True, help="Continue the training saved in the output folder.")
@click.option(
    "--overwrite", is_flag=True, help="Train afresh into an output folder that is not empty."
)
@seed_option
@backend_settings_options
@quiet_option
def train(
    chips_dir: Path,
    backend_name: str,
    output_dir: Path,
    model: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    device: str,
    resume: bool,
    overwrite: bool,
    seed: int,
    options: tuple[str, ...],
    config_file: Path | None,
    quiet: bool,
) -> None:
    """Train backend NAME on the chips and labels in CHIPS_DIR (made by geoseg tile --labels).

    The backend receives the images, labels, train/val splits, classes and band names, and
    saves its model in the output folder with geoseg_model.json describing it. Progress
    shows as a bar, and one line per epoch gives the loss and validation scores. Without
    val chips in CHIPS_DIR a seeded share of the training chips is held out (option
    val_fraction). Multi-GPU: accelerate launch -m geoseg train ...

    \b
    Example:
      geoseg train chips --backend segformer -o models/lakes --epochs 20
    """
    from geoseg.backend import TrainSettings
    from geoseg.dataset import ChipDataset
    from geoseg.errors import BackendError, BandError, LabelsError, OutputError
    from geoseg.plugins import backend_infos, create_backend

    backend = create_backend(backend_name, options, config_file)
    if not backend.loaded_capabilities().trains:
        trainers = [
            name for name, info in backend_infos().items() if info.backend.capabilities().trains
        ]
        raise BackendError(
            f"backend {backend_name!r} does not train"
            + (
                f"; backends that train: {', '.join(trainers)}"
                if trainers
                else "; no installed backend trains"
            )
            + " (see geoseg backends)"
        )

    dataset = ChipDataset.open(chips_dir)
    if not dataset.has_labels:
        raise LabelsError(
            f"{chips_dir}: the chips have no labels; make the chip set with geoseg tile SRC "
            f"-o {chips_dir} --labels LABELS"
        )
    wanted = backend.loaded_capabilities().bands
    missing = [name for name in wanted if name not in dataset.band_names]
    if missing:
        raise BandError(
            f"{chips_dir}: backend {backend_name!r} needs band {missing[0]!r} but the chips have "
            f"{', '.join(dataset.band_names)}; re-tile with --bands naming it"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: exists and is not a folder; choose another -o")
    # Under accelerate/torchrun every process runs this command; only the first checks,
    # or a rank that starts late would find the folder its peers just began writing.
    first_process = os.environ.get("RANK", "0") == "0"
    if (
        first_process
        and output_dir.is_dir()
        and any(output_dir.iterdir())
        and not (resume or overwrite)
    ):
        raise OutputError(
            f"{output_dir}: folder is not empty; pass --resume to continue the training saved "
            f"there, --overwrite to train afresh, or choose another -o"
        )

    settings = TrainSettings(
        output_dir=output_dir,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        resume=resume,
        seed=seed,
        progress=TrainingBar(quiet=quiet),
    )
    saved = backend.train(dataset, settings)
    # Every process of a data-parallel run returns here; the model was written once.
    if first_process:
        click.echo(f"model saved to {saved}")
