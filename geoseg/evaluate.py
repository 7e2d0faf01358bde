"""Accuracy of a predicted class mask against labels: confusion matrix and per-class scores.

Labels are brought onto the prediction's grid window by window: a label raster on any
grid or CRS through a warped VRT with nearest resampling, a vector file reprojected and
rasterized (pixels no label polygon covers count as class 0, background, or with
``unlabeled="ignore"`` are left out). Pixels that are 255 (ignore) or nodata in either
the prediction or the labels are left out. A class without label pixels has no IoU,
recall or F1 (only false positives could be counted) and stays out of the mean IoU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import InputFileError, LabelsError, OptionError
from geoseg.labels import label_layer, warn_if_nodata_is_class
from geoseg.raster import check_complete, check_readable, open_dataset, read_errors
from geoseg.styles import read_class_metadata

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".parquet")
#: Label fields tried, in order, when none is named.
LABEL_FIELDS = ("class_id", "class", "label", "class_name", "classname", "name")
WINDOW = 1024
#: What pixels outside every label polygon are: class 0, or left out of the scores.
UNLABELED = ("background", "ignore")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Evaluation:
    """A confusion matrix over ``classes``: rows are labels (truth), columns predictions."""

    classes: ClassMap
    confusion: np.ndarray

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
                    "label_pixels": int(self.support[i]),
                    "predicted_pixels": int(self.predicted[i]),
                }
            )
        return {
            "pixels": self.pixels,
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
                + ("  no label pixels" if self.unreferenced[i] else "")
            )
        lines.append("")
        lines.append(
            f"overall accuracy {_fmt(self.overall_accuracy)}   mean IoU "
            f"{_fmt(self.mean_iou)}   pixels {self.pixels}"
        )
        if self.unreferenced.any():
            left_out = ", ".join(n for n, u in zip(names, self.unreferenced, strict=True) if u)
            lines.append(f"mean IoU leaves out the classes without label pixels: {left_out}")
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
    label field are looked up there. ``label_field`` names the vector attribute holding
    class ids or names (default: the first of ``LABEL_FIELDS`` present; a file without
    any marks class 1 for a binary prediction). ``unlabeled``: with vector labels, pixels
    outside every polygon are class 0 (``"background"``) or left out (``"ignore"``).
    """
    if unlabeled not in UNLABELED:
        raise OptionError(f"--unlabeled must be background or ignore, got {unlabeled!r}")
    pred_path = check_readable(pred_path, what="prediction raster")
    labels_path = Path(labels_path)
    if not labels_path.exists():
        raise InputFileError(f"{labels_path}: no such labels file; check the path")
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
        windows = list(_windows(pred.width, pred.height))
        reader = (
            _vector_labels(labels_path, pred, classes, label_field, unlabeled)
            if _is_vector(labels_path)
            else _raster_labels(labels_path, pred, classes)
        )
        with reader as read_labels:
            for n, window in enumerate(windows, start=1):
                predicted = pred.read(1, window=window)
                labels = read_labels(window)
                keep = (predicted != IGNORE_INDEX) & (labels >= 0) & (labels < IGNORE_INDEX)
                if pred.nodata is not None and pred.nodata != IGNORE_INDEX:
                    keep &= predicted != pred.nodata
                pairs = labels[keep].astype(np.int64) * 256 + predicted[keep]
                counts += np.bincount(pairs, minlength=256 * 256)
                if progress is not None:
                    progress(n, len(windows))
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


def _windows(width: int, height: int) -> Iterator[Window]:
    for row in range(0, height, WINDOW):
        for col in range(0, width, WINDOW):
            yield Window(col, row, min(WINDOW, width - col), min(WINDOW, height - row))


def _is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES or path.is_dir()


class _raster_labels:
    """Reads label windows on the prediction grid (context manager yielding a reader)."""

    def __init__(self, path: Path, pred, classes: ClassMap | None) -> None:
        self.path, self.pred, self.classes = path, pred, classes

    def __enter__(self) -> Callable[[Window], np.ndarray]:
        try:
            self.file = rasterio.open(self.path)
        except RasterioIOError:
            raise InputFileError(
                f"{self.path}: not a raster or vector labels file geoseg can read; give a "
                f"GeoTIFF of class ids or a GeoPackage/GeoJSON of labelled polygons"
            ) from None
        try:
            check_complete(self.file, self.path)
        except InputFileError:
            self.file.close()
            raise
        src, pred = self.file, self.pred
        if src.count != 1 or np.dtype(src.dtypes[0]).kind not in "iu":
            src.close()
            raise LabelsError(
                f"{self.path}: expected labels as 1 band of integer class ids, found "
                f"{src.count} band(s) of {src.dtypes[0]}; give a class raster or a vector file"
            )
        if src.crs is None:
            src.close()
            raise LabelsError(f"{self.path}: labels have no CRS; cannot place them on {pred.name}")
        nodata = src.nodata
        warn_if_nodata_is_class(self.path, nodata, self.classes or read_class_metadata(src))
        same_grid = (
            src.crs == pred.crs
            and src.transform.almost_equals(pred.transform)
            and (src.width, src.height) == (pred.width, pred.height)
        )
        self.dataset = src
        if not same_grid:
            self.dataset = WarpedVRT(
                src,
                crs=pred.crs,
                transform=pred.transform,
                width=pred.width,
                height=pred.height,
                resampling=Resampling.nearest,
                src_nodata=nodata,
                nodata=nodata if nodata is not None else IGNORE_INDEX,
            )
            nodata = self.dataset.nodata
        if not _overlaps(src, pred):
            self.close()
            raise LabelsError(f"{self.path}: labels do not overlap the prediction {pred.name}")

        def read(window: Window) -> np.ndarray:
            with read_errors(self.path):
                labels = self.dataset.read(1, window=window).astype(np.int64)
            if nodata is not None:
                labels[labels == nodata] = -1
            return labels

        return read

    def close(self) -> None:
        if self.dataset is not self.file:
            self.dataset.close()
        self.file.close()

    def __exit__(self, *exc_info) -> None:
        self.close()


def _overlaps(src, pred) -> bool:
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(src.crs, pred.crs, *src.bounds)
    b = pred.bounds
    return left < b.right and right > b.left and bottom < b.top and top > b.bottom


class _vector_labels:
    """Rasterizes labelled polygons window by window onto the prediction grid."""

    def __init__(
        self,
        path: Path,
        pred,
        classes: ClassMap | None,
        field: str | None,
        unlabeled: str = "background",
    ) -> None:
        self.path, self.pred, self.classes, self.field = path, pred, classes, field
        # -1 marks pixels left out of the scores, like label nodata.
        self.fill = 0 if unlabeled == "background" else -1

    def __enter__(self) -> Callable[[Window], np.ndarray]:
        import geopandas as gpd

        layer = label_layer(self.path)
        if layer is None:
            raise LabelsError(f"{self.path}: holds no layer of label polygons")
        try:
            frame = gpd.read_file(self.path, layer=layer)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise InputFileError(
                f"{self.path}: not a vector file geoseg can read ({exc})"
            ) from None
        if frame.crs is None:
            raise LabelsError(f"{self.path}: labels have no CRS; assign one in QGIS or ogr2ogr")
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
        if frame.empty:
            raise LabelsError(
                f"{self.path}: holds no label polygons (layer {layer!r} is empty); give the "
                f"labels drawn for {self.pred.name}"
            )
        frame = frame.to_crs(self.pred.crs)
        pred = self.pred
        if not frame.sindex.query(_box(pred.bounds)).size:
            raise LabelsError(
                f"{self.path}: labels do not overlap the prediction {pred.name}; check that "
                f"they cover the same area and carry the right CRS"
            )
        values = self._class_ids(frame)
        self.geoms, self.values = frame.geometry.to_numpy(), values
        self.index = frame.sindex
        fill = self.fill

        def read(window: Window) -> np.ndarray:
            shape = (int(window.height), int(window.width))
            hits = self.index.query(_box(window_bounds(window, pred.transform)))
            if len(hits) == 0:
                return np.full(shape, fill, np.int64)
            burned = rasterize(
                zip(self.geoms[hits], self.values[hits], strict=True),
                out_shape=shape,
                transform=window_transform(window, pred.transform),
                fill=fill,
                dtype="int32",
            )
            return burned.astype(np.int64)

        return read

    def _class_ids(self, frame) -> np.ndarray:
        field = self.field
        if field is None:
            field = next((f for f in LABEL_FIELDS if f in frame.columns), None)
        elif field not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry") or "none"
            raise LabelsError(
                f"{self.path}: no field {field!r} (fields: {fields}); pick one with --label-field"
            )
        if field is None:
            if self.classes is not None and len(self.classes) == 2:
                return np.full(len(frame), self.classes.ids[1], dtype=np.int64)
            raise LabelsError(
                f"{self.path}: no label field found (tried {', '.join(LABEL_FIELDS)}); name "
                f"the field holding class ids or names with --label-field"
            )
        column = frame[field]
        if column.dtype.kind in "iuf":
            if column.isna().any():
                raise LabelsError(f"{self.path}: field {field!r} has empty values")
            values = column.to_numpy().astype(np.int64)
            if ((values < 0) | (values > IGNORE_INDEX)).any():
                raise LabelsError(f"{self.path}: field {field!r} holds values outside 0..255")
            return values
        if self.classes is None:
            raise LabelsError(
                f"{self.path}: field {field!r} holds class names but the prediction carries no "
                f"classes; give them with --classes CLASSES.json"
            )
        return np.array(
            [self.classes.id_of(str(v), source=str(self.path)) for v in column], dtype=np.int64
        )

    def __exit__(self, *exc_info) -> None:
        pass


def _box(bounds):
    import shapely

    return shapely.box(*bounds)
