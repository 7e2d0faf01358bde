"""Predict and tile on a dask.distributed cluster, with the same results as on one process.

A job runs as tasks on the cluster's workers: one per raster, or, for a raster with more
chip rows than a block (or when there are fewer rasters than workers), one per block of
chip rows plus one task that joins the blocks' part files into the final mask (see
``geoseg.predict.predict_part``). Tasks are submitted largest raster first. Workers must
see the same file paths as the client (one machine, or a shared filesystem): paths sent
to an external cluster are made absolute on the client (``absolute_path``) and
``check_worker_access`` tries them from a worker first.

Each worker process loads a backend's model once (``worker_backend``) and reuses it for
all its tasks. Tasks report progress to the client through dask events, so one callback
counts the chips (or tiles) of the whole job. A task that fails is reported with its
raster and does not stop the others (``geoseg.batch``), as in one process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.batch import BatchReport, Failure, PredictOptions, predict_job, vectorize_job
from geoseg.errors import OptionError

if TYPE_CHECKING:
    from distributed import Client

    from geoseg.backend import Backend
    from geoseg.predict import PredictJob
    from geoseg.tiling import SourceTiles, TileSettings

log = logging.getLogger(__name__)

#: dask event topic that carries progress from tasks to the client.
PROGRESS_TOPIC = "geoseg-progress"
#: Chip rows per block when a raster is cut into blocks among many rasters.
BLOCK_ROWS = 32
#: Seconds between progress messages from one task.
REPORT_INTERVAL = 0.5
#: GDAL block cache of a worker process, as the command line sets it (bytes).
WORKER_GDAL_CACHE = 64 << 20


# Cluster ------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster_client(
    workers: int | None = None,
    scheduler: str | Path | None = None,
    *,
    announce: Callable[[str], None] | None = None,
) -> Iterator[Client]:
    """A dask client: a new local cluster of ``workers`` processes, or an existing one.

    ``scheduler`` is a scheduler address (``tcp://HOST:PORT``) or a scheduler JSON file
    (``dask scheduler --scheduler-file``). ``announce(line)`` receives the dashboard
    address of a cluster started here.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise OptionError(
            "--workers and --scheduler need dask.distributed; pip install 'geoseg[distributed]'"
        ) from None
    if (workers is None) == (scheduler is None):
        raise OptionError("give either --workers N (a local cluster) or --scheduler ADDRESS")
    # dask logs every cluster event at INFO; follow geoseg's verbosity (-v) instead.
    logging.getLogger("distributed").setLevel(
        max(logging.getLogger().getEffectiveLevel(), logging.INFO)
    )
    if workers is not None:
        if workers < 1:
            raise OptionError(f"--workers must be at least 1, got {workers}")
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            if announce is not None:
                import importlib.util

                dashboard = client.dashboard_link
                if importlib.util.find_spec("bokeh") is None:  # dask serves no dashboard then
                    dashboard = "none (pip install bokeh for one)"
                announce(f"dask cluster of {workers} workers; dashboard: {dashboard}")
            yield client
        return
    scheduler = str(scheduler)
    try:
        if "://" in scheduler:
            client = Client(scheduler, timeout="10s")
        elif Path(scheduler).is_file():
            client = Client(scheduler_file=scheduler, timeout="10s")
        else:
            raise OptionError(
                f"--scheduler {scheduler}: neither an address like tcp://HOST:8786 nor an "
                f"existing scheduler file"
            )
    except OSError as exc:
        raise OptionError(f"--scheduler {scheduler}: cannot reach the scheduler ({exc})") from None
    with client:
        yield client


def worker_count(client: Client) -> int:
    """Worker processes the cluster has now (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def absolute_path(path: str | Path | None, *, local_only: bool = False) -> str | Path | None:
    """``path`` made absolute against the client's working directory (None stays None).

    Workers of an external cluster run in folders of their own, so every path sent to
    them must be absolute. With ``local_only`` a value that is not an existing local path
    (a hub id such as ``nvidia/mit-b0``, or ``auto``) is returned unchanged. The type
    (str or Path) is kept.
    """
    from geoseg.sources import absolute_source, is_remote

    if path is None or (local_only and not Path(path).exists()) or is_remote(path):
        return path  # a URL reads the same from every worker
    absolute = absolute_source(path)  # a band stack's files each made absolute
    return Path(absolute) if isinstance(path, Path) else absolute


def _access_problems(inputs: list[str], folders: list[str]) -> list[str]:
    """On a worker: which inputs it cannot read and which output folders it cannot write."""
    from geoseg.sources import local_files

    problems = []
    for path in (file for source in inputs for file in local_files(source)):
        if not os.path.exists(path):
            problems.append(f"do not see {path}")
        elif not os.access(path, os.R_OK):
            problems.append(f"cannot read {path}")
    for folder in folders:
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            handle, probe = tempfile.mkstemp(dir=existing, prefix=".geoseg-probe-")
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            problems.append(f"cannot write {folder} ({exc.strerror})")
    return problems


def check_worker_access(
    client: Client, inputs: Sequence[str | Path], folders: Sequence[str | Path]
) -> None:
    """Raise ``OptionError`` unless a worker sees ``inputs`` and can write ``folders``.

    One quick task on one worker, before any work is submitted: workers open files by the
    client's paths, so a cluster without the same filesystem fails here in one line
    instead of once per raster.
    """
    inputs = list(dict.fromkeys(str(p) for p in inputs))
    folders = list(dict.fromkeys(str(p) for p in folders))
    problems = client.submit(_access_problems, inputs, folders, pure=False).result()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OptionError(
            f"the cluster's workers {problems[0]}{more}; they open files by the paths given "
            f"here, so put sources and outputs on a filesystem every worker mounts at the "
            f"same path"
        )


# The per-process model cache ----------------------------------------------------------


@dataclass(frozen=True)
class BackendSpec:
    """How to build and load a backend: what a worker needs to get the same model."""

    name: str
    options: tuple[str, ...] = ()
    config: str | None = None
    model: str | None = None
    device: str = "auto"

    def create(self) -> Backend:
        """A new backend with these options, not loaded."""
        from geoseg.plugins import create_backend

        return create_backend(self.name, self.options, self.config)


_backends: dict[BackendSpec, Backend] = {}
_loads: Counter = Counter()
_backend_lock = threading.Lock()


def worker_backend(spec: BackendSpec) -> Backend:
    """This process's loaded backend for ``spec``, loaded on first use only."""
    with _backend_lock:
        backend = _backends.get(spec)
        if backend is None:
            backend = spec.create()
            backend.load(spec.model, spec.device)
            _backends[spec] = backend
            _loads[spec] += 1
        return backend


def backend_loads() -> dict[BackendSpec, int]:
    """How many times this process loaded each backend."""
    return dict(_loads)


# Progress -----------------------------------------------------------------------------


class _TaskReporter:
    """Sends a task's units done to the client, at most every ``REPORT_INTERVAL`` s."""

    def __init__(self, task: str) -> None:
        from distributed import get_worker

        self.task = task
        self.worker = get_worker()
        self.pending = 0
        self.done = 0
        self.sent_at = time.monotonic()

    def engine_progress(self, done: int, total: int) -> None:
        """The predict engine's ``progress(done, total)`` callback."""
        self.add(done - self.done)
        self.done = done

    def add(self, units: int) -> None:
        self.pending += units
        if time.monotonic() - self.sent_at >= REPORT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.worker.log_event(PROGRESS_TOPIC, (self.task, self.pending))
            self.pending = 0
        self.sent_at = time.monotonic()


class _JobProgress:
    """Client side: counts units reported by tasks; completes a task's count when it ends."""

    def __init__(self, client: Client, progress: Callable[[int], None] | None) -> None:
        self.client, self.progress = client, progress
        self.reported: Counter = Counter()
        self.ended: set[str] = set()
        self.lock = threading.Lock()

    def __enter__(self) -> _JobProgress:
        if self.progress is not None:
            self.client.subscribe_topic(PROGRESS_TOPIC, self._event)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.client.unsubscribe_topic(PROGRESS_TOPIC)

    def _event(self, event) -> None:
        task, units = event[1]
        with self.lock:
            if task in self.ended:  # a message that arrived after its task's result
                return
            self.reported[task] += units
            self.progress(units)

    def finished(self, task: str, units: int) -> None:
        """Count whatever of a finished task's ``units`` no message reported yet."""
        if self.progress is None:
            return
        with self.lock:
            self.ended.add(task)
            rest = units - self.reported[task]
            if rest > 0:
                self.progress(rest)


# Results ------------------------------------------------------------------------------


@dataclass
class ClusterReport(BatchReport):
    """What a job on the cluster did: finished outputs, failed sources, blocks per source."""

    blocks: dict[Path, int] = field(default_factory=dict)


def _guarded(source: Path, function: Callable, *args):
    """Run a task; a failure comes back as a ``Failure`` naming ``source``.

    Returned rather than raised, so the worker does not log user errors as crashes and
    the client gets the error's class whatever dask can unpickle.
    """
    import rasterio

    # As the command line does: GDAL's warnings go to a quiet logger.
    logging.getLogger("rasterio").setLevel(logging.ERROR)
    cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": WORKER_GDAL_CACHE}
    try:
        with rasterio.Env(**cache):
            return function(*args)
    except Exception as exc:
        return Failure.from_exception(source, exc)


# Prediction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    job: PredictJob
    rows: int
    cols: int
    pixels: int


def _plan_task(spec: BackendSpec, job: PredictJob, options: PredictOptions) -> _Plan:
    from geoseg.predict import prediction_grid

    grid = prediction_grid(
        worker_backend(spec),
        job.source,
        bands=options.bands,
        size=options.size,
        overlap=options.overlap,
    )
    return _Plan(job, grid.n_rows, grid.n_cols, grid.width * grid.height)


def _predict_task(spec: BackendSpec, job: PredictJob, options: PredictOptions, task: str) -> int:
    """Predict (and vectorize) one whole raster; returns the chips predicted."""
    reporter = _TaskReporter(task)
    predict_job(worker_backend(spec), job, options, progress=reporter.engine_progress)
    reporter.flush()
    return reporter.done


def _part_task(
    spec: BackendSpec,
    job: PredictJob,
    options: PredictOptions,
    chip_rows: tuple[int, int],
    part: Path,
    probability_part: Path | None,
    task: str,
) -> int:
    """Predict one block of chip rows into its part files; returns the chips predicted."""
    from geoseg.predict import predict_part

    reporter = _TaskReporter(task)
    predict_part(
        worker_backend(spec),
        job.source,
        part,
        chip_rows,
        bands=options.bands,
        size=options.size,
        overlap=options.overlap,
        batch_size=options.batch_size,
        prompts=options.prompts,
        probabilities_part=probability_part,
        progress=reporter.engine_progress,
    )
    reporter.flush()
    return reporter.done


def _merge_task(
    spec: BackendSpec,
    job: PredictJob,
    options: PredictOptions,
    parts: list[Path],
    probability_parts: list[Path] | None,
    *block_chips: int | Failure,
) -> int | Failure:
    """Join a raster's parts (after every block task: ``block_chips``) into its mask."""
    from geoseg.predict import merge_parts
    from geoseg.stitch import remove_all

    for block in block_chips:
        if isinstance(block, Failure):
            remove_all(parts + (probability_parts or []))
            return block
    try:
        merge_parts(
            parts,
            job.mask,
            worker_backend(spec).classes(),
            dst_crs=options.dst_crs,
            probability_parts=probability_parts,
            probabilities_path=job.probabilities,
        )
    finally:
        remove_all(parts + (probability_parts or []))
    vectorize_job(job, options)
    return sum(block_chips)


def block_plan(rows: int, block_rows: int) -> list[tuple[int, int]]:
    """(first, stop) chip rows of consecutive blocks of at most ``block_rows`` rows."""
    return [(first, min(first + block_rows, rows)) for first in range(0, rows, block_rows)]


def predict_on_cluster(
    client: Client,
    jobs: Sequence[PredictJob],
    spec: BackendSpec,
    options: PredictOptions | None = None,
    *,
    block_rows: int | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_done: Callable[[PredictJob], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    fail_fast: bool = False,
) -> ClusterReport:
    """Predict ``jobs`` on the cluster; returns what finished and what failed.

    Rasters with more chip rows than ``block_rows`` are cut into blocks of that many
    rows (default: ``BLOCK_ROWS``, or fewer so that a job of fewer rasters than workers
    keeps every worker busy). ``on_start(total_chips)`` is called once the rasters are
    planned, ``progress(chips)`` as chips finish anywhere, ``on_done(job)`` and
    ``on_failure(failure)`` as each raster ends. With ``fail_fast`` the first failure
    cancels the tasks not yet finished and is raised (``Failure.error``), as a failure that
    concerns the whole command (``Failure.stops_job``) always is.
    """
    from distributed import as_completed

    from geoseg.stitch import remove_all, scratch_path

    options = options or PredictOptions()
    report = ClusterReport()
    tasks: dict[object, tuple[str, int]] = {}
    finals: dict[object, tuple[_Plan, list[Path]]] = {}

    def failed(failure: Failure) -> None:
        if fail_fast or failure.stops_job:
            client.cancel([*planning, *tasks, *finals])
            raise failure.error()
        report.failed.append(failure)
        if on_failure is not None:
            on_failure(failure)

    plans: list[_Plan] = []
    planning = {
        client.submit(_guarded, job.source, _plan_task, spec, job, options, pure=False): job
        for job in jobs
    }
    unreadable = []
    for future in as_completed(planning):
        result = _outcome(future, planning[future].source)
        if isinstance(result, Failure):
            if fail_fast:
                failed(result)
            unreadable.append(result)
        else:
            plans.append(result)
    # An error every raster repeats stops the job, whichever raster reported it first.
    for failure in sorted(unreadable, key=lambda f: not f.stops_job):
        failed(failure)
    # Largest first, so the long rasters start early and small ones fill the gaps.
    plans.sort(key=lambda p: p.pixels, reverse=True)
    workers = worker_count(client)
    if on_start is not None:
        on_start(sum(p.rows * p.cols for p in plans))

    with _JobProgress(client, progress) as tally:
        for index, plan in enumerate(plans):
            rows = block_rows
            if rows is None:
                rows = BLOCK_ROWS
                if len(plans) < workers:
                    rows = min(rows, math.ceil(plan.rows * len(plans) / workers))
            rows = max(1, rows)
            job, priority = plan.job, plan.pixels
            needs_mask = options.overwrite or not job.mask_complete()
            if plan.rows <= rows or not needs_mask:
                name = f"{index}"
                future = client.submit(
                    _guarded,
                    job.source,
                    _predict_task,
                    spec,
                    job,
                    options,
                    name,
                    pure=False,
                    priority=priority,
                )
                tasks[future] = (name, plan.rows * plan.cols)
                finals[future] = (plan, [])
                continue
            parts, probability_parts, blocks = [], [], []
            for first, stop in block_plan(plan.rows, rows):
                name = f"{index}:{first}"
                part = scratch_path(job.mask)
                probability_part = scratch_path(job.probabilities) if job.probabilities else None
                parts.append(part)
                if probability_part is not None:
                    probability_parts.append(probability_part)
                block = client.submit(
                    _guarded,
                    job.source,
                    _part_task,
                    spec,
                    job,
                    options,
                    (first, stop),
                    part,
                    probability_part,
                    name,
                    pure=False,
                    priority=priority,
                )
                tasks[block] = (name, (stop - first) * plan.cols)
                blocks.append(block)
            report.blocks[job.source] = len(blocks)
            merge = client.submit(
                _guarded,
                job.source,
                _merge_task,
                spec,
                job,
                options,
                parts,
                probability_parts or None,
                *blocks,
                pure=False,
                priority=priority,
            )
            finals[merge] = (plan, parts + probability_parts)

        for future in as_completed(list(tasks) + [f for f in finals if f not in tasks]):
            plan, scratch = finals.get(future, (None, []))
            result = _outcome(future, plan.job.source if plan else Path("?"))
            if future in tasks and not isinstance(result, Failure):
                tally.finished(*tasks[future])
            if plan is None:
                continue
            if isinstance(result, Failure):
                remove_all(scratch)  # parts left by a worker that died
                failed(result)
            else:
                report.done.append(plan.job)
                if on_done is not None:
                    on_done(plan.job)
    return report


def _outcome(future, source: Path):
    """A task's result, or a ``Failure`` when it failed or its worker died."""
    if future.status == "error":
        return Failure.from_exception(source, future.exception())
    return future.result()


# Tiling -------------------------------------------------------------------------------


def _tile_task(path: Path, out_dir: Path, settings: TileSettings, task: str) -> SourceTiles:
    from geoseg.tiling import tile_source

    reporter = _TaskReporter(task)
    result = tile_source(path, out_dir, settings, progress=reporter.add)
    reporter.flush()
    return result


def tile_runner(
    client: Client,
    out_dir: str | Path,
    settings: TileSettings,
    *,
    progress: Callable[[int], None] | None = None,
    fail_fast: bool = False,
) -> Callable[[list[Path]], list[SourceTiles | Failure]]:
    """A ``runner`` for ``geoseg.tiling.tile_sources`` that tiles each source as a task.

    Sources are submitted largest first; results (a ``Failure`` for a source that
    failed) come back in source order once every task has ended. With ``fail_fast`` the
    first failure cancels the other tasks and is raised. Chips already written are kept
    and reused by a re-run. A failure that concerns the whole command
    (``Failure.stops_job``) is raised in the same way.
    """
    from distributed import as_completed

    def run(paths: list[Path]) -> list[SourceTiles | Failure]:
        import rasterio

        def pixels(path: Path) -> int:
            with rasterio.open(path) as dataset:
                return dataset.width * dataset.height

        with _JobProgress(client, progress) as tally:
            futures = [
                client.submit(
                    _guarded,
                    path,
                    _tile_task,
                    path,
                    Path(out_dir),
                    settings,
                    str(i),
                    pure=False,
                    priority=pixels(path),
                )
                for i, path in enumerate(paths)
            ]
            results: dict[int, SourceTiles | Failure] = {}
            for future in as_completed(futures):
                index = futures.index(future)
                results[index] = _outcome(future, paths[index])
                if isinstance(results[index], Failure):
                    if fail_fast or results[index].stops_job:
                        client.cancel(futures)
                        raise results[index].error()
                else:
                    tally.finished(str(index), results[index].tiles)
            return [results[index] for index in range(len(paths))]

    return run
