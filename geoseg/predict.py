"""The predict engine: a backend's chip predictions stitched into a class mask.

Chips of a sliding-window grid are read from the source, handed to the backend in
batches, blended with smooth weights where they overlap and turned into class ids by
argmax, one band of chip rows at a time. The mask is written as a tiled GeoTIFF, then
finalised as a Cloud Optimized GeoTIFF with overviews and renamed into place, so an
output under its final name is always complete.

A large raster can also be predicted in blocks of chip rows by separate processes
(``predict_part``), each writing a part file of whole output rows, then joined in row
order by one writer (``merge_parts``); the mask is identical to ``predict_raster``'s.

Output naming for several sources (``plan_outputs``): one source file and an output
ending in ``.tif``/``.tiff`` gives that file; otherwise the output is a folder holding
``<stem>.tif`` per source, with ``<stem>.qml`` (QGIS style), ``<stem>.gpkg`` (polygons,
with ``vector``) and ``<stem>_probabilities.tif`` (with ``probabilities``) beside it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import calculate_default_transform

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
from geoseg.errors import BackendError, GeosegError, InputFileError, OptionError, OutputError
from geoseg.raster import Chip, RasterSource, open_dataset, open_raster, parse_crs
from geoseg.reproject import carry_metadata, warp_raster
from geoseg.stitch import (
    BLOCK_SIZE,
    ChipBlender,
    StripWriter,
    finished_rows,
    margin_rows,
    remove_all,
    row_bands,
    scratch_path,
    tiled_profile,
    write_cog,
)
from geoseg.styles import write_class_metadata, write_raster_qml
from geoseg.windows import Tile, TileGrid, tile_grid

if TYPE_CHECKING:
    from geoseg.prompts import Prompts

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff")
#: Overlap between chips (pixels) unless asked otherwise; never more than a quarter chip.
DEFAULT_OVERLAP = 64

#: ``progress(chips_done, chips_total)``, called after every batch.
Progress = Callable[[int, int], None]


def predict_raster(
    backend: Backend,
    src_path: str | Path,
    out_path: str | Path,
    *,
    bands: str | None = None,
    size: int | str | None = None,
    overlap: int | str | None = None,
    batch_size: int = 8,
    prompts: str | Path | None = None,
    dst_crs: str | None = None,
    probabilities_path: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Predict a class mask for one raster with a loaded backend; returns ``out_path``.

    The mask is uint8 class ids (255 where the source is nodata) on the source grid, or
    on ``dst_crs`` (nearest resampling), as a COG with colour table and class tags, with
    a QGIS ``.qml`` style beside it. ``size`` defaults to the backend's chip size;
    ``size`` and ``overlap`` are pixels or metres (``"2560m"``); ``overlap`` defaults to
    64 px, at most a quarter of the chip. ``prompts``: None, ``"auto"`` or a prompts
    file; backends that need prompts default to ``"auto"``. ``probabilities_path`` also
    writes blended probabilities (float32, one band per class, NaN where nodata).
    ``progress(chips_done, chips_total)`` is called after every batch.

    ``backend.predict`` runs on the calling thread while the next batch is read on
    another and the previous one is blended and written on a third, so a backend must
    not read the source itself during ``predict``, and the array it returns is the
    engine's from then on (blended in place): a new one each call.
    """
    out_path = Path(out_path)
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    target_crs = parse_crs(dst_crs)
    classes = backend.classes()
    if len(classes) < 1:
        raise BackendError(f"backend {backend.name!r} declares no output classes")
    with open_raster(src_path, bands) as source, contextlib.ExitStack() as locks:
        # Held until the style is written: a second run leaves these outputs alone.
        for path in (out_path, probabilities_path):
            if path is not None:
                ensure_folder(Path(path).parent)
                locks.enter_context(output_lock(path))
        names, grid = _plan(backend, source, size, overlap)
        _check_batch_memory(grid.size, batch_size, source.count + 2 * len(classes))
        with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(source, grid)):
            backend.begin_raster(source)
            prompt_source = _prompt_source(backend, source, prompts)
            mask_tmp = scratch_path(out_path)
            prob_tmp = scratch_path(Path(probabilities_path)) if probabilities_path else None
            scratch = [p for p in (mask_tmp, prob_tmp) if p is not None]
            try:
                with write_errors(out_path, scratch):
                    run = _Run(backend, source, grid, classes, names, batch_size, prompt_source)
                    _stream(run, mask_tmp, prob_tmp, progress)
                    for tmp, final in ((mask_tmp, out_path), (prob_tmp, probabilities_path)):
                        if tmp is not None:
                            verify_raster(tmp, name=final)
                _finalise_outputs(mask_tmp, out_path, prob_tmp, probabilities_path, target_crs)
            finally:
                remove_all(scratch)
        write_raster_qml(out_path, classes)
    return out_path


def prediction_grid(
    backend: Backend,
    src_path: str | Path,
    *,
    bands: str | None = None,
    size: int | str | None = None,
    overlap: int | str | None = None,
) -> TileGrid:
    """The chip grid ``predict_raster`` uses for this source with these options."""
    with open_raster(src_path, bands) as source:
        return _plan(backend, source, size, overlap)[1]


def _plan(
    backend: Backend, source: RasterSource, size, overlap
) -> tuple[tuple[str, ...] | None, TileGrid]:
    """The bands the backend reads (None: all) and the chip grid over ``source``."""
    capabilities = backend.loaded_capabilities()
    if capabilities.kind != "pixels":
        raise BackendError(
            f"backend {backend.name!r} classifies whole chips, not pixels; its predictions "
            "are written by geoseg.chip_predict (geoseg predict does this for it)"
        )
    names = tuple(capabilities.bands) or None
    if names:
        source.band_map.indexes(names, source=str(source.path))
    grid = tile_grid(source, size if size is not None else capabilities.chip_size, 0)
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, grid.size // 4)
    return names, tile_grid(source, grid.size, overlap)


def predict_part(
    backend: Backend,
    src_path: str | Path,
    part_path: str | Path,
    chip_rows: tuple[int, int],
    *,
    bands: str | None = None,
    size: int | str | None = None,
    overlap: int | str | None = None,
    batch_size: int = 8,
    prompts: str | Path | None = None,
    probabilities_part: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Predict the output rows that chip rows ``chip_rows`` (first, stop) finish.

    Writes a tiled GeoTIFF of whole output rows (georeferenced, class metadata as in the
    mask) to ``part_path``, under a temporary name first. The chip rows above that reach
    into those rows are predicted too, so the rows are blended exactly as by
    ``predict_raster``. ``progress(chips_done, chips_total)`` counts only the block's chips.
    """
    part_path = Path(part_path)
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    classes = backend.classes()
    with open_raster(src_path, bands) as source:
        names, grid = _plan(backend, source, size, overlap)
        first, stop = chip_rows
        if not 0 <= first < stop <= grid.n_rows:
            raise OptionError(f"chip rows {first}:{stop} are outside a grid of {grid.n_rows} rows")
        _check_batch_memory(grid.size, batch_size, source.count + 2 * len(classes))
        with rasterio.Env(GDAL_CACHEMAX=_cache_bytes(source, grid)):
            backend.begin_raster(source)
            prompt_source = _prompt_source(backend, source, prompts)
            with contextlib.ExitStack() as outputs:
                mask_tmp = outputs.enter_context(atomic_output(part_path))
                prob_tmp = None
                if probabilities_part is not None:
                    prob_tmp = outputs.enter_context(atomic_output(Path(probabilities_part)))
                run = _Run(backend, source, grid, classes, names, batch_size, prompt_source)
                _stream(run, mask_tmp, prob_tmp, progress, chip_rows=(first, stop))
    return part_path


def merge_parts(
    parts: Sequence[Path],
    out_path: str | Path,
    classes: ClassMap,
    *,
    dst_crs: str | None = None,
    probability_parts: Sequence[Path] | None = None,
    probabilities_path: str | Path | None = None,
) -> Path:
    """Join part files of ``predict_part`` (in row order) into the final mask COG.

    The result is what ``predict_raster`` writes for the whole raster: COG, colour
    table, class tags, ``.qml`` style, optional probabilities.
    """
    out_path = Path(out_path)
    target_crs = parse_crs(dst_crs)
    mask_tmp = scratch_path(out_path)
    prob_tmp = scratch_path(Path(probabilities_path)) if probability_parts else None
    scratch = [p for p in (mask_tmp, prob_tmp) if p is not None]
    with contextlib.ExitStack() as locks:
        for path in (out_path, probabilities_path if probability_parts else None):
            if path is not None:
                locks.enter_context(output_lock(path))
        try:
            with write_errors(out_path, scratch):
                _join(parts, mask_tmp)
                if prob_tmp is not None:
                    _join(probability_parts, prob_tmp)
            _finalise_outputs(mask_tmp, out_path, prob_tmp, probabilities_path, target_crs)
        finally:
            remove_all(scratch)
        write_raster_qml(out_path, classes)
    return out_path


def _join(parts: Sequence[Path], out: Path) -> None:
    """Stack part rasters of whole rows, top to bottom, into one tiled GeoTIFF."""
    height = 0
    for part in parts:
        with rasterio.open(part) as dataset:
            height += dataset.height
    with rasterio.open(parts[0]) as first:
        profile = tiled_profile(first.profile, height=height, transform=first.transform)
        with rasterio.open(out, "w", **profile) as dataset:
            carry_metadata(first, dataset)
            writer = StripWriter(dataset)
            top = 0
            for part in parts:
                with rasterio.open(part) as piece:
                    for row, rows in row_bands(piece.height, BLOCK_SIZE):
                        window = rasterio.windows.Window(0, row, piece.width, rows)
                        writer.write(top + row, piece.read(window=window))
                    top += piece.height
            writer.close()


#: Largest batch (chips, bands and probabilities as float32) the engine agrees to build.
MAX_BATCH_BYTES = 4 << 30


def _check_batch_memory(size: int, batch_size: int, planes: int) -> None:
    need = batch_size * size * size * planes * 4
    if need > MAX_BATCH_BYTES:
        raise OptionError(
            f"chips of {size} px in batches of {batch_size} would take {need / 2**30:.0f} GiB "
            f"of memory; use a smaller --size or --batch-size"
        )


def _cache_bytes(source: RasterSource, grid: TileGrid) -> int:
    """GDAL's block cache: enough for the blocks of a chip and its neighbours.

    A striped file (blocks as wide as the raster) needs the blocks of a whole chip row
    so that chips side by side do not decompress the same strips again.
    """
    block_rows, block_cols = source.dataset.block_shapes[0]
    pixel = source.count * source.dtype.itemsize
    if block_cols >= source.width:
        need = 2 * (grid.size + block_rows) * source.width * pixel
    else:
        need = 4 * (grid.size + block_rows) * (grid.size + block_cols) * pixel
    return int(min(max(32 << 20, need), 512 << 20))


def _prompt_source(backend: Backend, source: RasterSource, prompts: str | Path | None):
    if not backend.loaded_capabilities().needs_prompts:
        if prompts is not None:
            log.warning(
                "backend %s takes no prompts; --prompts %s is ignored", backend.name, prompts
            )
        return None
    from geoseg import prompts as prompt_module

    if prompts is None or str(prompts) == "auto":
        settings = prompt_module.PromptSettings(**dict(backend.prompt_settings() or {}))
        return prompt_module.auto_prompts(source, settings)
    return prompt_module.file_prompts(Path(prompts), source)


@dataclass
class _Batch:
    chips: list[Chip]
    images: np.ndarray
    valid: np.ndarray
    prompts: tuple[Prompts, ...] | None


def _batches(
    source: RasterSource,
    tiles: Iterable[Tile],
    names: tuple[str, ...] | None,
    batch_size: int,
    prompt_source,
) -> Iterator[_Batch | list[Chip]]:
    """Batches of chips with valid pixels, in grid order; chips with none come alone."""
    pending: list[Chip] = []
    for tile in tiles:
        chip = source.read_chip(tile, names)
        if not chip.valid.any():
            # Nothing to predict; the engine still needs the chip to keep grid order.
            if pending:
                yield _make_batch(pending, prompt_source)
                pending = []
            yield [chip]
            continue
        pending.append(chip)
        if len(pending) == batch_size:
            yield _make_batch(pending, prompt_source)
            pending = []
    if pending:
        yield _make_batch(pending, prompt_source)


def _make_batch(chips: list[Chip], prompt_source) -> _Batch:
    valid = np.stack([chip.valid for chip in chips])
    first = chips[0].data
    # Each chip goes straight into the float32 batch: no stacked copy in the source dtype.
    images = np.empty((len(chips), *first.shape), np.float32)
    for image, chip in zip(images, chips, strict=True):
        if chip.valid.all():
            image[...] = chip.data
        elif first.dtype.kind == "f":
            image[...] = np.where(chip.valid, chip.data, 0)  # NaN * 0 is NaN
        else:
            np.multiply(chip.data, chip.valid, out=image, dtype=np.float32)
    prompts = None
    if prompt_source is not None:
        prompts = tuple(prompt_source.for_chip(chip) for chip in chips)
    return _Batch(chips, images, valid, prompts)


@dataclass(frozen=True)
class _Run:
    """What a streaming pass predicts: a loaded backend on an open source and its grid.

    ``names``: the bands the backend reads (None: all); ``prompt_source``: prompts per
    chip, or None for a backend without prompts.
    """

    backend: Backend
    source: RasterSource
    grid: TileGrid
    classes: ClassMap
    names: tuple[str, ...] | None
    batch_size: int
    prompt_source: object | None = None


def _stream(
    run: _Run,
    mask_tmp: Path,
    prob_tmp: Path | None,
    progress: Progress | None,
    chip_rows: tuple[int, int] | None = None,
) -> None:
    """Predict every chip and write the mask (and probabilities) to tiled GeoTIFFs.

    ``chip_rows`` (first, stop): write only the rows these chip rows finish.

    A pipeline of three threads, so that the backend's thread does nothing but predict:
    a reader makes the next batches, this thread runs the backend, a stitcher blends the
    predictions and writes the finished rows. Queues between them hold at most one batch
    each, so memory stays that of a few batches whatever the raster's size. An error on
    either side thread is raised here, as it would have been on this one.
    """
    backend, source, grid, classes = run.backend, run.source, run.grid, run.classes
    band_names = run.names or source.band_names
    channels = len(classes)
    first, stop = chip_rows or (0, grid.n_rows)
    start = max(0, first - margin_rows(grid))
    top0, height = finished_rows(grid, first, stop)
    base = source.profile(
        count=1,
        dtype="uint8",
        nodata=IGNORE_INDEX,
        height=height,
        transform=source.transform * Affine.translation(0, top0),
    )
    mask_file = rasterio.open(mask_tmp, "w", **tiled_profile(base))
    prob_file = None
    if prob_tmp is not None:
        prob_profile = tiled_profile(
            base, count=channels, dtype="float32", nodata=float("nan"), predictor=3
        )
        prob_file = rasterio.open(prob_tmp, "w", **prob_profile)
    total, done = (stop - first) * grid.n_cols, 0
    try:
        write_class_metadata(mask_file, classes)
        if prob_file is not None:
            for i, name in enumerate(classes.names, start=1):
                prob_file.set_band_description(i, name)
        stitcher = _Stitcher(grid, classes, first, start, top0, mask_file, prob_file)
        tiles = (grid.tile(row, col) for row in range(start, stop) for col in range(grid.n_cols))
        batches = _batches(source, tiles, run.names, run.batch_size, run.prompt_source)
        with (
            _Prefetch(batches, name="geoseg-read") as upcoming,
            _Background(stitcher.add, name="geoseg-stitch") as stitching,
        ):
            for batch in upcoming:
                if isinstance(batch, list):
                    chips, probabilities = batch, None
                else:
                    chips = batch.chips
                    probabilities = _run_backend(backend, batch, band_names, channels, source.path)
                stitching.put((chips, probabilities))
                del batch, probabilities  # the stitcher holds what it needs
                done += sum(chip.tile.row >= first for chip in chips)
                if progress is not None:
                    progress(done, total)
        stitcher.close()
    finally:
        mask_file.close()
        if prob_file is not None:
            prob_file.close()


class _Stitcher:
    """Blends chips' probabilities in grid order and writes the rows they finish.

    The engine's work after the backend: blending, argmax to class ids, nodata, and the
    mask's (and probabilities') strips, for the chip rows ``start:`` of ``grid``, writing
    only those from chip row ``first`` on (the rows above are the block above's margin).
    """

    def __init__(
        self,
        grid: TileGrid,
        classes: ClassMap,
        first: int,
        start: int,
        top0: int,
        mask_file,
        prob_file,
    ) -> None:
        self.grid, self.first, self.top0 = grid, first, top0
        self.channels = len(classes)
        self.class_ids = np.array(classes.ids, dtype=np.uint8)
        self.ids_are_channels = bool(np.array_equal(self.class_ids, np.arange(self.channels)))
        self.blender = ChipBlender(grid, self.channels, first_row=start)
        self.mask_writer = StripWriter(mask_file)
        self.prob_writer = StripWriter(prob_file) if prob_file is not None else None
        self.mask_strip = self.prob_strip = None

    def add(self, item: tuple[list[Chip], np.ndarray | None]) -> None:
        """Blend a batch's chips, (chips, probabilities (N, C, H, W) or None for a chip
        with no valid pixel); the probabilities are blended in place."""
        chips, probabilities = item
        grid, last_col = self.grid, self.grid.n_cols - 1
        for i, chip in enumerate(chips):
            chip_probs = None if probabilities is None else probabilities[i]
            top, left, finished = self.blender.add(chip.tile, chip_probs)
            if chip.tile.row < self.first:
                continue  # a margin chip: its rows belong to the block above
            rows, cols = finished.shape[1:]
            if chip.tile.col == 0:
                self.mask_strip = np.empty((1, rows, grid.width), np.uint8)
                if self.prob_writer is not None:
                    self.prob_strip = np.empty((self.channels, rows, grid.width), np.float32)
            valid = chip.valid[:rows, :cols]
            ids = best_channel(finished)
            if not self.ids_are_channels:
                ids = self.class_ids[ids]
            ids[~valid] = IGNORE_INDEX
            self.mask_strip[0, :, left : left + cols] = ids
            if self.prob_strip is not None:
                self.prob_strip[:, :, left : left + cols] = np.where(valid, finished, np.nan)
            if chip.tile.col == last_col:
                self.mask_writer.write(top - self.top0, self.mask_strip)
                if self.prob_writer is not None:
                    self.prob_writer.write(top - self.top0, self.prob_strip)

    def close(self) -> None:
        """Write the rows still buffered."""
        self.mask_writer.close()
        if self.prob_writer is not None:
            self.prob_writer.close()


def _wait_for(
    thread: threading.Thread,
    nudge: Callable[[], None] | None = None,
    *,
    on_interrupt: Callable[[], None] | None = None,
) -> None:
    """Wait until ``thread`` ends (calling ``nudge`` meanwhile), even through Ctrl-C.

    The files a pipeline thread reads or writes are closed once this returns, so an
    interrupt while waiting (``on_interrupt`` is told) is raised only once it is gone.
    """
    interrupted: BaseException | None = None
    while thread.is_alive():
        try:
            if nudge is not None:
                nudge()
            thread.join(_POLL_S)
        except KeyboardInterrupt as exc:
            interrupted = exc
            if on_interrupt is not None:
                on_interrupt()
    if interrupted is not None:
        raise interrupted


class _Failed:
    """An exception raised on a pipeline thread, on its way to the engine's thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()
#: How often (seconds) a pipeline thread waiting on a full queue checks it should stop.
_POLL_S = 0.05


class _Prefetch:
    """The items of ``items`` made on a thread of their own, at most ``depth`` ahead.

    Iterate to get them in order; an exception the thread raised is raised there. Leaving
    the ``with`` block stops the thread (it finishes the item at hand) and waits for it, so
    the source it reads is never closed under it.
    """

    def __init__(self, items: Iterator, *, name: str, depth: int = 1) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name)

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        _wait_for(self._thread)

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
        except BaseException as exc:  # raised again on the engine's thread
            self._offer(_Failed(exc))
            return
        self._offer(_END)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


class _Background:
    """Runs ``work(item)`` on a thread of its own for each item ``put``, in order.

    At most ``depth`` items wait. An exception ``work`` raised is raised by the next
    ``put`` or on leaving the ``with`` block, which waits for the work to be done; leaving
    it on an exception skips the work still waiting, so an interrupted run stops at once.
    """

    def __init__(self, work: Callable, *, name: str, depth: int = 1) -> None:
        self._work = work
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._skip = self._ended = False
        self._thread = threading.Thread(target=self._consume, name=name)

    def __enter__(self) -> _Background:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._skip = True
        _wait_for(self._thread, self._end, on_interrupt=self._drop_waiting)
        if exc_type is None:
            self._raise()

    def _end(self) -> None:
        if not self._ended:
            with contextlib.suppress(queue.Full):
                self._queue.put(_END, timeout=_POLL_S)  # the thread keeps taking items
                self._ended = True

    def _drop_waiting(self) -> None:
        self._skip = True

    def put(self, item) -> None:
        self._raise()
        self._queue.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _consume(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._skip or self._error is not None:
                continue  # taken and dropped, so that put never waits on a dead thread
            try:
                self._work(item)
            except BaseException as exc:  # raised again on the engine's thread
                self._error = exc


def best_channel(scores: np.ndarray) -> np.ndarray:
    """Index (H, W) uint8 of the highest of scores (C, H, W); ties go to the first."""
    # Comparisons and arithmetic on whole planes: several times faster than argmax over
    # axis 0, and than assigning through boolean masks (branchy on noisy predictions).
    index = np.zeros(scores.shape[1:], np.uint8)
    best = scores[0]
    last = len(scores) - 1
    for channel in range(1, len(scores)):
        higher = np.greater(scores[channel], best)
        np.multiply(index, ~higher, out=index)
        index += higher.view(np.uint8) * np.uint8(channel)
        if channel < last:
            best = np.maximum(best, scores[channel], out=None if channel == 1 else best)
    return index


def _run_backend(
    backend: Backend, batch: _Batch, band_names, channels: int, source_path: Path
) -> np.ndarray:
    chip_batch = ChipBatch(
        images=batch.images,
        valid=batch.valid,
        band_names=tuple(band_names),
        tiles=tuple(chip.tile for chip in batch.chips),
        prompts=batch.prompts,
        source=source_path,
    )
    result = np.asarray(backend.predict(chip_batch))
    n, _, height, width = batch.images.shape
    if result.shape != (n, channels, height, width):
        raise BackendError(
            f"backend {backend.name!r} returned probabilities of shape {result.shape} for a "
            f"batch of {n} chips of {height}x{width} px; the contract asks for "
            f"{(n, channels, height, width)} (N, classes, H, W)"
        )
    return result.astype(np.float32, copy=False)


def _finalise_outputs(
    mask_tmp: Path, out_path: Path, prob_tmp: Path | None, probabilities_path, target_crs
) -> None:
    """Turn the streamed mask (and probabilities) into COGs under their final names."""
    _finalise(mask_tmp, out_path, target_crs, resampling="nearest")
    if prob_tmp is not None:
        _finalise(
            prob_tmp,
            Path(probabilities_path),
            target_crs,
            resampling="average",
            compress="DEFLATE",
            predictor=True,
        )


def _finalise(tmp: Path, final: Path, dst_crs, *, resampling: str, **cog_options) -> None:
    """Turn a temporary tiled GeoTIFF into the final COG, reprojected if ``dst_crs``."""
    if dst_crs is None:
        with atomic_output(final) as out:
            write_cog(tmp, out, resampling=resampling, **cog_options)
        return
    warped = scratch_path(final)
    try:
        method = "nearest" if resampling == "nearest" else "bilinear"
        with (
            write_errors(final, [warped]),
            open_raster(tmp, dst_crs=dst_crs, resampling=method) as source,
        ):
            warp_raster(source, warped, creation=tiled_profile({}))
        with atomic_output(final) as out:
            write_cog(warped, out, resampling=resampling, **cog_options)
    finally:
        remove_all([warped])


# Several sources ----------------------------------------------------------------------


@dataclass(frozen=True)
class PredictJob:
    """The outputs of one source: mask, style, and optional vector and probabilities."""

    source: Path
    mask: Path
    vector: Path | None = None
    probabilities: Path | None = None

    @property
    def style(self) -> Path:
        return self.mask.with_suffix(".qml")

    def mask_complete(self) -> bool:
        """The mask (and probabilities, when asked for) and its style are verified complete.

        Verified, not merely present: the mask opens, every block is in the file, and its
        grid is the source's (or, when reprojected, the grid ``--dst-crs`` gives the
        source), so a file cut short by a full disk or an older version is redone.
        """
        for grid in self._expected_grids():
            if output_complete(self.mask, count=1, dtype="uint8", **grid):
                break
        else:
            return False
        if not output_complete(self.style):
            return False
        return self.probabilities is None or output_complete(self.probabilities, **grid)

    def complete(self) -> bool:
        """The whole job is done: ``mask_complete`` and the polygons (when asked for) read."""
        if not self.mask_complete():
            return False
        return self.vector is None or output_complete(self.vector)

    def _expected_grids(self) -> list[dict]:
        """Grids (width, height, CRS, transform) the mask may have: the source's, or the
        one reprojecting the source onto the mask's CRS gives; none without a readable mask
        and source."""
        if not self.mask.is_file():
            return []
        try:
            with rasterio.open(self.mask) as mask, open_dataset(self.source) as source:
                grids = []
                if mask.crs == source.crs:
                    grids.append(
                        dict(
                            width=source.width,
                            height=source.height,
                            crs=source.crs,
                            transform=source.transform,
                        )
                    )
                transform, width, height = calculate_default_transform(
                    source.crs, mask.crs, source.width, source.height, *source.bounds
                )
                grids.append(dict(width=width, height=height, crs=mask.crs, transform=transform))
                return grids
        except (rasterio.errors.RasterioError, OSError, ValueError, GeosegError):
            return []

    def clean_partials(self) -> int:
        """Delete temporary files interrupted runs of this job left; return how many.

        Those of an output another live run is writing stay (see ``atomic.clean_partials``).
        """
        outputs = [self.mask, self.style]
        outputs += [p for p in (self.vector, self.probabilities) if p is not None]
        return sum(clean_partials(path.parent, path.name) for path in outputs)


def expand_sources(paths: Sequence[str | Path]) -> list[Path]:
    """Source rasters: files as given, folders replaced by the ``.tif``/``.tiff`` files inside.

    URLs, band stacks, band folders and STAC items are sources too (``geoseg.sources``).
    """
    if not paths:
        raise InputFileError("no source raster given; pass one or more GeoTIFFs or a folder")
    from geoseg import sources as source_types

    sources: list[Path] = []
    for raw in paths:
        if source_types.is_special(raw):
            # A URL, a band stack or band folder, a STAC item: one source each, or one per
            # item of a STAC ItemCollection.
            sources.extend(source_types.expand_source(raw))
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and p.suffix.lower() in RASTER_SUFFIXES
                and not p.name.startswith(".")
            )
            if not found:
                raise InputFileError(f"{path}: folder holds no .tif or .tiff files")
            sources.extend(found)
        elif path.exists():
            sources.append(path)
        else:
            raise InputFileError(f"{path}: no such file or folder; check the path")
    return sources


def plan_outputs(
    sources: Sequence[Path],
    output: str | Path,
    *,
    vector: str | Path | bool | None = None,
    probabilities: bool = False,
    single_file: bool = True,
) -> list[PredictJob]:
    """Output paths for each source (see the module docstring for the naming rules).

    ``vector``: None/False for no polygons, True for ``<stem>.gpkg`` beside each mask, a
    path ending in ``.gpkg`` for a single source, or a folder for ``<folder>/<stem>.gpkg``.
    ``single_file`` is False when the sources came from a folder (the output is a folder).
    """
    output = Path(output)
    is_file = output.suffix.lower() in RASTER_SUFFIXES
    if is_file and (len(sources) != 1 or not single_file):
        raise OutputError(
            f"{output}: is a file name but {len(sources)} sources (or a folder) were given; "
            f"give an output folder instead"
        )
    if is_file and output.is_dir():
        raise OutputError(f"{output}: is a folder; give a .tif file name or another folder")
    if not is_file and output.exists() and not output.is_dir():
        raise OutputError(
            f"{output}: exists and is not a folder; give a .tif file name for one source or a "
            f"folder for several"
        )
    from geoseg.sources import output_stem

    stems = [output_stem(s) for s in sources]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated and not is_file:
        raise OutputError(
            f"several sources are named {repeated[0]!r}; their outputs would collide in "
            f"{output}; predict them into separate folders"
        )
    vector_path = Path(vector) if isinstance(vector, (str, Path)) and str(vector) else None
    if vector_path is not None and vector_path.suffix.lower() not in ("", ".gpkg"):
        raise OutputError(
            f"--vector {vector_path}: polygons are written as GeoPackage; give a .gpkg file "
            f"name, a folder, or --vector alone (after the sources) for <stem>.gpkg"
        )
    if vector_path is not None and vector_path.suffix.lower() == ".gpkg" and len(sources) != 1:
        raise OutputError(
            f"{vector_path}: one GeoPackage for {len(sources)} sources; give a folder for "
            f"--vector (or --vector alone for <stem>.gpkg beside each mask)"
        )
    jobs = []
    for source, stem in zip(sources, stems, strict=True):
        mask = output if is_file else output / f"{stem}.tif"
        if vector_path is None:
            vec = mask.with_suffix(".gpkg") if vector else None
        elif vector_path.suffix.lower() == ".gpkg":
            vec = vector_path
        else:
            vec = vector_path / f"{stem}.gpkg"
        probs = mask.with_name(f"{mask.stem}_probabilities.tif") if probabilities else None
        for path in (mask, vec, probs):
            if path is not None and path.exists() and path.resolve() == source.resolve():
                raise OutputError(
                    f"{path}: the output would overwrite its source; choose "
                    f"another output name or folder"
                )
            if path is not None:
                _check_output_path(path)
        jobs.append(PredictJob(source, mask, vec, probs))
    return jobs


def _check_output_path(path: Path) -> None:
    """Refuse, before any work, an output that is a folder or lies under a file."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for this output")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"{path}: {parent} is a file, not a folder; choose another output path"
                )
            break
