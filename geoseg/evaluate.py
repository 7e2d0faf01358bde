"""Accuracy of a predicted class mask against labels: confusion matrix and per-class scores.

Labels are brought onto the prediction's grid window by window by ``geoseg.labels``
(the reader ``geoseg tile`` uses): a label raster on any grid or CRS with nearest
resampling, a vector file reprojected and rasterized (pixels no label polygon covers
count as class 0, background, or with ``unlabeled="ignore"`` are left out). Pixels that are 255 (ignore) or nodata in either
the prediction or the labels are left out. A class without label pixels has no IoU,
recall or F1 (only false positives could be counted) and stays out of the mean IoU.

A chip prediction (``geoseg.chip_predict``'s GeoPackage) is scored per chip by
``evaluate_chips``: each label feature (a chip of a chip set tiled with
``--chip-labels``/``--class-folders``, or a labelled point or polygon) counts once,
against the predicted chip that holds its representative point; the same ``Evaluation``
counts chips instead of pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import InputFileError, LabelsError
from geoseg.labels import open_labels
from geoseg.raster import check_readable, open_dataset, read_errors
from geoseg.styles import read_class_metadata
from geoseg.windows import block_windows

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Evaluation:
    """A confusion matrix over ``classes``: rows are labels (truth), columns predictions."""

    classes: ClassMap
    confusion: np.ndarray
    #: What the counts count: ``pixel``, or ``chip`` for a chip classifier's result.
    unit: str = "pixel"

    @property
    def pixels(self) -> int:
        return int(self.confusion.sum())

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.confusion).astype(np.float64)

    @property
    def support(self) -> np.ndarray:
        """Label pixels per class."""
        return self.confusion.sum(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted pixels per class."""
        return self.confusion.sum(axis=0)

    def _ratio(self, denominator: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, self.true_positives / denominator, np.nan)

    @property
    def unreferenced(self) -> np.ndarray:
        """True for classes without label pixels: their IoU, recall and F1 are undefined."""
        return self.support == 0

    @property
    def iou(self) -> np.ndarray:
        """Per-class intersection over union; NaN for a class without label pixels."""
        iou = self._ratio(self.support + self.predicted - self.true_positives)
        return np.where(self.unreferenced, np.nan, iou)

    @property
    def precision(self) -> np.ndarray:
        return self._ratio(self.predicted.astype(np.float64))

    @property
    def recall(self) -> np.ndarray:
        return self._ratio(self.support.astype(np.float64))

    @property
    def f1(self) -> np.ndarray:
        f1 = self._ratio((self.support + self.predicted) / 2.0)
        return np.where(self.unreferenced, np.nan, f1)

    @property
    def overall_accuracy(self) -> float:
        return float(self.true_positives.sum() / self.pixels) if self.pixels else math.nan

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the classes that have label pixels."""
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def to_dict(self) -> dict:
        """JSON-ready results; undefined scores are None."""
        rows = []
        for i, info in enumerate(self.classes):
            rows.append(
                {
                    "id": info.id,
                    "name": info.name,
                    "iou": _number(self.iou[i]),
                    "f1": _number(self.f1[i]),
                    "precision": _number(self.precision[i]),
                    "recall": _number(self.recall[i]),
                    f"label_{self.unit}s": int(self.support[i]),
                    f"predicted_{self.unit}s": int(self.predicted[i]),
                }
            )
        return {
            f"{self.unit}s": self.pixels,
            "overall_accuracy": _number(self.overall_accuracy),
            "mean_iou": _number(self.mean_iou),
            "classes_without_labels": [
                c.id for c, u in zip(self.classes, self.unreferenced, strict=True) if u
            ],
            "classes": rows,
            "confusion_matrix": {
                "rows": "labels",
                "columns": "prediction",
                "ids": list(self.classes.ids),
                "counts": self.confusion.tolist(),
            },
        }

    def table(self) -> str:
        """A readable report: per-class scores, overall accuracy and the confusion matrix."""
        names = [f"{c.id} {c.name}" for c in self.classes]
        width = max([len("class"), *map(len, names)])
        header = (
            f"{'class':<{width}}  {'IoU':>6}  {'F1':>6}  {'precision':>9}  {'recall':>6}  "
            f"{'labels':>10}  {'predicted':>10}"
        )
        lines = [header, "-" * len(header)]
        for i, name in enumerate(names):
            lines.append(
                f"{name:<{width}}  {_fmt(self.iou[i]):>6}  {_fmt(self.f1[i]):>6}  "
                f"{_fmt(self.precision[i]):>9}  {_fmt(self.recall[i]):>6}  "
                f"{int(self.support[i]):>10}  {int(self.predicted[i]):>10}"
                + (f"  no label {self.unit}s" if self.unreferenced[i] else "")
            )
        lines.append("")
        lines.append(
            f"overall accuracy {_fmt(self.overall_accuracy)}   mean IoU "
            f"{_fmt(self.mean_iou)}   {self.unit}s {self.pixels}"
        )
        if self.unreferenced.any():
            left_out = ", ".join(n for n, u in zip(names, self.unreferenced, strict=True) if u)
            lines.append(f"mean IoU leaves out the classes without label {self.unit}s: {left_out}")
        lines.append("")
        lines.append("confusion matrix (rows: labels, columns: prediction)")
        cell = max(8, *(len(str(v)) for v in self.confusion.ravel()), *(len(n) for n in names))
        lines.append(" " * width + "".join(f"  {n:>{cell}}" for n in names))
        for i, name in enumerate(names):
            lines.append(f"{name:<{width}}" + "".join(f"  {v:>{cell}}" for v in self.confusion[i]))
        return "\n".join(lines)


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.4f}"


def evaluate_mask(
    pred_path: str | Path,
    labels_path: str | Path,
    *,
    classes: ClassMap | None = None,
    label_field: str | None = None,
    unlabeled: str = "background",
    progress: Progress | None = None,
) -> Evaluation:
    """Compare a uint8 class mask with label raster or vector file, window by window.

    ``classes`` defaults to the classes in the prediction's tags; class names in a vector
    label field are looked up there. Labels are read by ``geoseg.labels.open_labels``
    (``label_field``: the vector attribute holding class ids or names, default the first
    of ``labels.DEFAULT_FIELDS`` present; a file without any marks the one foreground
    class). ``unlabeled``: with vector labels, pixels outside every polygon are class 0
    (``"background"``) or left out (``"ignore"``).
    """
    pred_path = check_readable(pred_path, what="prediction raster")
    counts = np.zeros(256 * 256, dtype=np.int64)
    with open_dataset(pred_path, what="prediction raster") as pred, read_errors(pred_path):
        if pred.count != 1 or pred.dtypes[0] != "uint8":
            raise InputFileError(
                f"{pred_path}: expected a class mask (1 band of uint8 class ids), found "
                f"{pred.count} band(s) of {pred.dtypes[0]}"
            )
        if pred.crs is None:
            raise InputFileError(f"{pred_path}: prediction has no CRS; cannot place labels on it")
        classes = classes or read_class_metadata(pred)
        windows = list(block_windows(pred.width, pred.height))
        labels = open_labels(
            labels_path,
            pred,
            field=label_field,
            classes=classes,
            unlabeled=unlabeled,
            infer_classes=False,
        )
        try:
            for n, window in enumerate(windows, start=1):
                predicted = pred.read(1, window=window)
                label_ids = labels.read(window)
                keep = (predicted != IGNORE_INDEX) & (label_ids != IGNORE_INDEX)
                if pred.nodata is not None and pred.nodata != IGNORE_INDEX:
                    keep &= predicted != pred.nodata
                pairs = label_ids[keep].astype(np.int64) * 256 + predicted[keep]
                counts += np.bincount(pairs, minlength=256 * 256)
                if progress is not None:
                    progress(n, len(windows))
        finally:
            labels.close()
    if not counts.any():
        raise LabelsError(
            f"{labels_path}: no pixel has both a label and a prediction (where the labels "
            f"and {pred_path.name} meet, one of them is always nodata, ignore or unlabeled); "
            f"check both files"
        )
    confusion = counts.reshape(256, 256)
    observed = np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))
    classes = classes.with_ids(observed.tolist()) if classes else ClassMap.from_ids(observed)
    ids = np.array(classes.ids)
    return Evaluation(classes, confusion[np.ix_(ids, ids)])


def evaluate_chips(
    pred_path: str | Path,
    labels_path: str | Path,
    *,
    classes: ClassMap | None = None,
    label_field: str | None = None,
) -> Evaluation:
    """Score a chip prediction (GeoPackage of ``geoseg.chip_predict``) against chip labels.

    ``labels_path``: a chip set folder or its ``tiles.gpkg`` (the ``chip_class`` of each
    chip), or a vector file of labelled points or polygons (``label_field``: class ids or
    names, default the first of ``labels.DEFAULT_FIELDS``). Each label counts once, against
    the predicted chip holding its representative point (the one whose centre is nearest
    where chips overlap); labels outside every predicted chip are left out.
    """
    import geopandas as gpd
    import shapely

    from geoseg.chip_predict import CHIPS_LAYER, read_chip_classes
    from geoseg.dataset import DATASET_FILE, TILES_FILE, TILES_LAYER
    from geoseg.labels import _class_values, is_vector, label_layer

    pred_path = check_readable(pred_path, what="chip prediction")
    classes = classes or read_chip_classes(pred_path)
    if classes is None:
        raise InputFileError(
            f"{pred_path}: not a chip prediction (no {CHIPS_LAYER!r} layer with classes); give "
            "the <stem>.gpkg geoseg predict wrote for a chip backend"
        )
    labels_path = Path(labels_path)
    layer, field = None, label_field
    if labels_path.is_dir() and (labels_path / DATASET_FILE).is_file():
        labels_path = labels_path / TILES_FILE
    if not is_vector(labels_path):
        raise LabelsError(
            f"{labels_path}: a chip prediction is scored against chip labels: a chip set tiled "
            "with --chip-labels or --class-folders, or points/polygons with a class field; "
            "score a class raster against a pixel prediction instead"
        )
    check_readable(labels_path, what="labels")
    chips = gpd.read_file(pred_path, layer=CHIPS_LAYER, engine="pyogrio")
    if labels_path.suffix.lower() == ".gpkg" and label_layer(labels_path) == TILES_LAYER:
        layer = TILES_LAYER
    frame = gpd.read_file(labels_path, layer=layer or label_layer(labels_path), engine="pyogrio")
    if layer == TILES_LAYER and field is None:
        if "chip_class" not in frame.columns:
            raise LabelsError(
                f"{labels_path}: the chips have no class of their own; tile with --chip-labels "
                "(or --class-folders) to score a chip prediction"
            )
        frame = frame[frame["chip_class"].notna() & (frame["chip_class"] >= 0)]
        field = "chip_class"
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if frame.crs is None:
        raise LabelsError(f"{labels_path}: labels have no CRS; assign one (ogr2ogr -a_srs)")
    if frame.empty:
        raise LabelsError(f"{labels_path}: holds no labelled chips, points or polygons")
    frame = frame.to_crs(chips.crs)
    _, label_ids = _class_values(labels_path, frame, field, classes, infer_classes=False)
    points = shapely.point_on_surface(frame.geometry.values)
    centres = shapely.centroid(chips.geometry.values)  # boxes: exact in any CRS
    hits_label, hits_chip = chips.sindex.query(points, predicate="within")
    # Where chips overlap, a label goes to the chip whose centre is nearest.
    distance = shapely.distance(points[hits_label], centres[hits_chip])
    order = np.lexsort((distance, hits_label))
    first = np.unique(hits_label[order], return_index=True)[1]
    label_index, chip_index = hits_label[order][first], hits_chip[order][first]
    predicted = chips["class_id"].to_numpy()[chip_index].astype(np.int64)
    truth = label_ids[label_index].astype(np.int64)
    keep = truth != IGNORE_INDEX
    if not keep.any():
        raise LabelsError(
            f"{labels_path}: no label lies in a predicted chip of {pred_path.name}; check that "
            "both cover the same area"
        )
    counts = np.bincount(truth[keep] * 256 + predicted[keep], minlength=256 * 256)
    confusion = counts.reshape(256, 256)
    observed = np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))
    classes = classes.with_ids(observed.tolist())
    ids = np.array(classes.ids)
    return Evaluation(classes, confusion[np.ix_(ids, ids)], unit="chip")
