"""``geoseg predict`` for a backend of kind ``chips``: chip footprints and a coarse class
raster per source (``geoseg.chip_predict``), with the command's own options."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import echo_failure, echo_skipped, finish_batch


def predict_chip_sources(sources, output, spec, settings, *, refused, fail_fast, quiet) -> None:
    """Classify every chip of each source; ``refused`` maps the pixel engine's options to
    whether they were given (each is refused in one line: it has no meaning per chip)."""
    from geoseg.batch import BatchReport, Failure, stops_job
    from geoseg.chip_predict import chip_grid, plan_chip_outputs, predict_chips
    from geoseg.cli.predict import ChipProgress
    from geoseg.errors import OptionError
    from geoseg.predict import expand_sources
    from geoseg.raster import open_raster
    from geoseg.sources import is_special

    for flag, given in refused.items():
        if given:
            raise OptionError(
                f"{flag} does not apply to backend {spec.name!r}: it classifies whole chips and "
                "writes <stem>.gpkg (footprints, class and probabilities per chip) and <stem>.tif "
                "(one pixel per chip) for each source; leave out " + flag
            )
    source_paths = expand_sources(sources)
    single_file = len(sources) == 1 and (not Path(sources[0]).is_dir() or is_special(sources[0]))
    jobs = plan_chip_outputs(source_paths, output, single_file=single_file)
    for job in jobs:
        job.clean_partials()
    backend = spec.create()
    report = BatchReport()

    def failed(job, exc) -> None:
        if fail_fast or stops_job(exc):
            raise exc
        report.failed.append(Failure.from_exception(job.source, exc))
        echo_failure(report.failed[-1])

    checked, skipped = [], 0
    for job in jobs:
        try:
            with open_raster(job.source, settings.bands) as source:
                grid = chip_grid(backend, source, settings.size, settings.overlap)
        except Exception as exc:
            failed(job, exc)
            continue
        if not settings.overwrite and job.complete(grid):
            echo_skipped(job.vector)
            skipped += 1
        else:
            checked.append(job)
    if checked:
        backend.load(spec.model, spec.device)
    for job in checked:
        try:
            with ChipProgress(job.source.name, quiet=quiet) as bar:
                predict_chips(
                    backend,
                    job,
                    bands=settings.bands,
                    size=settings.size,
                    overlap=settings.overlap,
                    batch_size=settings.batch_size,
                    progress=bar,
                )
        except Exception as exc:
            failed(job, exc)
        else:
            report.done.append(job)
            click.echo(f"chips: {job.vector}\nclasses: {job.raster}")
    finish_batch(len(jobs), len(report.done), report.failed, skipped)
