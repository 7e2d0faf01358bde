"""``geoseg vectorize``: polygons per class from a class mask, in a GeoPackage."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import echo_skipped, overwrite_option, quiet_option
from geoseg.cli.predict import ChipProgress


@click.command(short_help="Turn a class mask into polygons per class (GeoPackage).")
@click.argument("mask", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="GeoPackage to write (default: <mask stem>.gpkg beside the mask).",
)
@click.option(
    "--min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Drop polygons smaller than this many square metres.",
)
@click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Simplification tolerance in metres (neighbouring polygons stay gap-free).",
)
@click.option(
    "--include-background",
    is_flag=True,
    help="Also vectorize class 0 when it is the background class.",
)
@click.option(
    "--classes",
    type=click.Path(path_type=Path),
    default=None,
    help="Classes JSON naming the ids (default: the names in the mask's tags).",
)
@overwrite_option
@quiet_option
def vectorize(mask, output, min_area, simplify, include_background, classes, overwrite, quiet):
    """Write one polygon per connected region of each class of MASK to layer 'classes'.

    Attributes: class_id, class_name, area_m2, perimeter_m (metres also for a
    geographic CRS). The ignore value 255 is never vectorized. A complete OUTPUT is
    skipped (--overwrite redoes it); an incomplete one is redone.

    \b
    Example:
      geoseg vectorize water.tif -o lakes.gpkg --min-area 500 --simplify 2.5
    """
    from geoseg.atomic import check_output_folder, output_complete
    from geoseg.classes import ClassMap
    from geoseg.raster import check_readable
    from geoseg.vectorize import vectorize_mask

    check_readable(mask, what="mask raster")
    output = output or mask.with_suffix(".gpkg")
    check_output_folder(output.parent)
    if not overwrite and output_complete(output):
        echo_skipped(output)
        return
    class_map = ClassMap.read(classes) if classes else None
    with ChipProgress(mask.name, quiet=quiet, unit="window") as bar:
        vectorize_mask(
            mask,
            output,
            classes=class_map,
            min_area=min_area,
            simplify=simplify,
            include_background=include_background,
            progress=bar,
        )
    click.echo(f"polygons: {output}")
