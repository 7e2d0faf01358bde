"""``geoseg prompts``: control points and boxes for SAM from a spectral index."""

from __future__ import annotations

import time
from pathlib import Path

import click

from geoseg.cli.options import (
    Progress,
    bands_option,
    echo_skipped,
    hsv_options,
    hsv_params,
    index_option,
    overlap_option,
    overwrite_option,
    quiet_option,
    seed_option,
    size_option,
)


@click.command(short_help="Draw SAM prompts (points, boxes) from a water index.")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Prompts file: .gpkg (layers points, boxes; raster CRS) or .geojson (EPSG:4326).",
)
@index_option(
    "Water method: auto follows the bands (the multi-index rule with SWIR, ndwi without, "
    "hsv for RGB); or one index (mndwi for turbid rivers with SWIR).",
    water_methods=True,
)
@click.option(
    "--threshold",
    default="auto",
    show_default=True,
    metavar="auto|otsu|VALUE",
    help="Threshold of a single index: auto (Otsu's where the raster's histogram is "
    "bimodal, else 0), otsu, or a number. Computed once over the whole raster.",
)
@click.option(
    "--min-size",
    default="200",
    show_default=True,
    metavar="PX|M2",
    help="Drop water components smaller than this: pixels, or m2 (e.g. 5000m2).",
)
@click.option(
    "--fill-holes",
    default="50",
    show_default=True,
    metavar="PX|M2",
    help="Fill holes in water smaller than this: pixels, or m2.",
)
@click.option(
    "--opening",
    type=int,
    default=0,
    show_default=True,
    metavar="PX",
    help="Morphological opening radius (removes thin spurs).",
)
@click.option(
    "--closing",
    type=int,
    default=0,
    show_default=True,
    metavar="PX",
    help="Morphological closing radius (bridges narrow gaps).",
)
@click.option(
    "--erode",
    type=int,
    default=3,
    show_default=True,
    metavar="PX",
    help="Keep positive points farther than this from the bank.",
)
@click.option(
    "--points",
    type=int,
    default=3,
    show_default=True,
    help="Positive points per water component in each chip.",
)
@click.option(
    "--negative",
    type=int,
    default=0,
    show_default=True,
    help="Negative points per chip, away from water.",
)
@click.option(
    "--negative-buffer",
    type=int,
    default=10,
    show_default=True,
    metavar="PX",
    help="Negative points stay farther than this from water.",
)
@click.option(
    "--per",
    type=click.Choice(["component", "chip"]),
    default="component",
    show_default=True,
    help="Points and boxes per water component or per chip.",
)
@click.option(
    "--boxes/--no-boxes",
    default=True,
    show_default=True,
    help="Write a box around each water component.",
)
@click.option(
    "--perturb",
    type=int,
    default=10,
    show_default=True,
    metavar="PX",
    help="Move box edges randomly by up to this many pixels (0: exact boxes).",
)
@size_option()
@overlap_option()
@seed_option
@bands_option
@hsv_options
@click.option(
    "--preview",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a PNG: image, mask outline, points and boxes.",
)
@overwrite_option
@quiet_option
def prompts(
    src,
    out,
    index,
    threshold,
    min_size,
    fill_holes,
    opening,
    closing,
    erode,
    points,
    negative,
    negative_buffer,
    per,
    boxes,
    perturb,
    size,
    overlap,
    seed,
    bands,
    hue,
    saturation,
    value,
    preview,
    overwrite,
    quiet,
):
    """Draw prompts for SRC from a water index and write them to OUTPUT.

    The water method (--index, --threshold) is fixed once for the whole raster, its mask
    cleaned (small components removed, small holes filled), then each chip of the
    --size/--overlap grid gets positive points inside confident water eroded by --erode,
    optional negative points on confident dry land, and boxes.
    Open OUTPUT in QGIS to check or edit the prompts, then give it to
    geoseg predict --prompts. A complete OUTPUT (and --preview) is skipped (--overwrite
    redoes it); an incomplete one is redone.

    \b
    Examples:
      geoseg prompts naip.tif -o prompts.gpkg --bands naip --preview prompts.png
      geoseg prompts landsat.tif -o prompts.gpkg --index mndwi --min-size 30 \\
          --bands swir1=1,nir=2,red=3,green=4
    """
    from geoseg.atomic import check_output_folder, output_complete
    from geoseg.errors import OutputError
    from geoseg.prompts import (
        PromptSettings,
        auto_prompts,
        check_prompts_path,
        prompt_features,
        write_prompts,
    )
    from geoseg.raster import open_raster
    from geoseg.windows import tile_grid

    started = time.perf_counter()
    check_prompts_path(out)
    if preview is not None and (preview.is_dir() or preview.suffix.lower() != ".png"):
        raise OutputError(f"{preview}: --preview must be a file name ending in .png")
    for path in (out, preview):
        if path is not None:
            check_output_folder(path.parent)
    if not overwrite and output_complete(out) and (preview is None or output_complete(preview)):
        echo_skipped(out)
        return
    settings = PromptSettings(
        index=index,
        threshold=threshold,
        min_size=_area(min_size),
        fill_holes=_area(fill_holes),
        opening=opening,
        closing=closing,
        erode=erode,
        points=points,
        negative=negative,
        negative_buffer=negative_buffer,
        boxes=boxes,
        perturb=perturb,
        per=per,
        seed=seed,
        index_params=hsv_params(index, hue, saturation, value),
    )
    with open_raster(src, bands) as source:
        auto = auto_prompts(source, settings)
        grid = tile_grid(source, size, overlap)
        with Progress("prompts", quiet=quiet) as bar:
            bar.start(len(grid))
            features = prompt_features(
                source, settings, size=size, overlap=overlap, prompts=auto, progress=bar.update
            )
        write_prompts(out, features)
        if preview is not None:
            from geoseg.preview import prompts_preview

            prompts_preview(preview, source, features, auto=auto, grid=grid)
    click.echo(
        f"{auto.rule.describe()}; {features.chips} chips; "
        f"{features.positive} positive and {features.negative} negative points, "
        f"{len(features.boxes)} boxes -> {out} ({time.perf_counter() - started:.1f} s)"
    )
    if preview is not None:
        click.echo(f"preview: {preview}")


def _area(text: str) -> int | str:
    """Whole pixels as int, anything else (m2) as text for PromptSettings to convert."""
    return int(text) if text.strip().isdigit() else text
