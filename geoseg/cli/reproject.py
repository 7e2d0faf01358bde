"""``geoseg reproject``: reproject a raster (windowed) or a vector file."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import (
    Progress,
    echo_skipped,
    overwrite_option,
    quiet_option,
    resolution_option,
)


@click.command(short_help="Reproject a raster or a vector file.")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Output file (.tif for rasters; .gpkg, .geojson, .shp, .fgb for vectors).",
)
@click.option("--dst-crs", required=True, metavar="CRS", help="Target CRS, e.g. EPSG:32718.")
@resolution_option
@click.option(
    "--resampling",
    default="nearest",
    show_default=True,
    type=click.Choice(["nearest", "bilinear", "cubic", "average"]),
    help="Raster resampling; keep nearest for class masks.",
)
@overwrite_option
@quiet_option
def reproject(src, dst, dst_crs, resolution, resampling, overwrite, quiet):
    """Reproject SRC to --dst-crs, window by window for rasters.

    Rasters are written tiled and compressed; vector files (chosen by extension) are
    reprojected layer by layer. A complete OUTPUT in --dst-crs is skipped (--overwrite
    redoes it); an incomplete one is redone.
    """
    from geoseg.reproject import reproject as run
    from geoseg.reproject import reproject_complete

    if not overwrite and reproject_complete(src, dst, dst_crs):
        echo_skipped(dst)
        return
    with Progress("reprojecting", quiet=quiet, unit="block") as bar:
        out = run(
            src,
            dst,
            dst_crs,
            resolution=resolution,
            resampling=resampling,
            overwrite=True,
            on_start=bar.start,
            progress=bar.update,
        )
    click.echo(str(out))
