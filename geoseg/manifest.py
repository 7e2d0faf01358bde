"""The model manifest ``geoseg_model.json``: a trained model folder describes itself.

Written by the training core next to a backend's weights, last, so a folder holding it
holds a complete model. ``geoseg predict --model DIR`` reads it to refuse a model of
another backend and to check the source's bands before the first chip; ``geoseg
backends NAME --model DIR`` prints it.

Fields: ``format``; ``backend`` {name, version}; ``geoseg_version``; ``bands`` (names
in the model's input order); ``classes`` (id, name, color per output channel);
``normalization`` (``{"kind": "standardize", "mean": [...], "std": [...]}`` in raw
source units, or a backend's own kind); ``chip_size`` and ``overlap`` (pixels),
``resolution`` (x, y pixel size in CRS units) and ``crs`` of the chips trained on;
``training`` (dataset, epochs, batch size, lr, seed, options, best epoch and its score);
``backend_settings`` (the backend's own, free form).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import BackendError, WeightsError

if TYPE_CHECKING:
    from geoseg.backend import Backend
    from geoseg.training import TrainingRun, TrainingTask

__all__ = [
    "MANIFEST_FILE",
    "read_manifest",
    "check_bands",
]

MANIFEST_FILE = "geoseg_model.json"
MANIFEST_VERSION = 1


def training_manifest(
    backend: Backend, task: TrainingTask, run: TrainingRun, best: dict[str, Any]
) -> dict[str, Any]:
    """The manifest of the model a training run is about to export."""
    import geoseg
    from geoseg.training import options_json

    dataset = run.dataset
    return {
        "format": MANIFEST_VERSION,
        "backend": {"name": backend.name, "version": backend_version(backend)},
        "geoseg_version": geoseg.__version__,
        "bands": list(task.input_bands(run)),
        "classes": run.classes.to_json(),
        "normalization": task.normalization(run),
        "chip_size": dataset.chip_size,
        "overlap": dataset.info.get("overlap"),
        # Pixel size of the chips in units of their CRS (Deepness's "resolution" on export).
        "resolution": dataset.info.get("resolution"),
        "crs": dataset.info.get("crs"),
        "training": {
            "dataset": str(Path(dataset.root).resolve()),
            "base_model": run.settings.model,
            "epochs": run.epochs,
            "batch_size": run.batch_size,
            "lr": run.lr,
            "seed": run.settings.seed,
            "train_chips": len(run.train_records),
            "val_chips": len(run.val_records),
            "options": options_json(backend.options),
            "best_epoch": best.get("epoch"),
            "best_metric": best.get("metric"),
            "best_score": best.get("value"),
        },
        "backend_settings": task.state(run),
    }


def backend_version(backend: Backend | type[Backend]) -> str | None:
    """The installed version of the distribution providing ``backend``, if known."""
    from geoseg.plugins import backend_info

    try:
        return backend_info(backend.name).version
    except BackendError:
        return None


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a model folder, or None when ``folder`` has none (a hub id, a
    plain checkpoint, a model trained before contract 2)."""
    path = Path(folder).expanduser() / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["backend"]["name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{path}: unreadable model manifest ({exc}); retrain the model"
        ) from None
    return manifest


def check_backend(folder: str | Path | None, backend_name: str) -> dict[str, Any] | None:
    """The manifest of ``folder``; BackendError in one line when another backend trained it."""
    if not folder:
        return None
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    trained_by = manifest["backend"]["name"]
    if trained_by != backend_name and not _same_model_code(trained_by, backend_name):
        raise BackendError(
            f"{folder}: the model was trained by backend {trained_by!r}, not {backend_name!r}; "
            f"use --backend {trained_by}"
        )
    return manifest


def _same_model_code(first: str, second: str) -> bool:
    """Whether one backend's class derives from the other's (a name kept for the same code,
    as ``segformer`` for ``hf``), so that each reads the other's model folders."""
    from geoseg.errors import GeosegError
    from geoseg.plugins import backend_info

    try:
        a, b = backend_info(first).backend, backend_info(second).backend
    except GeosegError:
        return False
    return issubclass(a, b) or issubclass(b, a)


def check_bands(manifest: dict[str, Any], band_names: tuple[str, ...], source: str) -> None:
    """BandError in one line when the source lacks a band the model reads."""
    from geoseg.errors import BandError

    wanted = [str(b) for b in manifest.get("bands") or ()]
    missing = [b for b in wanted if b not in band_names]
    if missing:
        example = ",".join(f"{b}={i}" for i, b in enumerate(wanted, start=1))
        raise BandError(
            f"{source}: the model reads bands {', '.join(wanted)} but the source has "
            f"{', '.join(band_names)}; name its bands with --bands, e.g. {example}"
        )


def describe(manifest: dict[str, Any]) -> list[str]:
    """Readable lines of a manifest, for ``geoseg backends NAME --model DIR``."""
    backend = manifest["backend"]
    training = manifest.get("training") or {}
    classes = ", ".join(f"{c['id']} {c['name']}" for c in manifest.get("classes") or ())
    lines = [
        f"backend: {backend['name']}"
        + (f" {backend['version']}" if backend.get("version") else ""),
        f"geoseg: {manifest.get('geoseg_version')}",
        f"bands: {', '.join(manifest.get('bands') or ())}",
        f"classes: {classes}",
        f"chip size: {manifest.get('chip_size')} px, overlap {manifest.get('overlap')} px",
    ]
    normalization = manifest.get("normalization") or {}
    if normalization:
        lines.append(f"normalization: {normalization.get('kind', '?')}")
    if training:
        lines.append(
            f"trained: {training.get('epochs')} epochs, batch {training.get('batch_size')}, "
            f"lr {training.get('lr')}, best epoch {training.get('best_epoch')} "
            f"({training.get('best_metric')} {training.get('best_score')})"
        )
    return lines
