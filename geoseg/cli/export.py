"""``geoseg export``: a trained model as one ONNX file for ONNX Runtime and QGIS Deepness."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import echo_skipped, overwrite_option


@click.command(short_help="Export a trained model to ONNX (ONNX Runtime, QGIS Deepness).")
@click.option(
    "--model",
    required=True,
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="Model folder written by geoseg train.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="ONNX file to write (.onnx).",
)
@click.option(
    "--size",
    type=click.IntRange(min=16),
    default=512,
    show_default=True,
    help="Chip size in pixels: the graph's fixed height and width (a multiple of 16).",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: 18).")
@click.option(
    "--dynamic-batch",
    is_flag=True,
    help="A free batch dimension (default: batches of one chip, as Deepness runs).",
)
@click.option(
    "--fp16",
    is_flag=True,
    help="Half-precision weights (about half the file size); input and output stay float32.",
)
@click.option(
    "--backend",
    "backend_name",
    default=None,
    metavar="NAME",
    help="Backend of a model folder without geoseg_model.json.",
)
@overwrite_option
def export(model, output, size, opset, dynamic_batch, fp16, backend_name, overwrite):
    """Export the model folder MODEL (from geoseg train) to one ONNX file.

    The graph reads raw pixel values of the model's bands (input 'image', N x bands x
    SIZE x SIZE, float32; the normalisation is inside) and gives class probabilities
    (output 'probabilities', N x classes x SIZE x SIZE). The file carries the metadata
    of the QGIS Deepness plugin (class names, tile size and overlap, resolution) and
    geoseg's model manifest, so `geoseg predict --backend onnx --model FILE.onnx` and
    Deepness both run it without further settings. A complete OUTPUT made with the same
    settings is skipped (--overwrite redoes it).

    \b
    Example:
      geoseg export --model model -o model.onnx --size 512
    """
    from geoseg.atomic import check_output_folder
    from geoseg.export import DEFAULT_OPSET, ExportSettings, export_complete, export_model

    settings = ExportSettings(
        size=size, opset=opset or DEFAULT_OPSET, dynamic_batch=dynamic_batch, fp16=fp16
    )
    check_output_folder(output.parent)
    if not overwrite and export_complete(output, settings):
        echo_skipped(output)
        return
    export_model(model, output, settings, backend_name=backend_name)
    megabytes = output.stat().st_size / 1e6
    click.echo(f"onnx: {output} ({megabytes:.1f} MB, checked)")
