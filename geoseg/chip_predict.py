"""The chip engine: one class per chip from a backend of kind ``"chips"``.

The source is cut into the chip grid ``geoseg tile`` uses (``geoseg.windows``: chips from
the raster origin, stepping by ``size - overlap``, overlap 0 by default) and read by the
raster reader the pixel engine uses; the backend's ``predict`` answers (N, C)
probabilities per batch of chips. Two outputs per source, each written under a
temporary name and renamed (``geoseg.atomic``):

- ``<stem>.gpkg``, layer ``chips``: each chip's footprint (the whole square, as in
  ``tiles.gpkg``, in the source CRS) with ``row``, ``col``, ``class_id``, ``class_name``,
  ``p_<class name>`` per class and ``valid_fraction``; a categorized QGIS style by
  ``class_name``; the classes in the layer's ``GEOSEG_CLASSES`` metadata. Chips without
  a valid pixel are left out.
- ``<stem>.tif``: the coarse class raster, one pixel per chip step on a grid aligned
  with the source (its transform is the source's scaled by the step, so pixel (r, c)
  starts where chip (r, c) starts); uint8 class ids, 255 where a chip has no valid
  pixel; a COG with colour table, class tags and ``<stem>.qml``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from geoseg.atomic import (
    atomic_output,
    clean_partials,
    ensure_folder,
    output_complete,
    output_lock,
    verify_raster,
    write_errors,
)
from geoseg.backend import Backend, ChipBatch
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import BackendError, InputFileError, OptionError
from geoseg.raster import open_raster
from geoseg.stitch import remove_all, scratch_path, tiled_profile, write_cog
from geoseg.styles import (
    CLASSES_TAG,
    GPKG_OPTIONS,
    write_class_metadata,
    write_raster_qml,
    write_vector_style,
)
from geoseg.windows import TileGrid, tile_grid

log = logging.getLogger(__name__)

CHIPS_LAYER = "chips"
#: Prefix of the probability field of each class.
PROBABILITY_PREFIX = "p_"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChipJob:
    """The outputs of one source: chip footprints, the coarse class raster and its style."""

    source: Path
    vector: Path
    raster: Path

    @property
    def style(self) -> Path:
        return self.raster.with_suffix(".qml")

    def complete(self, grid: TileGrid | None = None) -> bool:
        """Every output verified complete (the raster on ``grid``'s coarse grid if given)."""
        expect = {}
        if grid is not None:
            expect = dict(
                width=grid.n_cols,
                height=grid.n_rows,
                crs=grid.crs,
                transform=coarse_transform(grid),
            )
        return (
            output_complete(self.raster, count=1, dtype="uint8", **expect)
            and output_complete(self.style)
            and output_complete(self.vector)
        )

    def clean_partials(self) -> int:
        """Delete temporary files interrupted runs of this job left; return how many."""
        return sum(
            clean_partials(path.parent, path.name)
            for path in (self.vector, self.raster, self.style)
        )


def plan_chip_outputs(
    sources: Sequence[Path], output: str | Path, *, single_file: bool = True
) -> list[ChipJob]:
    """Output paths per source: for one source, OUTPUT.gpkg or OUTPUT.tif names one of the
    two outputs and the other sits beside it with the same stem; otherwise OUTPUT is a
    folder of ``<stem>.gpkg`` and ``<stem>.tif``."""
    from geoseg.predict import plan_outputs

    output = Path(output)
    if output.suffix.lower() == ".gpkg":
        output = output.with_suffix(".tif")
    jobs = plan_outputs(sources, output, vector=True, single_file=single_file)
    return [ChipJob(job.source, job.vector, job.mask) for job in jobs]


def coarse_transform(grid: TileGrid) -> Affine:
    """The transform of one pixel per chip step over ``grid`` (its origin is the source's)."""
    return grid.transform * Affine.scale(grid.step)


def chip_grid(backend: Backend, source, size=None, overlap=None) -> TileGrid:
    """The chip grid over an open source: the backend's chip size, no overlap by default."""
    capabilities = backend.loaded_capabilities()
    if capabilities.kind != "chips":
        raise BackendError(
            f"backend {backend.name!r} predicts a class per pixel, not per chip; use "
            "geoseg.predict (geoseg predict does this for it)"
        )
    names = tuple(capabilities.bands)
    if names:
        source.band_map.indexes(names, source=str(source.path))
    return tile_grid(
        source,
        size if size is not None else capabilities.chip_size,
        overlap if overlap is not None else 0,
    )


@dataclass
class ChipPredictions:
    """Per-chip answers over a grid: ``class_ids`` (rows, cols) uint8 (255: no valid
    pixel), ``probabilities`` (rows, cols, C) float32 (NaN there), ``valid_fraction``."""

    grid: TileGrid
    classes: ClassMap
    class_ids: np.ndarray
    probabilities: np.ndarray
    valid_fraction: np.ndarray


def classify_chips(
    backend: Backend,
    src_path: str | Path,
    *,
    bands: str | None = None,
    size: int | str | None = None,
    overlap: int | str | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> ChipPredictions:
    """Run a loaded chip backend over every chip of the source's grid."""
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    classes = backend.classes()
    channels = len(classes)
    class_ids = np.array(classes.ids, dtype=np.uint8)
    with open_raster(src_path, bands) as source:
        grid = chip_grid(backend, source, size, overlap)
        names = tuple(backend.loaded_capabilities().bands) or None
        band_names = names or source.band_names
        ids = np.full((grid.n_rows, grid.n_cols), IGNORE_INDEX, np.uint8)
        probabilities = np.full((grid.n_rows, grid.n_cols, channels), np.nan, np.float32)
        fraction = np.zeros((grid.n_rows, grid.n_cols), np.float64)
        backend.begin_raster(source)
        pending = []

        def flush() -> None:
            valid = np.stack([chip.valid for chip in pending])
            images = np.stack([chip.data for chip in pending]).astype(np.float32)
            images = np.where(valid[:, None], images, 0).astype(np.float32, copy=False)
            batch = ChipBatch(
                images=images,
                valid=valid,
                band_names=tuple(band_names),
                tiles=tuple(chip.tile for chip in pending),
                source=Path(source.path),
            )
            result = np.asarray(backend.predict(batch), dtype=np.float32)
            if result.shape != (len(pending), channels):
                raise BackendError(
                    f"backend {backend.name!r} returned probabilities of shape {result.shape} "
                    f"for {len(pending)} chips; a backend of kind chips returns "
                    f"{(len(pending), channels)} (N, classes)"
                )
            best = result.argmax(axis=1)
            for chip, row, channel in zip(pending, result, best, strict=True):
                probabilities[chip.tile.row, chip.tile.col] = row
                ids[chip.tile.row, chip.tile.col] = class_ids[channel]
            pending.clear()

        for done, tile in enumerate(grid, start=1):
            chip = source.read_chip(tile, names)
            fraction[tile.row, tile.col] = float(chip.valid.mean())
            if chip.valid.any():
                pending.append(chip)
            if len(pending) == batch_size:
                flush()
            if progress is not None and (done % batch_size == 0 or done == len(grid)):
                progress(done, len(grid))
        if pending:
            flush()
    return ChipPredictions(grid, classes, ids, probabilities, fraction)


def predict_chips(
    backend: Backend,
    job: ChipJob,
    *,
    bands: str | None = None,
    size: int | str | None = None,
    overlap: int | str | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> ChipPredictions:
    """Classify every chip of ``job.source`` and write the job's outputs."""
    for path in (job.vector, job.raster):
        ensure_folder(path.parent)
    with output_lock(job.vector), output_lock(job.raster):
        result = classify_chips(
            backend,
            job.source,
            bands=bands,
            size=size,
            overlap=overlap,
            batch_size=batch_size,
            progress=progress,
        )
        if (result.class_ids == IGNORE_INDEX).all():
            raise InputFileError(
                f"{job.source}: no chip has a valid pixel (every pixel is nodata); check the "
                "raster and its nodata value"
            )
        write_chip_vector(result, job.vector)
        write_class_raster(result, job.raster)
    return result


def write_chip_vector(result: ChipPredictions, path: Path) -> Path:
    """The chips with a valid pixel as footprints with class and probabilities (GeoPackage)."""
    import shapely
    from pyogrio.raw import write

    grid, classes = result.grid, result.classes
    rows, cols = np.nonzero(result.class_ids != IGNORE_INDEX)
    tiles = [grid.tile(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    names = {c.id: c.name for c in classes}
    ids = result.class_ids[rows, cols]
    fields: dict[str, np.ndarray] = {
        "row": rows.astype(np.int32),
        "col": cols.astype(np.int32),
        "class_id": ids.astype(np.int32),
        "class_name": np.array([names[int(i)] for i in ids], dtype=object),
    }
    for channel, name in enumerate(classes.names):
        fields[f"{PROBABILITY_PREFIX}{name}"] = result.probabilities[rows, cols, channel].astype(
            np.float64
        )
    fields["valid_fraction"] = np.round(result.valid_fraction[rows, cols], 6)
    geometries = shapely.to_wkb(np.array([shapely.box(*t.bounds) for t in tiles], dtype=object))
    with atomic_output(path) as tmp:
        write(
            tmp,
            geometry=geometries,
            field_data=list(fields.values()),
            fields=list(fields),
            crs=grid.crs.to_wkt() if grid.crs is not None else None,
            geometry_type="Polygon",
            driver="GPKG",
            layer=CHIPS_LAYER,
            layer_metadata={CLASSES_TAG: json.dumps(classes.to_json())},
            dataset_options=GPKG_OPTIONS,
        )
        write_vector_style(tmp, CHIPS_LAYER, classes)
    return path


def write_class_raster(result: ChipPredictions, path: Path) -> Path:
    """The coarse class raster (one pixel per chip step) as a COG, with its ``.qml``."""
    grid = result.grid
    profile = tiled_profile(
        dict(
            width=grid.n_cols,
            height=grid.n_rows,
            count=1,
            dtype="uint8",
            crs=grid.crs,
            transform=coarse_transform(grid),
            nodata=IGNORE_INDEX,
        )
    )
    scratch = scratch_path(path)
    try:
        with write_errors(path, [scratch]):
            with rasterio.open(scratch, "w", **profile) as dataset:
                dataset.write(result.class_ids, 1)
                write_class_metadata(dataset, result.classes)
            verify_raster(scratch, name=path)
        with atomic_output(path) as out:
            write_cog(scratch, out, resampling="nearest")
    finally:
        remove_all([scratch])
    write_raster_qml(path, result.classes)
    return path


def read_chip_classes(path: str | Path) -> ClassMap | None:
    """The classes a chip prediction GeoPackage records, or None without them."""
    import pyogrio

    try:
        meta = pyogrio.read_info(path, layer=CHIPS_LAYER).get("layer_metadata") or {}
    except Exception:  # pyogrio's DataSourceError family: not a chip prediction
        return None
    text = meta.get(CLASSES_TAG)
    return ClassMap.from_json(json.loads(text), source=f"{path} ({CLASSES_TAG})") if text else None
