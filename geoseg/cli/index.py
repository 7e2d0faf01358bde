"""``geoseg index``: a spectral index of a raster as a float32 GeoTIFF."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import Progress, bands_option, quiet_option
from geoseg.indices import HSV_DEFAULTS, INDICES


def hsv_options(f):
    """--hue, --saturation and --value for the HSV rule."""
    for name, unit in (("value", "0..1"), ("saturation", "0..1"), ("hue", "degrees")):
        low, high = HSV_DEFAULTS[name]
        f = click.option(
            f"--{name}",
            default=None,
            metavar="LOW,HIGH",
            help=f"--index hsv: {name} range in {unit} (default {low:g},{high:g}).",
        )(f)
    return f


def hsv_params(index: str, hue: str | None, saturation: str | None, value: str | None) -> dict:
    """Index parameters from the HSV options; other indices take none."""
    given = {k: v for k, v in (("hue", hue), ("saturation", saturation), ("value", value)) if v}
    if given and index.lower() != "hsv":
        from geoseg.errors import OptionError

        raise OptionError(f"--{next(iter(given))} applies to --index hsv only, not {index}")
    return given


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
@click.option(
    "--index",
    "index",
    default="ndwi",
    show_default=True,
    metavar="|".join(INDICES),
    help="ndwi (green, nir), mndwi (green, swir1), ndvi (nir, red), hsv (red, green, blue).",
)
@bands_option
@hsv_options
@quiet_option
def index(src, out, index, bands, hue, saturation, value, quiet):
    """Compute a spectral INDEX of SRC into OUTPUT, window by window.

    Bands are found by name, so name them with --bands when the file does not (NAIP files
    usually do not: --bands naip). Normalised differences lie in -1..1; hsv is a 0..1
    score of blue-to-cyan pixels. Nodata, masked pixels and 0/0 become NaN.

    \b
    Examples:
      geoseg index naip.tif -o ndwi.tif --bands naip
      geoseg index landsat.tif -o mndwi.tif --index mndwi --bands swir1=1,nir=2,red=3,green=4
    """
    from geoseg.indices import required_bands, write_index
    from geoseg.raster import open_raster

    required_bands(index)
    params = hsv_params(index, hue, saturation, value)
    with open_raster(src, bands) as source, Progress(index, quiet=quiet, unit="window") as bar:
        write_index(source, index, out, on_start=bar.start, progress=bar.update, **params)
    click.echo(f"{index.lower()}: {out}")
