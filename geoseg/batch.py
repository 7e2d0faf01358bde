"""Jobs over many sources: one source's outcome, and the rule that one failure stops nothing.

A source that fails, with bad input (a ``GeosegError``) or a bug, becomes a ``Failure``
and the other sources go on, in one process exactly as on a cluster; a job's exit code is
2 when every failure is bad input and 1 when any is internal. An error that concerns the
whole command rather than one source (an option, the backend or model, an output folder
that cannot be written: ``stops_job``) stops the job at once, as ``--fail-fast`` does
for every error. ``predict_job`` is the one sequence (predict the mask unless it is
complete, then its polygons) that both the one-process loop and the cluster's tasks run
for a source.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.errors import (
    BackendError,
    GeosegError,
    OptionError,
    OutputBusyError,
    OutputError,
)

if TYPE_CHECKING:
    from geoseg.backend import Backend
    from geoseg.predict import PredictJob


def stops_job(exc: BaseException) -> bool:
    """Whether ``exc`` concerns the whole command (every source would fail the same way).

    Options, the backend and its model, and outputs that cannot be written; not an
    output another run is writing now (``OutputBusyError``), which concerns that one.
    """
    whole = isinstance(exc, (OptionError, BackendError, OutputError))
    return whole and not isinstance(exc, OutputBusyError)


@dataclass(frozen=True)
class Failure:
    """A source that failed: why, and whether it is a user error (bad input).

    ``details``: the traceback of an internal error (a bug), else empty. ``stops_job``:
    the error concerns the whole command (see ``stops_job``).
    """

    source: Path
    reason: str
    user_error: bool
    details: str = ""
    stops_job: bool = False

    @classmethod
    def from_exception(cls, source: str | Path, exc: BaseException) -> Failure:
        from geoseg.sources import source_path

        source = source_path(source)  # a URL keeps its '//' (Path drops one)
        if isinstance(exc, GeosegError):
            return cls(source, str(exc), True, stops_job=stops_job(exc))
        details = "".join(traceback.format_exception(exc))
        return cls(source, f"{type(exc).__name__}: {exc}", False, details)

    def describe(self) -> str:
        """The source and the reason, one line, without naming the source twice."""
        reason = " ".join(self.reason.split())
        if str(self.source) in reason:
            return reason
        return f"{self.source}: {reason}"

    def error(self) -> Exception:
        """The failure as an exception to raise (``--fail-fast``, ``stops_job``)."""
        if self.stops_job:
            return GeosegError(self.reason)
        if self.user_error:
            return GeosegError(self.describe())
        return RuntimeError(f"{self.describe()}\n{self.details}")


def exit_code(failures: Sequence[Failure]) -> int:
    """0 when nothing failed, 2 when every failure is bad input, 1 if any is a bug."""
    if not failures:
        return 0
    return 2 if all(f.user_error for f in failures) else 1


@dataclass
class BatchReport:
    """What a job over many sources did: finished jobs and failed sources."""

    done: list = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.failed)


# Prediction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictOptions:
    """The options of ``predict_raster`` and of ``--vector`` for every job."""

    bands: str | None = None
    size: int | str | None = None
    overlap: int | str | None = None
    batch_size: int = 8
    prompts: str | None = None
    dst_crs: str | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False


def predict_job(
    backend: Backend,
    job: PredictJob,
    options: PredictOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    vector_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Predict a job's mask (unless it is complete and not ``overwrite``), then its polygons.

    ``progress(chips_done, chips_total)`` as in ``predict_raster``; ``vector_progress``
    as in ``vectorize_mask``.
    """
    from geoseg.predict import predict_raster

    if options.overwrite or not job.mask_complete():
        predict_raster(
            backend,
            job.source,
            job.mask,
            bands=options.bands,
            size=options.size,
            overlap=options.overlap,
            batch_size=options.batch_size,
            prompts=options.prompts,
            dst_crs=options.dst_crs,
            probabilities_path=job.probabilities,
            progress=progress,
        )
    vectorize_job(job, options, progress=vector_progress)


def vectorize_job(
    job: PredictJob,
    options: PredictOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a job's polygons from its mask, when the job asks for them."""
    if job.vector is None:
        return
    from geoseg.vectorize import vectorize_mask

    vectorize_mask(
        job.mask,
        job.vector,
        min_area=options.min_area,
        simplify=options.simplify,
        progress=progress,
    )
