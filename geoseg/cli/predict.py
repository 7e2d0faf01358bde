"""``geoseg predict``: class masks (and polygons) for rasters with any installed backend."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from geoseg.cli.options import (
    Progress,
    backend_option,
    backend_settings_options,
    bands_option,
    cluster_options,
    device_option,
    dst_crs_option,
    echo_failure,
    echo_skipped,
    fail_fast_option,
    finish_batch,
    model_option,
    overwrite_option,
    quiet_option,
)

log = logging.getLogger(__name__)


class ChipProgress(Progress):
    """Adapts the engine's ``progress(done, total)`` callback to a progress bar."""

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.start(total)
        self.bar.update(done - self.bar.n)


@click.command(short_help="Predict class masks (and polygons) for rasters.")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Mask file (.tif) for one source, else a folder of <stem>.tif masks.",
)
@backend_option("Backend that predicts (see geoseg backends).")
@model_option("Model weights: a local folder or hub id (default: the backend's).")
@click.option(
    "--size",
    default=None,
    metavar="PX|METRES",
    help="Chip size in pixels, or in metres with an m suffix (e.g. 2560m). "
    "Default: the backend's chip size.",
)
@click.option(
    "--overlap",
    default=None,
    metavar="PX|METRES",
    help="Overlap between neighbouring chips, in pixels or metres (m suffix). "
    "Default: 64 px, at most a quarter of the chip size.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Chips per backend call.",
)
@device_option
@click.option(
    "--prompts",
    default=None,
    metavar="auto|PROMPTS.gpkg",
    help="Prompts for promptable backends: 'auto' (from a water index, the default "
    "for them) or a prompts file.",
)
@click.option(
    "--vector",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[OUT.gpkg|DIR]",
    help="Also write polygons: to OUT.gpkg (one source), into DIR/<stem>.gpkg, or, "
    "given alone, to <stem>.gpkg beside each mask.",
)
@click.option(
    "--min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --vector: drop polygons smaller than this many square metres.",
)
@click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --vector: simplification tolerance in metres (topology kept).",
)
@dst_crs_option
@click.option(
    "--probabilities",
    is_flag=True,
    help="Also write <stem>_probabilities.tif (float32, one band per class).",
)
@backend_settings_options
@bands_option
@cluster_options
@fail_fast_option
@overwrite_option
@quiet_option
def predict(
    sources,
    output,
    backend_name,
    model,
    size,
    overlap,
    batch_size,
    device,
    prompts,
    vector,
    min_area,
    simplify,
    dst_crs,
    probabilities,
    options,
    config_file,
    bands,
    workers,
    scheduler,
    fail_fast,
    overwrite,
    quiet,
):
    """Predict a class mask for each of SOURCES (GeoTIFFs or folders of them).

    Each mask is a Cloud Optimized GeoTIFF of uint8 class ids on the source grid (255
    where the source is nodata), with a colour table, class names in its tags and a QGIS
    style <stem>.qml beside it. Complete outputs are skipped (--overwrite redoes them);
    incomplete or damaged ones are redone, so an interrupted run resumes.

    One source and an OUTPUT ending in .tif writes that file; otherwise OUTPUT is a
    folder of <stem>.tif masks named after their sources. Give --vector alone after the
    sources for <stem>.gpkg polygons beside each mask.

    A source that fails (unreadable, wrong bands, no CRS) is reported in one line and
    the others go on; the summary counts what was done and what failed, and the exit
    code is then 2 (bad input) or 1 (an internal error, with its traceback).
    --fail-fast stops at the first failure instead.

    --workers N runs on a local dask cluster of N processes, --scheduler on an existing
    one (paths are made absolute here; its workers must see them at the same paths):
    one task per raster, large rasters in blocks of chip rows, same masks and messages.

    A chip classifier (a backend of kind chips, e.g. hf-classifier) answers one class
    per chip instead: <stem>.gpkg (chip footprints with class and probabilities) and
    <stem>.tif (one pixel per chip) for each source; OUTPUT may then end in .gpkg.

    \b
    Examples:
      geoseg predict naip.tif -o water.tif --backend spectral --bands naip --vector
      geoseg predict scenes/ -o masks/ --backend segformer --model ./model --vector
      geoseg predict scenes/ -o masks/ --backend spectral --workers 4
    """
    from geoseg.batch import BatchReport, PredictOptions
    from geoseg.distributed import BackendSpec, absolute_path
    from geoseg.errors import OptionError
    from geoseg.manifest import check_backend
    from geoseg.plugins import backend_class, check_model_option
    from geoseg.predict import expand_sources, plan_outputs
    from geoseg.raster import check_readable, parse_crs
    from geoseg.sources import is_special

    if scheduler is not None:
        # The workers of an external cluster do not share this working directory.
        sources = [absolute_path(s) for s in sources]
        output, config_file = absolute_path(output), absolute_path(config_file)
        model = absolute_path(model, local_only=True)
        if vector:
            vector = absolute_path(vector)
        if prompts not in (None, "auto"):
            prompts = absolute_path(prompts)
    if prompts is not None and prompts != "auto":
        check_readable(prompts, what="prompts")
    parse_crs(dst_crs)
    check_model_option(backend_name, model)
    check_backend(model, backend_name)  # a model folder trained by another backend
    if backend_class(backend_name).capabilities().kind == "chips":
        from geoseg.cli.predict_chips import predict_chip_sources

        refused = {
            "--vector": vector is not None, "--min-area": bool(min_area),
            "--simplify": bool(simplify), "--probabilities": probabilities,
            "--prompts": prompts is not None, "--dst-crs": dst_crs is not None,
            "--workers/--scheduler": workers is not None or scheduler is not None,
        }  # fmt: skip
        spec = BackendSpec(
            backend_name, tuple(options), str(config_file) if config_file else None, model, device
        )
        settings = PredictOptions(bands=bands, size=size, overlap=overlap,
                                  batch_size=batch_size, overwrite=overwrite)  # fmt: skip
        return predict_chip_sources(
            sources, output, spec, settings, refused=refused, fail_fast=fail_fast, quiet=quiet
        )
    if (min_area or simplify) and vector is None:
        raise OptionError("--min-area and --simplify shape the polygons of --vector; add --vector")
    source_paths = expand_sources(sources)
    single_file = len(sources) == 1 and (
        not Path(sources[0]).is_dir() or is_special(sources[0])  # a band folder is one source
    )
    vector_arg = True if vector == "" else vector
    jobs = plan_outputs(
        source_paths,
        output,
        vector=vector_arg,
        probabilities=probabilities,
        single_file=single_file,
    )
    for job in jobs:
        job.clean_partials()  # an interrupted run's temporary files; the re-run resumes
    spec = BackendSpec(
        backend_name, tuple(options), str(config_file) if config_file else None, model, device
    )
    backend = spec.create()  # a typo in a backend name or option fails here, before any work
    settings = PredictOptions(
        bands=bands,
        size=size,
        overlap=overlap,
        batch_size=batch_size,
        prompts=prompts,
        dst_crs=dst_crs,
        min_area=min_area,
        simplify=simplify,
        overwrite=overwrite,
    )
    pending = []
    for job in jobs:
        if job.complete() and not overwrite:
            echo_skipped(job.mask)
        else:
            pending.append(job)
    report = BatchReport()
    if pending and (workers is not None or scheduler is not None):
        report = _predict_on_cluster(pending, spec, settings, workers, scheduler, fail_fast, quiet)
    elif pending:
        report = _predict_here(pending, backend, spec, settings, fail_fast, quiet)
    finish_batch(len(jobs), len(report.done), report.failed, len(jobs) - len(pending))


def _echo_done(job, write=click.echo) -> None:
    lines = [f"mask: {job.mask}"]
    if job.probabilities:
        lines.append(f"probabilities: {job.probabilities}")
    if job.vector is not None:
        lines.append(f"polygons: {job.vector}")
    write("\n".join(lines))


def _predict_here(pending, backend, spec, settings, fail_fast, quiet):
    """The one-process loop: every source checked first, then predicted one by one."""
    from geoseg.batch import BatchReport, Failure, predict_job, stops_job
    from geoseg.predict import prediction_grid

    report = BatchReport()

    def failed(job, exc) -> Failure:
        if fail_fast or stops_job(exc):
            raise exc
        return Failure.from_exception(job.source, exc)

    checked, unreadable = [], []
    for job in pending:
        try:
            # As the cluster plans every raster first: bad files fail before any model loads.
            prediction_grid(
                backend,
                job.source,
                bands=settings.bands,
                size=settings.size,
                overlap=settings.overlap,
            )
        except Exception as exc:
            unreadable.append(failed(job, exc))
        else:
            checked.append(job)
    # Reported once all are checked: an error every source repeats stops the job first.
    for failure in unreadable:
        report.failed.append(failure)
        echo_failure(failure)
    if checked:
        backend.load(spec.model, spec.device)
    for job in checked:
        try:
            with (
                ChipProgress(job.source.name, quiet=quiet) as bar,
                ChipProgress(f"{job.mask.name} polygons", quiet=quiet, unit="window") as shapes,
            ):
                predict_job(backend, job, settings, progress=bar, vector_progress=shapes)
        except Exception as exc:
            report.failed.append(failed(job, exc))
            echo_failure(report.failed[-1])
        else:
            report.done.append(job)
            _echo_done(job)
    return report


def _predict_on_cluster(pending, spec, settings, workers, scheduler, fail_fast, quiet):
    from geoseg.distributed import check_worker_access, cluster_client, predict_on_cluster

    with (
        cluster_client(
            workers, scheduler, announce=lambda line: click.echo(line, err=True)
        ) as client,
        Progress("predict", quiet=quiet) as bar,
    ):
        if scheduler is not None:
            inputs = [job.source for job in pending]
            inputs += [p for p in (settings.prompts, spec.config) if p not in (None, "auto")]
            if spec.model is not None and Path(spec.model).exists():
                inputs.append(spec.model)
            folders = [
                path.parent
                for job in pending
                for path in (job.mask, job.vector, job.probabilities)
                if path is not None
            ]
            check_worker_access(client, inputs, folders)

        def write(text) -> None:
            (bar.bar.write if bar.bar is not None else click.echo)(text)

        return predict_on_cluster(
            client,
            pending,
            spec,
            settings,
            on_start=bar.start,
            progress=bar.update,
            on_done=lambda job: _echo_done(job, write),
            on_failure=lambda failure: echo_failure(failure, bar),
            fail_fast=fail_fast,
        )
