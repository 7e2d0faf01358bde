"""``geoseg tile``: cut rasters and their labels into a georeferenced chip dataset."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from geoseg.cli.options import (
    Progress,
    bands_option,
    cluster_options,
    dst_crs_option,
    echo_failure,
    fail_fast_option,
    finish_batch,
    overlap_option,
    overwrite_option,
    quiet_option,
    resolution_option,
    seed_option,
    size_option,
)


@click.command(short_help="Cut rasters (and labels) into georeferenced chips.")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder (images/, labels/, tiles.gpkg, dataset.json).",
)
@size_option()
@overlap_option()
@bands_option
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    default=None,
    help="Class raster or vector file (GeoPackage, GeoJSON, Shapefile), any CRS.",
)
@click.option(
    "--label-field",
    default=None,
    metavar="NAME",
    help="Vector field holding class ids or names (default: the first of class_id, class, "
    "label, class_name, classname).",
)
@click.option(
    "--classes",
    type=click.Path(path_type=Path),
    default=None,
    help='Classes JSON: [{"id": 1, "name": "water", "color": "#1f78b4"}, ...].',
)
@click.option(
    "--unlabeled",
    type=click.Choice(["background", "ignore"]),
    default="background",
    show_default=True,
    help="Vector labels: class of pixels outside every polygon.",
)
@click.option(
    "--chip-labels",
    default=None,
    metavar="majority|centre|any:CLASS",
    help="Also give each chip one class from its pixel labels (for chip classifiers): "
    "the most frequent, the centre pixel's, or CLASS when any pixel has it.",
)
@click.option(
    "--class-folders",
    is_flag=True,
    help="SOURCES are folders holding one subfolder of georeferenced patches per class "
    "(EuroSAT style); each chip's class is its folder's name.",
)
@dst_crs_option
@resolution_option
@click.option(
    "--resampling",
    default="bilinear",
    show_default=True,
    type=click.Choice(["nearest", "bilinear", "cubic", "average"]),
    help="Resampling of the imagery with --dst-crs/--resolution (labels: nearest).",
)
@click.option(
    "--min-valid",
    type=float,
    default=0.0,
    show_default=True,
    help="Skip chips with a smaller fraction of valid pixels (0..1).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Fraction of chips (or blocks) drawn for the val split.",
)
@click.option(
    "--split",
    type=click.Choice(["random", "blocks"]),
    default="random",
    show_default=True,
    help="Draw val per chip, or per block of chips (less leakage).",
)
@click.option(
    "--block",
    type=int,
    default=4,
    show_default=True,
    help="With --split blocks: block side in chips.",
)
@seed_option
@cluster_options
@fail_fast_option
@overwrite_option
@quiet_option
def tile(
    sources,
    out_dir,
    size,
    overlap,
    bands,
    labels,
    label_field,
    classes,
    unlabeled,
    chip_labels,
    class_folders,
    dst_crs,
    resolution,
    resampling,
    min_valid,
    val_fraction,
    split,
    block,
    seed,
    workers,
    scheduler,
    fail_fast,
    overwrite,
    quiet,
):
    """Cut SOURCES into chips in OUTPUT, with labels and train/val splits.

    Chips keep the source CRS, dtype, bands, band names and nodata (or take the --dst-crs
    grid). Re-running the same command skips chips that are complete (--overwrite redoes
    them) and redoes incomplete or damaged ones. --workers N (a local
    dask cluster) or --scheduler (an existing one; paths are made absolute here and its
    workers must see them at the same paths) tiles each source as a task; the dataset is
    the same.

    A source that fails (unreadable, other bands, labels that miss it) is reported in one
    line and left out while the others are tiled; the exit code is then 2 (1 for an
    internal error). --fail-fast stops at the first failure instead.

    --chip-labels also writes one class per chip (chip_class in tiles.gpkg, counts in
    dataset.json) for chip classifiers; with --labels of points, add --unlabeled ignore
    so a chip takes the class of the points inside it. --class-folders reads
    DIR/<class>/*.tif instead; the chip size is then the patches' size unless --size
    is given.

    \b
    Examples:
      geoseg tile naip.tif -o chips --bands naip --size 256 --labels lakes.gpkg
      geoseg tile naip.tif -o chips --size 64 --labels lakes.gpkg --chip-labels any:water
      geoseg tile EuroSAT/ -o chips --class-folders
    """
    from geoseg.sources import expand_source
    from geoseg.tiling import TileSettings, tile_sources

    if class_folders:
        from geoseg.tiling import class_folder_sources

        sources, classes, patch_size = class_folder_sources(sources, classes)
        given = click.get_current_context().get_parameter_source
        if given("size") is click.core.ParameterSource.DEFAULT:
            size = patch_size  # one chip per patch
        if given("overlap") is click.core.ParameterSource.DEFAULT:
            overlap = 0
    else:
        # A STAC ItemCollection is one source per item; URLs and band stacks stay as given.
        sources = [source for raw in sources for source in expand_source(raw)]
    if scheduler is not None:
        from geoseg.distributed import absolute_path

        # The workers of an external cluster do not share this working directory.
        sources = [absolute_path(s) for s in sources]
        out_dir, labels, classes = (absolute_path(p) for p in (out_dir, labels, classes))
    settings = TileSettings(
        size=size,
        overlap=overlap,
        bands=bands,
        dst_crs=dst_crs,
        resolution=resolution,
        resampling=resampling,
        labels=labels,
        label_field=label_field,
        classes=classes,
        unlabeled=unlabeled,
        min_valid=min_valid,
        val_fraction=val_fraction,
        split=split,
        block=block,
        seed=seed,
        overwrite=overwrite,
        chip_labels=chip_labels,
        class_folders=class_folders,
    )
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress("tiling", quiet=quiet))
        runner = None
        if workers is not None or scheduler is not None:
            from geoseg.distributed import check_worker_access, cluster_client, tile_runner

            def runner(paths):
                # Started only once every source has been checked.
                client = stack.enter_context(
                    cluster_client(
                        workers, scheduler, announce=lambda line: click.echo(line, err=True)
                    )
                )
                if scheduler is not None:
                    inputs = [*paths, *(p for p in (labels, classes) if p is not None)]
                    check_worker_access(client, inputs, [out_dir / "images"])
                return tile_runner(
                    client, out_dir, settings, progress=bar.update, fail_fast=fail_fast
                )(paths)

        summary = tile_sources(
            list(sources),
            out_dir,
            settings,
            on_start=bar.start,
            progress=bar.update,
            runner=runner,
            on_failure=lambda failure: echo_failure(failure, bar),
            fail_fast=fail_fast,
        )
    if summary.done:
        counts = f"{len(summary.chips)} chips in {summary.out_dir / 'images'}"
        details = []
        if summary.reused:
            details.append(f"{summary.reused} already complete")
        if summary.below_min_valid:
            details.append(f"{summary.below_min_valid} skipped below --min-valid")
        if details:
            counts += f" ({', '.join(details)})"
        click.echo(counts)
        if labels is not None:
            click.echo(f"labels: {summary.out_dir / 'labels'}")
        click.echo(f"footprints: {summary.tiles_file}")
        click.echo(f"dataset: {summary.dataset_file}")
    finish_batch(len(sources), len(summary.done), summary.failed)
