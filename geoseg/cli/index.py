"""``geoseg index``: a spectral index of a raster as a float32 GeoTIFF."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import (
    Progress,
    bands_option,
    echo_skipped,
    hsv_options,
    hsv_params,
    index_option,
    overwrite_option,
    quiet_option,
)


@click.command(short_help="Write a spectral index (NDWI, MNDWI, NDVI, HSV) as a GeoTIFF.")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output GeoTIFF (float32, NaN nodata, on the source grid).",
)
@index_option("ndwi (green, nir), mndwi (green, swir1), ndvi (nir, red), hsv (red, green, blue).")
@bands_option
@hsv_options
@overwrite_option
@quiet_option
def index(src, out, index, bands, hue, saturation, value, overwrite, quiet):
    """Compute a spectral INDEX of SRC into OUTPUT, window by window.

    Bands are found by name, so name them with --bands when the file does not (NAIP files
    usually do not: --bands naip). Normalised differences lie in -1..1; hsv is a 0..1
    score of blue-to-cyan pixels. Nodata, masked pixels and 0/0 become NaN. A complete
    OUTPUT of the same index is skipped (--overwrite redoes it); an incomplete one is
    redone.

    \b
    Examples:
      geoseg index naip.tif -o ndwi.tif --bands naip
      geoseg index landsat.tif -o mndwi.tif --index mndwi --bands swir1=1,nir=2,red=3,green=4
    """
    from geoseg.indices import index_complete, required_bands, write_index
    from geoseg.raster import open_raster

    required_bands(index)
    params = hsv_params(index, hue, saturation, value)
    with open_raster(src, bands) as source:
        if not overwrite and index_complete(source, index, out):
            echo_skipped(out)
            return
        with Progress(index, quiet=quiet, unit="window") as bar:
            write_index(source, index, out, on_start=bar.start, progress=bar.update, **params)
    click.echo(f"{index.lower()}: {out}")
