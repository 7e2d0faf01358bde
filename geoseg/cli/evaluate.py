"""``geoseg evaluate``: per-class accuracy of a predicted mask against labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geoseg.cli.options import echo_skipped, overwrite_option, quiet_option
from geoseg.cli.predict import ChipProgress


@click.command(short_help="Score a predicted mask against label rasters or polygons.")
@click.argument("prediction", type=click.Path(path_type=Path))
@click.argument("labels", type=click.Path(path_type=Path))
@click.option(
    "--classes",
    type=click.Path(path_type=Path),
    default=None,
    help="Classes JSON (default: the classes in the prediction's tags).",
)
@click.option(
    "--label-field",
    default=None,
    metavar="NAME",
    help="Vector labels: field of class ids or names (default: the first of class_id, "
    "class, label, class_name, classname).",
)
@click.option(
    "--unlabeled",
    type=click.Choice(["background", "ignore"]),
    default="background",
    show_default=True,
    help="Vector labels: pixels outside every polygon are class 0 "
    "(background) or left out of the scores (ignore: for sparse hand-drawn labels).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the results as JSON (a complete one is skipped: see --overwrite).",
)
@overwrite_option
@quiet_option
def evaluate(prediction, labels, classes, label_field, unlabeled, json_path, overwrite, quiet):
    """Per-class IoU, F1, precision, recall, overall accuracy and confusion matrix.

    LABELS is a class raster (any grid or CRS; nearest resampling onto the prediction)
    or a vector file of labelled polygons (rasterized; uncovered pixels count as class
    0, or with --unlabeled ignore are left out). 255 and nodata in either file are left
    out. Labels that do not overlap the prediction are an error. A class without label
    pixels is marked in the table and left out of the mean IoU. With --json, a complete
    JSON file is skipped, evaluation and all (--overwrite redoes it); an incomplete one
    is redone.

    \b
    A chip prediction (the <stem>.gpkg of a chip backend such as hf-classifier) is
    scored per chip against chip labels: a chip set tiled with --chip-labels or
    --class-folders, or points/polygons with a class field (each counts once, in the chip
    holding it).

    \b
    Examples:
      geoseg evaluate water.tif lakes.gpkg --json scores.json
      geoseg evaluate chips_pred/scene.gpkg chips/ --json chip_scores.json
    """
    from geoseg.atomic import atomic_output, check_output_folder, output_complete
    from geoseg.classes import ClassMap
    from geoseg.evaluate import evaluate_mask

    if json_path is not None:
        check_output_folder(json_path.parent)
        if not overwrite and output_complete(json_path):
            echo_skipped(json_path)
            return
    class_map = ClassMap.read(classes) if classes else None
    if prediction.suffix.lower() == ".gpkg":
        from geoseg.evaluate import evaluate_chips

        result = evaluate_chips(prediction, labels, classes=class_map, label_field=label_field)
    else:
        _check_pixel_labels(labels)
        result = None
    with ChipProgress(prediction.name, quiet=quiet, unit="window") as bar:
        result = result or evaluate_mask(
            prediction,
            labels,
            classes=class_map,
            label_field=label_field,
            unlabeled=unlabeled,
            progress=bar,
        )
    click.echo(result.table())
    if json_path is not None:
        report = {"prediction": str(prediction), "labels": str(labels), **result.to_dict()}
        with atomic_output(json_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"json: {json_path}")


def _check_pixel_labels(labels: Path) -> None:
    """A chip set's chip labels cannot score a pixel mask: one line instead of a mix-up."""
    from geoseg.dataset import DATASET_FILE
    from geoseg.errors import LabelsError

    if labels.is_dir() and (labels / DATASET_FILE).is_file():
        raise LabelsError(
            f"{labels}: a chip set scores a chip prediction (the .gpkg of a chip backend such as "
            "hf-classifier); score a class mask against a label raster or polygons"
        )
