"""``geoseg predict``: class masks (and polygons) for rasters with any installed backend."""

from __future__ import annotations

import logging
import sys
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
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Mask file (.tif) for one source, else a folder of <stem>.tif masks.")
@backend_option("Backend that predicts (see geoseg backends).")
@model_option("Model weights: a local folder or hub id (default: the backend's).")
@click.option("--size", default=None, metavar="PX|METRES",
              help="Chip size in pixels, or in metres with an m suffix (e.g. 2560m). "
              "Default: the backend's chip size.")
@click.option("--overlap", default=None, metavar="PX|METRES",
              help="Overlap between neighbouring chips, in pixels or metres (m suffix). "
              "Default: 64 px, at most a quarter of the chip size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Chips per backend call.")
@device_option
@click.option("--prompts", default=None, metavar="auto|PROMPTS.gpkg",
              help="Prompts for promptable backends: 'auto' (from a water index, the default "
              "for them) or a prompts file.")
@click.option("--vector", is_flag=False, flag_value="", default=None, metavar="[OUT.gpkg|DIR]",
              help="Also write polygons: to OUT.gpkg (one source), into DIR/<stem>.gpkg, or, "
              "given alone, to <stem>.gpkg beside each mask.")
@click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --vector: drop polygons smaller than this many square metres.")
@click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --vector: simplification tolerance in metres (topology kept).")
@dst_crs_option
@click.option("--probabilities", is_flag=True,
              help="Also write <stem>_probabilities.tif (float32, one band per class).")
@backend_settings_options
@bands_option
@cluster_options
@overwrite_option
@quiet_option
def predict(sources, output, backend_name, model, size, overlap, batch_size, device, prompts,
            vector, min_area, simplify, dst_crs, probabilities, options, config_file, bands,
            workers, scheduler, overwrite, quiet):
    """Predict a class mask for each of SOURCES (GeoTIFFs or folders of them).

    Each mask is a Cloud Optimized GeoTIFF of uint8 class ids on the source grid (255
    where the source is nodata), with a colour table, class names in its tags and a QGIS
    style <stem>.qml beside it. Outputs that already exist are skipped (--overwrite
    redoes them), so an interrupted run resumes.

    One source and an OUTPUT ending in .tif writes that file; otherwise OUTPUT is a
    folder of <stem>.tif masks named after their sources. Give --vector alone after the
    sources for <stem>.gpkg polygons beside each mask.

    --workers N runs on a local dask cluster of N processes, --scheduler on an existing
    one: one task per raster, large rasters in blocks of chip rows, same masks. A raster
    that fails there is reported and the others go on; the exit code is then 2 (bad
    input) or 1 (an internal error).

    \b
    Examples:
      geoseg predict naip.tif -o water.tif --backend spectral --bands naip --vector
      geoseg predict scenes/ -o masks/ --backend segformer --model ./model --vector
      geoseg predict scenes/ -o masks/ --backend spectral --workers 4
    """
    from geoseg.errors import OptionError
    from geoseg.plugins import create_backend
    from geoseg.predict import expand_sources, plan_outputs, predict_raster
    from geoseg.raster import check_readable, parse_crs
    from geoseg.vectorize import vectorize_mask

    if prompts is not None and prompts != "auto":
        check_readable(prompts, what="prompts")
    parse_crs(dst_crs)
    if (min_area or simplify) and vector is None:
        raise OptionError("--min-area and --simplify shape the polygons of --vector; add --vector")
    source_paths = expand_sources(sources)
    single_file = len(sources) == 1 and not Path(sources[0]).is_dir()
    vector_arg = True if vector == "" else vector
    jobs = plan_outputs(source_paths, output, vector=vector_arg, probabilities=probabilities,
                        single_file=single_file)
    for job in jobs:
        job.clean_partials()  # an interrupted run's temporary files; the re-run resumes
    if workers is not None or scheduler is not None:
        _predict_on_cluster(jobs, workers, scheduler, backend_name, options, config_file, model,
                            device, bands, size, overlap, batch_size, prompts, dst_crs,
                            min_area, simplify, overwrite, quiet)
        return
    backend = None
    written = skipped = 0
    for job in jobs:
        if job.complete() and not overwrite:
            click.echo(f"{job.mask}: exists, skipped (--overwrite redoes it)", err=True)
            skipped += 1
            continue
        if overwrite or not job.mask_complete():
            if backend is None:
                backend = create_backend(backend_name, options, config_file)
                backend.load(model, device)
            with ChipProgress(job.source.name, quiet=quiet) as bar:
                predict_raster(
                    backend, job.source, job.mask, bands=bands, size=size, overlap=overlap,
                    batch_size=batch_size, prompts=prompts, dst_crs=dst_crs,
                    probabilities_path=job.probabilities, progress=bar,
                )
            click.echo(f"mask: {job.mask}")
            if job.probabilities:
                click.echo(f"probabilities: {job.probabilities}")
        if job.vector is not None:
            with ChipProgress(f"{job.mask.name} polygons", quiet=quiet, unit="window") as bar:
                vectorize_mask(job.mask, job.vector, min_area=min_area, simplify=simplify,
                               progress=bar)
            click.echo(f"polygons: {job.vector}")
        written += 1
    if len(jobs) > 1:
        click.echo(f"{written} predicted, {skipped} already complete")


def _predict_on_cluster(jobs, workers, scheduler, backend_name, options, config_file, model,
                        device, bands, size, overlap, batch_size, prompts, dst_crs, min_area,
                        simplify, overwrite, quiet) -> None:
    from geoseg.distributed import (
        BackendSpec,
        PredictOptions,
        cluster_client,
        predict_on_cluster,
    )

    spec = BackendSpec(backend_name, tuple(options), str(config_file) if config_file else None,
                       model, device)
    spec.create()  # a typo in a backend name or option fails here, before any cluster starts
    pending = []
    for job in jobs:
        if job.complete() and not overwrite:
            click.echo(f"{job.mask}: exists, skipped (--overwrite redoes it)", err=True)
        else:
            pending.append(job)
    settings = PredictOptions(bands=bands, size=size, overlap=overlap, batch_size=batch_size,
                              prompts=prompts, dst_crs=dst_crs, min_area=min_area,
                              simplify=simplify, overwrite=overwrite)
    if not pending:
        click.echo(f"0 predicted, {len(jobs)} already complete")
        return
    with (
        cluster_client(workers, scheduler, announce=lambda line: click.echo(line, err=True))
        as client,
        Progress("predict", quiet=quiet) as bar,
    ):
        def done(job) -> None:
            lines = [f"mask: {job.mask}"]
            if job.probabilities:
                lines.append(f"probabilities: {job.probabilities}")
            if job.vector is not None:
                lines.append(f"polygons: {job.vector}")
            (bar.bar.write if bar.bar is not None else click.echo)("\n".join(lines))

        def failed(failure) -> None:
            # An internal error is a bug: it keeps its traceback, as outside the cluster.
            message = failure.details or f"geoseg: failed: {_describe(failure)}"
            (bar.bar.write if bar.bar is not None else click.echo)(message, file=sys.stderr)

        report = predict_on_cluster(client, pending, spec, settings, on_start=bar.start,
                                    progress=bar.update, on_done=done, on_failure=failed)
    click.echo(f"{len(report.done)} predicted, {len(jobs) - len(pending)} already complete, "
               f"{len(report.failed)} failed")
    if report.failed:
        for failure in report.failed:
            click.echo(f"  failed: {_describe(failure)}", err=True)
        click.echo("re-run the same command to retry only what failed", err=True)
        sys.exit(report.exit_code)


def _describe(failure) -> str:
    """The source and the reason, without naming the source twice."""
    if failure.reason.startswith(str(failure.source)):
        return failure.reason
    return f"{failure.source}: {failure.reason}"
