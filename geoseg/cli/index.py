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
@click.option(
    "--reflectance-scale",
    type=float,
    default=None,
    help="Reflectance = value x scale + offset, for rasters whose metadata does not say "
    "(e.g. Landsat C2 L2: 0.0000275).",
)
@click.option(
    "--reflectance-offset",
    type=float,
    default=None,
    help="The offset of --reflectance-scale (Landsat C2 L2: -0.2; Sentinel-2 L2A from "
    "baseline 04.00: -0.1).",
)
@overwrite_option
@quiet_option
def index(
    src, out, index, bands, hue, saturation, value, reflectance_scale, reflectance_offset,
    overwrite, quiet,
):  # fmt: skip
    """Compute a spectral INDEX of SRC into OUTPUT, window by window.

    Bands are found by name, so name them with --bands when the file does not (NAIP files
    usually do not: --bands naip). Normalised differences lie in -1..1 and are computed on
    reflectance: 16-bit rasters are read as reflectance x 10000 with Sentinel-2's offset
    tags applied, GDAL scale/offset metadata wins, --reflectance-scale/-offset override
    both (the same reading as the spectral backend's). hsv is a 0..1 score of blue-to-cyan
    pixels. Nodata, masked pixels and 0/0 become NaN. A complete
    OUTPUT of the same index is skipped (--overwrite redoes it); an incomplete one is
    redone.

    \b
    Examples:
      geoseg index naip.tif -o ndwi.tif --bands naip
      geoseg index landsat.tif -o mndwi.tif --index mndwi --bands swir1=1,nir=2,red=3,green=4
    """
    from geoseg.indices import index_complete, required_bands, write_index
    from geoseg.raster import open_raster
    from geoseg.water import raster_reflectance

    required_bands(index)
    params = hsv_params(index, hue, saturation, value)
    with open_raster(src, bands) as source:
        if not overwrite and index_complete(source, index, out):
            echo_skipped(out)
            return
        reflectance = raster_reflectance(source, scale=reflectance_scale, offset=reflectance_offset)
        with Progress(index, quiet=quiet, unit="window") as bar:
            write_index(
                source, index, out, on_start=bar.start, progress=bar.update,
                reflectance=reflectance, **params,
            )  # fmt: skip
    click.echo(f"{index.lower()}: {out}")
