"""Cut rasters (and their labels) into a chip dataset; the work behind ``geoseg tile``.

Every source is checked before anything is written. A source that fails (a bad file,
band mapping or labels, or a read error while tiling) is reported and left out of the
dataset while the others go on (``geoseg.batch``); a bad classes file or output folder
fails the whole call with nothing left behind. Chips are written under a temporary name
and renamed, so a chip file under its final name is complete and a re-run skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio

from geoseg import __version__
from geoseg.atomic import (
    atomic_output,
    clean_partials,
    ensure_folder,
    output_complete,
    output_lock,
)
from geoseg.batch import Failure, stops_job
from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.dataset import (
    DATASET_FILE,
    FORMAT_VERSION,
    IMAGES_DIR,
    LABELS_DIR,
    TILES_FILE,
    TILES_LAYER,
)
from geoseg.errors import BandError, InputFileError, OptionError
from geoseg.labels import open_labels
from geoseg.raster import Chip, RasterSource, open_raster
from geoseg.windows import Tile, TileGrid, tile_grid

SPLITS = ("random", "blocks")
#: Largest chip (pixels, valid mask and labels) tiling agrees to hold in memory.
MAX_CHIP_BYTES = 4 << 30


@dataclass(frozen=True)
class TileSettings:
    """Options of a tiling run; sizes are pixels or metres (``"2560m"``)."""

    size: int | str = 512
    overlap: int | str = 64
    bands: str | None = None
    dst_crs: str | None = None
    resolution: float | None = None
    resampling: str = "bilinear"
    labels: Path | None = None
    label_field: str | None = None
    classes: Path | ClassMap | None = None
    unlabeled: str = "background"
    min_valid: float = 0.0
    val_fraction: float = 0.1
    split: str = "random"
    block: int = 4
    seed: int = 0
    overwrite: bool = False
    compress: str = "deflate"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_valid <= 1.0:
            raise OptionError(f"--min-valid must be between 0 and 1, got {self.min_valid}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.split not in SPLITS:
            raise OptionError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.block < 1:
            raise OptionError(f"--block must be at least 1 chip, got {self.block}")
        if self.unlabeled not in ("background", "ignore"):
            raise OptionError(f"--unlabeled must be background or ignore, got {self.unlabeled!r}")


@dataclass
class ChipEntry:
    """A chip in the dataset: what tiles.gpkg records about it."""

    chip: str
    label: str | None
    source: str
    row: int
    col: int
    valid_fraction: float
    split: str
    tile: Tile


@dataclass
class SourceTiles:
    """What tiling one source produced; ``tile_sources`` joins these in source order."""

    chips: list[ChipEntry] = field(default_factory=list)
    written: int = 0
    reused: int = 0
    below_min_valid: int = 0
    class_pixels: Counter = field(default_factory=Counter)
    label_classes: ClassMap | None = None
    tiles: int = 0


@dataclass
class TileSummary:
    """What a tiling run did."""

    out_dir: Path
    chips: list[ChipEntry] = field(default_factory=list)
    written: int = 0
    reused: int = 0
    below_min_valid: int = 0
    class_pixels: Counter = field(default_factory=Counter)
    #: Sources tiled into the dataset, and those that failed (not in it).
    done: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def tiles_file(self) -> Path:
        return self.out_dir / TILES_FILE

    @property
    def dataset_file(self) -> Path:
        return self.out_dir / DATASET_FILE


def tile_sources(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    settings: TileSettings = TileSettings(),
    *,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    runner: Callable[[list[Path]], list[SourceTiles | Failure]] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    fail_fast: bool = False,
) -> TileSummary:
    """Cut ``sources`` into chips under ``out_dir``; see the module docstring.

    ``on_start(total_tiles)`` is called once everything is checked; ``progress(1)`` after
    each tile. ``runner(paths)``, when given, tiles the checked sources elsewhere (each
    with ``tile_source``, e.g. on a cluster) and returns their results (a ``Failure``
    for a source that failed) in source order. A failed source goes to
    ``on_failure(failure)`` and ``TileSummary.failed``; tiles.gpkg and dataset.json are
    written for the others, and not at all when none is left. With ``fail_fast`` the
    first failure is raised instead, as an error that concerns the whole command
    (``geoseg.batch.stops_job``: an option, an output folder) always is.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        ensure_folder(out_dir)  # raises OutputError naming the file
    if not sources:
        raise OptionError("no source rasters given")
    classes = (
        ClassMap.read(settings.classes)
        if isinstance(settings.classes, (str, Path))
        else settings.classes
    )
    summary = TileSummary(out_dir)

    def failed(failure: Failure) -> None:
        summary.failed.append(failure)
        if on_failure is not None:
            on_failure(failure)

    unreadable: list[Failure] = []

    def unusable(path: str | Path, exc: Exception) -> None:
        """A source that fails its check, reported once all are checked."""
        if fail_fast or stops_job(exc):
            raise exc
        unreadable.append(Failure.from_exception(path, exc))

    opened: list[tuple[RasterSource, TileGrid, object]] = []
    # Folders this call creates, removed again if it fails before filling them.
    created = [d for d in (out_dir, out_dir / IMAGES_DIR, out_dir / LABELS_DIR) if not d.exists()]
    held = contextlib.ExitStack()
    try:
        for path in sources:
            try:
                checked = _open_checked(path, settings, classes)
            except Exception as exc:
                unusable(path, exc)
                continue
            opened.append(checked)
            try:
                _check_same_bands([opened[0][0], checked[0]])
            except BandError as exc:
                _close(opened.pop())
                unusable(path, exc)
        stems = [s.path.stem for s, _, _ in opened]
        if len(set(stems)) != len(stems):
            raise OptionError(
                "two sources share a file name "
                f"({', '.join(sorted({s for s in stems if stems.count(s) > 1}))}); chips are "
                "named after their source, so rename one"
            )
        for failure in unreadable:
            failed(failure)
        if not opened:
            return summary

        images_dir = ensure_folder(out_dir / IMAGES_DIR)
        labels_dir = ensure_folder(out_dir / LABELS_DIR) if settings.labels else None
        # The chip set is one output: a second run into the same folder leaves it alone,
        # and only then are an interrupted run's temporary chips removed.
        held.enter_context(output_lock(out_dir / DATASET_FILE, name=out_dir))
        for folder in (images_dir, labels_dir):
            if folder is not None:
                clean_partials(folder)
        if on_start:
            on_start(sum(len(grid) for _, grid, _ in opened))

        def tile_here():
            for source, grid, labels in opened:
                try:
                    result = _tile_opened(
                        source, grid, labels, images_dir, labels_dir, settings, progress
                    )
                except Exception as exc:
                    if fail_fast or stops_job(exc):
                        raise
                    result = Failure.from_exception(source.path, exc)
                yield result

        label_classes = classes
        if runner is not None:
            results = runner([Path(s.path) for s, _, _ in opened])
        else:
            results = tile_here()
        tiled = []
        for (source, grid, labels), result in zip(opened, results, strict=True):
            if isinstance(result, Failure):
                if fail_fast or result.stops_job:
                    raise result.error()
                failed(result)
                continue
            tiled.append((source, grid, labels))
            summary.done.append(Path(source.path))
            if result.label_classes is not None:
                label_classes = result.label_classes
            summary.chips.extend(result.chips)
            summary.written += result.written
            summary.reused += result.reused
            summary.below_min_valid += result.below_min_valid
            summary.class_pixels.update(result.class_pixels)
        if not tiled:
            held.close()  # the lock file first, or the folder it sits in is not empty
            _remove_empty(created)
            return summary
        if not summary.chips:
            _no_valid_chips([s for s, _, _ in tiled], settings)
        _assign_splits(summary.chips, settings)
        _write_tiles(summary, out_dir)
        _write_dataset_json(summary, out_dir, tiled, settings, label_classes)
        return summary
    except BaseException:
        held.close()  # the lock file first, or the folder it sits in is not empty
        _remove_empty(created)
        raise
    finally:
        held.close()
        for entry in opened:
            _close(entry)


def _open_checked(path: str | Path, settings: TileSettings, classes: ClassMap | None):
    """(source, grid, labels) of one source, checked for tiling; closed again on failure."""
    source = open_raster(
        path,
        settings.bands,
        dst_crs=settings.dst_crs,
        resolution=settings.resolution,
        resampling=settings.resampling,
    )
    try:
        grid = tile_grid(source, settings.size, settings.overlap)
        _check_chip_memory(grid.size, source)
        labels = None
        if settings.labels is not None:
            labels = open_labels(
                settings.labels,
                source,
                field=settings.label_field,
                classes=classes,
                unlabeled=settings.unlabeled,
            )
    except BaseException:
        source.close()
        raise
    return source, grid, labels


def _close(entry: tuple[RasterSource, TileGrid, object]) -> None:
    source, _, labels = entry
    if labels is not None:
        labels.close()
    source.close()


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders this call created, unless they hold chips a re-run resumes from."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def tile_source(
    path: str | Path,
    out_dir: str | Path,
    settings: TileSettings = TileSettings(),
    *,
    progress: Callable[[int], None] | None = None,
) -> SourceTiles:
    """Write the chips of one source already checked by ``tile_sources`` (for workers)."""
    out_dir = Path(out_dir)
    classes = (
        ClassMap.read(settings.classes)
        if isinstance(settings.classes, (str, Path))
        else settings.classes
    )
    source = open_raster(
        path,
        settings.bands,
        dst_crs=settings.dst_crs,
        resolution=settings.resolution,
        resampling=settings.resampling,
    )
    labels = None
    try:
        grid = tile_grid(source, settings.size, settings.overlap)
        if settings.labels is not None:
            labels = open_labels(
                settings.labels,
                source,
                field=settings.label_field,
                classes=classes,
                unlabeled=settings.unlabeled,
            )
        labels_dir = out_dir / LABELS_DIR if settings.labels else None
        return _tile_opened(
            source, grid, labels, out_dir / IMAGES_DIR, labels_dir, settings, progress
        )
    finally:
        if labels is not None:
            labels.close()
        source.close()


def _tile_opened(
    source: RasterSource,
    grid: TileGrid,
    labels,
    images_dir: Path,
    labels_dir: Path | None,
    settings: TileSettings,
    progress: Callable[[int], None] | None,
) -> SourceTiles:
    result = SourceTiles()
    if labels is not None and labels.classes is not None:
        result.label_classes = labels.classes
    for tile in grid:
        entry = _tile_one(source, grid, tile, labels, images_dir, labels_dir, settings, result)
        if entry is not None:
            result.chips.append(entry)
        result.tiles += 1
        if progress:
            progress(1)
    return result


def _check_chip_memory(size: int, source: RasterSource) -> None:
    """Refuse a chip size whose pixels, valid mask and labels would not fit in memory."""
    need = size * size * (source.count * source.dtype.itemsize + 2)
    if need > MAX_CHIP_BYTES:
        raise OptionError(
            f"--size {size} px: one chip of {source.path.name} would take "
            f"{need / 2**30:.0f} GiB of memory; use a smaller --size (e.g. 512)"
        )


def _no_valid_chips(sources: list[RasterSource], settings: TileSettings) -> None:
    names = ", ".join(str(s.path) for s in sources)
    if settings.min_valid > 0:
        raise InputFileError(
            f"{names}: no chip has at least {settings.min_valid:g} valid pixels "
            f"(--min-valid); lower --min-valid or check the nodata value"
        )
    nodata = sources[0].nodata
    raise InputFileError(
        f"{names}: no chip had valid pixels (every pixel is nodata"
        + (f" {nodata:g}" if nodata is not None else "")
        + "); check the raster and its nodata value (gdalinfo -stats)"
    )


def _check_same_bands(sources: list[RasterSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if other.band_names != first.band_names:
            raise BandError(
                f"{other.path}: bands {list(other.band_names)} differ from {first.path}'s "
                f"{list(first.band_names)}; a chip dataset needs the same bands in every "
                f"source (name them with --bands)"
            )


def _tile_one(
    source: RasterSource,
    grid: TileGrid,
    tile: Tile,
    labels,
    images_dir: Path,
    labels_dir: Path | None,
    settings: TileSettings,
    summary: SourceTiles,
) -> ChipEntry | None:
    name = tile.name(source.path.stem, grid.digits) + ".tif"
    image_path = images_dir / name
    label_path = labels_dir / name if labels_dir is not None else None
    stored = None if settings.overwrite else _stored_chip(image_path, label_path, tile, source)
    if stored is not None:
        valid_fraction, label_ids = stored
        if label_ids is not None:
            _count_classes(summary.class_pixels, label_ids)
        summary.reused += 1
    else:
        chip = source.read_chip(tile)
        valid_fraction = chip.valid_fraction
        if valid_fraction < settings.min_valid or valid_fraction == 0.0:
            summary.below_min_valid += 1
            return None
        _write_image_chip(image_path, source, chip, settings.compress)
        if labels is not None and label_path is not None:
            label_ids = labels.for_tile(tile)
            label_ids[~chip.valid] = IGNORE_INDEX
            _write_label_chip(label_path, tile, label_ids, labels.classes, settings.compress)
            _count_classes(summary.class_pixels, label_ids)
        summary.written += 1
    return ChipEntry(
        chip=f"{IMAGES_DIR}/{name}",
        label=f"{LABELS_DIR}/{name}" if label_path is not None else None,
        source=str(source.path),
        row=tile.row,
        col=tile.col,
        valid_fraction=round(valid_fraction, 6),
        split="train",
        tile=tile,
    )


def _chip_profile(tile: Tile, count: int, dtype: str, nodata, compress: str) -> dict:
    profile = dict(
        driver="GTiff",
        width=tile.width,
        height=tile.height,
        count=count,
        dtype=dtype,
        crs=tile.crs,
        transform=tile.transform,
        nodata=nodata,
        compress=compress,
    )
    if tile.width % 16 == 0 and tile.height % 16 == 0:
        block = min(256, tile.width, tile.height)
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    return profile


def _write_image_chip(path: Path, source: RasterSource, chip: Chip, compress: str) -> None:
    profile = _chip_profile(chip.tile, source.count, source.dtype.name, source.nodata, compress)
    needs_mask = source.nodata is None and not chip.valid.all()
    with atomic_output(path, lock=False) as tmp:  # tile_sources locks the chip set
        env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True) if needs_mask else rasterio.Env()
        with env, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(chip.data)
            for i, name in enumerate(source.band_names, start=1):
                dst.set_band_description(i, name)
            if needs_mask:
                dst.write_mask(np.where(chip.valid, 255, 0).astype(np.uint8))


def _write_label_chip(
    path: Path, tile: Tile, label_ids: np.ndarray, classes: ClassMap | None, compress: str
) -> None:
    profile = _chip_profile(tile, 1, "uint8", IGNORE_INDEX, compress)
    with atomic_output(path, lock=False) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(label_ids, 1)
        dst.set_band_description(1, "class")
        if classes is not None:
            dst.write_colormap(1, {c.id: (*c.rgb, 255) for c in classes})
            dst.update_tags(**{f"CLASS_{c.id}": c.name for c in classes})


def _stored_chip(
    image_path: Path, label_path: Path | None, tile: Tile, source: RasterSource
) -> tuple[float, np.ndarray | None] | None:
    """(valid fraction, label ids) of a chip already on disk, or None when it must be
    (re)written: missing, cut short by a full disk or a crash, or not this tile's grid."""
    grid = dict(width=tile.width, height=tile.height, crs=tile.crs, transform=tile.transform)
    if not output_complete(image_path, count=source.count, **grid):
        return None
    if label_path is not None and not output_complete(label_path, count=1, **grid):
        return None
    try:
        with rasterio.open(image_path) as src:
            valid_fraction = float((src.dataset_mask() > 0).mean())
        label_ids = None
        if label_path is not None:
            with rasterio.open(label_path) as src:
                label_ids = src.read(1)
    except (rasterio.errors.RasterioError, OSError):
        return None  # damaged inside; written again
    return valid_fraction, label_ids


def _count_classes(counter: Counter, label_ids: np.ndarray) -> None:
    ids, counts = np.unique(label_ids, return_counts=True)
    for class_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if class_id != IGNORE_INDEX:
            counter[class_id] += count


def _draw(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by seed and key, whatever the iteration order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _assign_splits(chips: list[ChipEntry], settings: TileSettings) -> None:
    """Seeded train/val draw per chip, or per block of chips to keep val spatially apart."""

    def key(entry: ChipEntry) -> str:
        stem = Path(entry.source).stem
        if settings.split == "blocks":
            return f"{stem}:b{entry.row // settings.block}:{entry.col // settings.block}"
        return f"{stem}:{entry.row}:{entry.col}"

    draws = {key(e): _draw(settings.seed, key(e)) for e in chips}
    val_keys = {k for k, d in draws.items() if d < settings.val_fraction}
    if settings.val_fraction > 0 and not val_keys and len(draws) > 1:
        # A small dataset can miss the fraction entirely; keep at least one val group.
        val_keys = {min(draws, key=draws.get)}
    for entry in chips:
        entry.split = "val" if key(entry) in val_keys else "train"


def _write_tiles(summary: TileSummary, out_dir: Path) -> None:
    """Footprints in tiles.gpkg, written with pyogrio's raw writer (no pandas import)."""
    import shapely
    from pyogrio.raw import write
    from rasterio.warp import transform_geom

    from geoseg.styles import GPKG_OPTIONS, write_tiles_style

    chips = summary.chips
    crs = chips[0].tile.crs if chips else None
    geometries = []
    for entry in chips:
        footprint = shapely.box(*entry.tile.bounds)
        if crs is not None and entry.tile.crs != crs:
            footprint = shapely.geometry.shape(
                transform_geom(entry.tile.crs, crs, footprint.__geo_interface__, precision=-1)
            )
        geometries.append(footprint)
    fields = {
        "chip": np.array([e.chip for e in chips], dtype=object),
        "label": np.array([e.label for e in chips], dtype=object),
        "source": np.array([e.source for e in chips], dtype=object),
        "row": np.array([e.row for e in chips], dtype=np.int32),
        "col": np.array([e.col for e in chips], dtype=np.int32),
        "valid_fraction": np.array([e.valid_fraction for e in chips], dtype=np.float64),
        "split": np.array([e.split for e in chips], dtype=object),
        "crs": np.array(
            [e.tile.crs.to_string() if e.tile.crs else None for e in chips], dtype=object
        ),
    }
    with atomic_output(out_dir / TILES_FILE) as tmp:
        write(
            tmp,
            geometry=shapely.to_wkb(np.array(geometries, dtype=object)),
            field_data=list(fields.values()),
            fields=list(fields),
            crs=crs.to_wkt() if crs is not None else None,
            geometry_type="Polygon",
            driver="GPKG",
            layer=TILES_LAYER,
            dataset_options=GPKG_OPTIONS,
        )
        write_tiles_style(tmp, TILES_LAYER, sorted({e.split for e in chips}))


def _write_dataset_json(
    summary: TileSummary,
    out_dir: Path,
    opened: list,
    settings: TileSettings,
    classes: ClassMap | None,
) -> None:
    first, grid, _ = opened[0]
    if settings.labels is not None:
        seen = set(summary.class_pixels)
        classes = classes.with_ids(seen) if classes is not None else ClassMap.from_ids(seen)
    crss = {s.crs.to_string() for s, _, _ in opened}
    splits = Counter(e.split for e in summary.chips)
    names = {c.id: c.name for c in classes} if classes is not None else {}
    info = {
        "geoseg_version": __version__,
        "format": FORMAT_VERSION,
        "sources": [
            {
                "path": str(s.path),
                "crs": s.crs.to_string(),
                "resolution": list(s.res),
                "width": s.width,
                "height": s.height,
                "chips": sum(1 for e in summary.chips if e.source == str(s.path)),
            }
            for s, _, _ in opened
        ],
        "crs": crss.pop() if len(crss) == 1 else None,
        "resolution": list(first.res),
        "chip_size": grid.size,
        "overlap": grid.overlap,
        "bands": list(first.band_names),
        "dtype": first.dtype.name,
        "nodata": first.nodata,
        "labels": str(settings.labels) if settings.labels else None,
        "classes": classes.to_json() if classes is not None else [],
        "split": {
            "method": settings.split,
            "val_fraction": settings.val_fraction,
            "seed": settings.seed,
        },
        "counts": {
            "chips": len(summary.chips),
            "train": splits.get("train", 0),
            "val": splits.get("val", 0),
            "below_min_valid": summary.below_min_valid,
            "class_pixels": {
                names.get(i, str(i)): int(n) for i, n in sorted(summary.class_pixels.items())
            },
        },
    }
    with atomic_output(out_dir / DATASET_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
