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
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
#: How ``--chip-labels`` turns a chip's pixel labels into one class per chip.
CHIP_LABEL_RULES = ("majority", "centre", "any:<class>")
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
    #: One class per chip from its pixel labels: ``majority``, ``centre`` or ``any:<class>``.
    chip_labels: str | None = None
    #: Each source's class is the name of its folder (a folder-per-class layout).
    class_folders: bool = False

    def __post_init__(self) -> None:
        if self.chip_labels is not None:
            ChipLabelRule.parse(self.chip_labels)
            if self.labels is None:
                raise OptionError(
                    f"--chip-labels {self.chip_labels} derives each chip's class from pixel "
                    "labels; add --labels (a class raster, or polygons/points with a class field)"
                )
        if self.class_folders and (self.labels is not None or self.chip_labels is not None):
            raise OptionError(
                "--class-folders takes each chip's class from its folder name; leave out "
                "--labels and --chip-labels"
            )
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


@dataclass(frozen=True)
class ChipLabelRule:
    """How one class per chip is drawn from its pixel class ids (255 = ignore).

    ``majority``: the most frequent labelled class (ties: the lower id); ``centre``: the
    class of the chip's centre pixel; ``any:<class>``: that class (id or name) when any
    pixel has it, else the majority of the others. None when no pixel is labelled.
    """

    method: str
    target: str | None = None

    @classmethod
    def parse(cls, text: str) -> ChipLabelRule:
        method, _, target = str(text).strip().partition(":")
        method = {"center": "centre"}.get(method.lower(), method.lower())
        if method in ("majority", "centre") and not target:
            return cls(method)
        if method == "any" and target.strip():
            return cls(method, target.strip())
        raise OptionError(
            f"--chip-labels {text!r} must be one of {', '.join(CHIP_LABEL_RULES)} "
            "(e.g. any:water or any:1)"
        )

    def target_id(self, classes: ClassMap | None, source: str) -> int | None:
        """The class id ``any:<class>`` names, looked up in ``classes`` when a name."""
        if self.target is None:
            return None
        if self.target.isdigit():
            return int(self.target)
        if classes is None:
            raise OptionError(
                f"--chip-labels any:{self.target}: {source} names no classes; give the class "
                "id (any:1) or --classes CLASSES.json"
            )
        return classes.id_of(self.target, source=f"--chip-labels any:{self.target}")

    def chip_class(self, label_ids: np.ndarray, target_id: int | None = None) -> int | None:
        labelled = label_ids[label_ids != IGNORE_INDEX]
        if self.method == "centre":
            value = int(label_ids[label_ids.shape[0] // 2, label_ids.shape[1] // 2])
            return None if value == IGNORE_INDEX else value
        if self.method == "any" and target_id is not None and (labelled == target_id).any():
            return target_id
        if labelled.size == 0:
            return None
        return int(np.bincount(labelled, minlength=1).argmax())


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
    chip_class: int | None = None


@dataclass
class SourceTiles:
    """What tiling one source produced; ``tile_sources`` joins these in source order."""

    chips: list[ChipEntry] = field(default_factory=list)
    written: int = 0
    reused: int = 0
    below_min_valid: int = 0
    class_pixels: Counter = field(default_factory=Counter)
    class_chips: Counter = field(default_factory=Counter)
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
    class_chips: Counter = field(default_factory=Counter)
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
    classes = _settings_classes(settings)
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
            summary.class_chips.update(result.class_chips)
        if not tiled:
            held.close()  # the lock file first, or the folder it sits in is not empty
            _remove_empty(created)
            return summary
        if not summary.chips:
            _no_valid_chips([s for s, _, _ in tiled], settings)
        _assign_splits(summary.chips, settings)
        _write_tiles(summary, out_dir, label_classes)
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
    entry = _open_checked(path, settings, _settings_classes(settings))
    source, grid, labels = entry
    try:
        labels_dir = out_dir / LABELS_DIR if settings.labels else None
        return _tile_opened(
            source, grid, labels, out_dir / IMAGES_DIR, labels_dir, settings, progress
        )
    finally:
        _close(entry)


def _settings_classes(settings: TileSettings) -> ClassMap | None:
    """The classes ``--classes`` gives: a ClassMap, or read from its JSON file."""
    if isinstance(settings.classes, (str, Path)):
        return ClassMap.read(settings.classes)
    return settings.classes


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
    chip_label = _chip_labeller(source, labels, settings)
    # Reading stays on this thread (a GDAL dataset is not shared between threads); the
    # chips' compression, sync and check run on writer threads (GDAL releases the GIL).
    with ChipWriters() as writers:
        for tile in grid:
            entry = _tile_one(
                source,
                grid,
                tile,
                labels,
                images_dir,
                labels_dir,
                settings,
                result,
                writers,
                chip_label,
            )
            if entry is not None:
                if entry.chip_class is not None:
                    result.class_chips[entry.chip_class] += 1
                result.chips.append(entry)
            result.tiles += 1
            if progress:
                progress(1)
    return result


def _chip_labeller(source: RasterSource, labels, settings: TileSettings):
    """``chip_class(label_ids)`` for the chips of one source: None without chip labels."""
    if settings.class_folders:
        classes = _settings_classes(settings)
        folder = Path(source.path).parent.name
        class_id = classes.id_of(folder, source=f"{source.path} (class folder {folder!r})")
        return lambda label_ids: class_id
    if settings.chip_labels is None:
        return lambda label_ids: None
    rule = ChipLabelRule.parse(settings.chip_labels)
    target = rule.target_id(labels.classes, str(settings.labels))
    return lambda label_ids: None if label_ids is None else rule.chip_class(label_ids, target)


class ChipWriters:
    """Chip files written on a few threads, at most ``2 * threads`` waiting.

    ``submit(write, *args)`` queues one file's write; an error of a write is raised by a
    later ``submit`` or on leaving the ``with`` block, which waits for every write. Left
    on an exception, the writes not started are dropped and those under way finish (each
    is atomic), so no temporary file outlives the call.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="geoseg-chip-write")
        self._pending: deque[Future] = deque()

    def submit(self, write: Callable[..., None], *args) -> None:
        while len(self._pending) >= 2 * self.threads:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args))

    def __enter__(self) -> ChipWriters:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
    writers: ChipWriters,
    chip_label=lambda label_ids: None,
) -> ChipEntry | None:
    name = tile.name(source.path.stem, grid.digits) + ".tif"
    label_ids = None
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
        _write_image_chip(image_path, source, chip, settings.compress, writers)
        if labels is not None and label_path is not None:
            label_ids = labels.for_tile(tile)
            label_ids[~chip.valid] = IGNORE_INDEX
            writers.submit(
                _write_label_chip, label_path, tile, label_ids, labels.classes, settings.compress
            )
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
        chip_class=chip_label(label_ids),
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


def _write_image_chip(path: Path, source: RasterSource, chip: Chip, compress: str, writers) -> None:
    """Queue the chip's image file on ``writers``; what it needs of ``source`` is read here."""
    profile = _chip_profile(chip.tile, source.count, source.dtype.name, source.nodata, compress)
    needs_mask = source.nodata is None and not chip.valid.all()
    writers.submit(_write_image_file, path, profile, source.band_names, chip, needs_mask)


def _write_image_file(
    path: Path, profile: dict, band_names: Sequence[str], chip: Chip, needs_mask: bool
) -> None:
    with atomic_output(path, lock=False) as tmp:  # tile_sources locks the chip set
        env = rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True) if needs_mask else rasterio.Env()
        with env, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(chip.data)
            for i, name in enumerate(band_names, start=1):
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


def _write_tiles(summary: TileSummary, out_dir: Path, classes: ClassMap | None = None) -> None:
    """Footprints in tiles.gpkg (``geoseg.gpkg``: no pandas import)."""
    import shapely
    from rasterio.warp import transform_geom

    from geoseg.gpkg import FeatureWriter
    from geoseg.styles import write_tiles_style

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
        "chip": [e.chip for e in chips],
        "label": [e.label for e in chips],
        "source": [e.source for e in chips],
        "row": [e.row for e in chips],
        "col": [e.col for e in chips],
        "valid_fraction": [e.valid_fraction for e in chips],
        "split": [e.split for e in chips],
        "crs": [e.tile.crs.to_string() if e.tile.crs else None for e in chips],
    }
    types = dict.fromkeys(fields, "str") | {
        "row": "int32",
        "col": "int32",
        "valid_fraction": "float64",
    }
    if any(e.chip_class is not None for e in chips):
        # One class per chip (--chip-labels, --class-folders); empty for a chip without one.
        names = {c.id: c.name for c in classes} if classes is not None else {}
        ids = [e.chip_class for e in chips]
        fields["chip_class"] = ids
        fields["chip_class_name"] = [None if i is None else names.get(i, str(i)) for i in ids]
        types |= {"chip_class": "int32", "chip_class_name": "str"}
    with atomic_output(out_dir / TILES_FILE) as tmp:
        with FeatureWriter(tmp, TILES_LAYER, crs=crs, fields=types) as layer:
            layer.add(np.array(geometries, dtype=object), **fields)
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
        "chip_labels": settings.chip_labels
        or ("class_folders" if settings.class_folders else None),
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
            "class_chips": {
                names.get(i, str(i)): int(n) for i, n in sorted(summary.class_chips.items())
            },
        },
    }
    with atomic_output(out_dir / DATASET_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def class_folder_sources(
    folders: Sequence[str | Path], classes: str | Path | ClassMap | None = None
) -> tuple[list[Path], ClassMap, int]:
    """The patches of a folder-per-class layout (``DIR/<class name>/*.tif``, EuroSAT style).

    Returns the patch files (sorted), the classes (``classes`` when given, each folder
    name must be one of them; else the folder names in sorted order, ids from 0) and the
    patch size in pixels (the larger side of the first patch), the chip size by default.
    """
    from geoseg.predict import RASTER_SUFFIXES

    patches: list[Path] = []
    names: set[str] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise InputFileError(
                f"{folder}: --class-folders takes folders holding one subfolder of patches "
                "per class (DIR/<class>/*.tif); give such a folder"
            )
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != "."):
            found = sorted(
                p for p in sub.iterdir()
                if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and p.name[0] != "."
            )  # fmt: skip
            if found:
                names.add(sub.name)
                patches.extend(found)
    if not patches:
        raise InputFileError(
            f"{', '.join(map(str, folders))}: no class subfolder holds .tif patches; the "
            "layout is DIR/<class name>/<patch>.tif"
        )
    if isinstance(classes, (str, Path)):
        classes = ClassMap.read(classes)
    if classes is None:
        classes = ClassMap.from_names(sorted(names))
    for name in sorted(names):
        classes.id_of(name, source=f"class folder {name!r} (--classes)")
    with rasterio.open(patches[0]) as first:
        size = max(first.width, first.height)
    return patches, classes, size
