"""Labels brought onto a raster's grid, chip by chip or window by window.

A label source is a class raster (any CRS and resolution: warped onto the grid with
nearest resampling) or a vector file (GeoPackage, GeoJSON, Shapefile, any CRS:
reprojected, then rasterized; pixels outside every polygon are class 0, background, or
with ``unlabeled="ignore"`` 255). Either way ``for_tile(tile)`` and ``read(window)``
return uint8 class ids on exactly those pixels of the grid, 255 where nothing is known
(nodata, negative ids of a signed label raster, outside the labels).
``geoseg tile`` and ``geoseg evaluate`` both read labels through ``open_labels``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.classes import IGNORE_INDEX, WATER, ClassMap
from geoseg.errors import ClassError, InputFileError, LabelsError, MissingCRSError, OptionError
from geoseg.raster import check_readable, open_dataset, read_errors
from geoseg.styles import read_class_metadata
from geoseg.windows import Tile

log = logging.getLogger(__name__)

#: The polygon layer of GeoPackages written by geoseg (beside QGIS's layer_styles table).
CLASSES_LAYER = "classes"

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".parquet"}

#: Fields tried, in order, when ``--label-field`` is not given: ids before names.
DEFAULT_FIELDS = ("class_id", "class", "label", "class_name", "classname")
#: What pixels outside every label polygon are: class 0, or left out (255).
UNLABELED = ("background", "ignore")


def is_vector(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def label_layer(path: str | Path) -> str | None:
    """The layer of a vector file that holds the labelled polygons.

    ``classes`` when present (GeoPackages written by geoseg also hold a ``layer_styles``
    table), else the first layer with geometry; None for a file without layers.
    Raises ``InputFileError`` for a file that is not a vector file.
    """
    import pyogrio

    try:
        listed = pyogrio.list_layers(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError family
        raise InputFileError(
            f"{path}: not a vector file geoseg can read ({_ogr_reason(exc)}); give a GeoPackage, "
            f"GeoJSON or Shapefile of labelled polygons"
        ) from None
    spatial = [str(name) for name, geometry_type in listed if geometry_type is not None]
    if CLASSES_LAYER in spatial:
        return CLASSES_LAYER
    return spatial[0] if spatial else None


def _ogr_reason(exc: Exception) -> str:
    """GDAL's reason in one short line, without its hint about driver prefixes."""
    text = " ".join(str(exc).split()).split("; It might help")[0].rstrip(".")
    if text.startswith("'") and "' " in text:  # "'<file>' not recognized as ..."
        text = text.split("' ", 1)[1]
    return text


def warn_if_nodata_is_class(path: str | Path, nodata, classes: ClassMap | None) -> None:
    """Warn when a label raster's nodata value is also one of its class ids.

    GDAL masks nodata pixels, so that class would silently drop out of the labels.
    """
    if nodata is None or classes is None or float(nodata) != int(nodata):
        return
    if int(nodata) in classes.ids:
        name = classes.by_id(int(nodata)).name
        log.warning(
            "%s: nodata value %d is also class %d (%s), whose pixels are then ignored; "
            "unset it (gdal_edit.py -unsetnodata) if %s pixels are labels",
            path,
            int(nodata),
            int(nodata),
            name,
            name,
        )


class RasterLabels:
    """A class raster warped (nearest) onto a target grid, read a tile at a time."""

    def __init__(self, path: Path, grid, classes: ClassMap | None = None) -> None:
        self.path = check_readable(path, what="labels")
        self._src = open_dataset(self.path, what="label raster (or vector file)")
        try:
            self._check(grid)
            warn_if_nodata_is_class(
                self.path, self._src.nodata, classes or read_class_metadata(self._src)
            )
            self._vrt = WarpedVRT(
                self._src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling.nearest,
                src_nodata=self._src.nodata,
                nodata=IGNORE_INDEX,
            )
        except BaseException:
            self._src.close()
            raise
        self._grid = grid
        self.classes = classes or read_class_metadata(self._src)

    def _check(self, grid) -> None:
        src = self._src
        if src.count != 1 or np.dtype(src.dtypes[0]).kind not in "iu":
            raise LabelsError(
                f"{self.path}: expected labels as 1 band of integer class ids, found "
                f"{src.count} band(s) of {src.dtypes[0]}; give a class raster or a vector file"
            )
        if src.crs is None:
            raise MissingCRSError(
                f"{self.path}: label raster has no CRS; assign one first "
                f"(gdal_edit.py -a_srs EPSG:XXXX {self.path.name})"
            )
        _check_overlap(self.path, src.crs, src.bounds, grid)

    def for_tile(self, tile: Tile) -> np.ndarray:
        """Class ids on a tile's pixels; parts of the tile past the grid are 255."""
        labels = np.full(tile.shape, IGNORE_INDEX, dtype=np.uint8)
        col0, row0 = int(tile.window.col_off), int(tile.window.row_off)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1 = min(col0 + tile.width, self._grid.width)
        r1 = min(row0 + tile.height, self._grid.height)
        if c1 <= c0 or r1 <= r0:
            return labels
        window = Window(c0, r0, c1 - c0, r1 - r0)
        labels[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = self.read(window)
        return labels

    def read(self, window: Window) -> np.ndarray:
        """Class ids on a window inside the grid; negative ids (no label) become 255."""
        with read_errors(self.path):
            values = self._vrt.read(1, window=window)
        bad = values > IGNORE_INDEX
        if bad.any():
            raise LabelsError(
                f"{self.path}: class id {int(values[bad][0])} is outside 0..254 "
                f"(255 or negative means ignore); recode the label raster to uint8 class ids"
            )
        if values.dtype.kind == "i":
            # Signed labels mark "not labelled" with negatives (Sen1Floods11: -1).
            values = np.where(values < 0, IGNORE_INDEX, values)
        return values.astype(np.uint8, copy=False)

    def close(self) -> None:
        self._vrt.close()
        self._src.close()


class VectorLabels:
    """Polygons reprojected to a grid's CRS and rasterized a tile at a time."""

    def __init__(
        self,
        path: Path,
        grid,
        *,
        field: str | None = None,
        classes: ClassMap | None = None,
        unlabeled: str = "background",
        infer_classes: bool = True,
    ) -> None:
        import geopandas as gpd
        import pyogrio

        self.path = check_readable(path, what="labels")
        self.layer = label_layer(self.path)
        if self.layer is None:
            raise LabelsError(f"{self.path}: holds no layer of label polygons")
        try:
            info = pyogrio.read_info(self.path, layer=self.layer)
        except Exception as exc:  # pyogrio raises its own DataSourceError family
            raise InputFileError(
                f"{self.path}: not a vector file geoseg can read ({exc})"
            ) from None
        if not info.get("crs"):
            raise MissingCRSError(
                f"{self.path}: vector labels have no CRS; assign one in QGIS or with "
                f"ogr2ogr -a_srs EPSG:XXXX"
            )
        if info.get("features") == 0:
            raise LabelsError(
                f"{self.path}: holds no label polygons (layer {self.layer!r} is empty); give "
                f"the labels drawn for this raster"
            )
        file_crs = rasterio.crs.CRS.from_user_input(info["crs"])
        bbox = transform_bounds(grid.crs, file_crs, *_grid_bounds(grid), densify_pts=21)
        frame = gpd.read_file(self.path, engine="pyogrio", bbox=bbox, layer=self.layer)
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
        if frame.empty:
            raise LabelsError(
                f"{self.path}: labels do not overlap the raster; check that they cover the "
                f"same area and carry the right CRS (theirs is {file_crs.to_string()})"
            )
        frame = frame.to_crs(grid.crs)
        self.classes, values = _class_values(self.path, frame, field, classes, infer_classes)
        self._geometries = frame.geometry.values
        self._values = values
        self._sindex = frame.sindex
        self._transform = grid.transform
        self._fill = 0 if unlabeled == "background" else IGNORE_INDEX
        if unlabeled == "background" and 0 not in self.classes.ids:
            raise ClassError(
                f"{self.path}: pixels outside the polygons are background (class 0), but the "
                f"classes have no id 0; add it or pass --unlabeled ignore"
            )

    def for_tile(self, tile: Tile) -> np.ndarray:
        """Class ids on a tile's pixels."""
        return self._burn(tile.shape, tile.transform, tile.bounds)

    def read(self, window: Window) -> np.ndarray:
        """Class ids on a window of the grid."""
        from rasterio.windows import bounds as window_bounds

        shape = (int(window.height), int(window.width))
        return self._burn(
            shape, window_transform(window, self._transform), window_bounds(window, self._transform)
        )

    def _burn(self, shape, transform, bounds) -> np.ndarray:
        from rasterio.features import rasterize
        from shapely.geometry import box

        hits = self._sindex.query(box(*bounds), predicate="intersects")
        if len(hits) == 0:
            return np.full(shape, self._fill, dtype=np.uint8)
        hits.sort()  # later features paint over earlier ones, as in the file
        shapes = zip(self._geometries[hits], self._values[hits], strict=True)
        return rasterize(
            shapes, out_shape=shape, transform=transform, fill=self._fill, dtype="uint8"
        )

    def close(self) -> None:
        pass


def _class_values(
    path: Path, frame, field: str | None, classes: ClassMap | None, infer_classes: bool = True
) -> tuple[ClassMap, np.ndarray]:
    """The classes of a vector label file and one uint8 class id per feature.

    Numeric fields hold class ids 0..254 (255: ignore); text fields hold class names,
    looked up in ``classes`` (without them, and ``infer_classes``, background plus the
    names found, in sorted order).
    """
    columns = [c for c in frame.columns if c != frame.geometry.name]
    if (
        field is None
        and classes is None
        and infer_classes
        and {"class_id", "class_name"} <= set(columns)
    ):
        # Polygons written by geoseg (predict --vector, vectorize) name their ids.
        classes = _classes_from_pairs(path, frame["class_id"], frame["class_name"])
    if field is None:
        field = next((c for c in DEFAULT_FIELDS if c in columns), None)
    if field is None:
        # Bare polygons: every feature is the one foreground class.
        classes = classes or WATER
        foreground = [c for c in classes if c.id != 0]
        if len(foreground) != 1:
            raise LabelsError(
                f"{path}: features have no class field; pass --label-field (fields: "
                f"{', '.join(columns) or 'none'})"
            )
        return classes, np.full(len(frame), foreground[0].id, dtype=np.uint8)
    if field not in columns:
        raise LabelsError(
            f"{path}: no field {field!r}; pass --label-field with one of: {', '.join(columns) or 'none'}"
        )
    column = frame[field]
    if column.isna().any():
        raise LabelsError(
            f"{path}: {int(column.isna().sum())} feature(s) have no value in {field!r}"
        )
    if column.dtype.kind in "iuf":
        ids = column.to_numpy()
        if (ids != np.round(ids)).any() or (ids < 0).any() or (ids > IGNORE_INDEX).any():
            raise LabelsError(
                f"{path}: field {field!r} must hold whole class ids 0..254 (255: ignore) or "
                f"class names"
            )
        ids = ids.astype(np.uint8)
        known = [0, *(i for i in ids.tolist() if i != IGNORE_INDEX)]
        return (classes.with_ids(ids) if classes else ClassMap.from_ids(known)), ids
    names = column.astype(str)
    if classes is None and not infer_classes:
        raise LabelsError(
            f"{path}: field {field!r} holds class names but no classes are known (the "
            f"prediction carries none); give them with --classes CLASSES.json"
        )
    if classes is None:
        found = sorted(set(names) - {"background"})
        classes = ClassMap.from_names(["background", *found])
    lookup = {name: classes.id_of(name, source=f"{path} field {field!r}") for name in set(names)}
    return classes, names.map(lookup).to_numpy(dtype=np.uint8)


def _classes_from_pairs(path: Path, ids, names) -> ClassMap:
    """Classes from a class_id / class_name pair of fields, plus background 0."""
    pairs = {}
    for class_id, name in zip(ids.tolist(), names.astype(str).tolist(), strict=True):
        if pairs.setdefault(int(class_id), name) != name:
            raise LabelsError(
                f"{path}: class_id {class_id} is named both {pairs[int(class_id)]!r} and "
                f"{name!r}; pass --label-field and --classes"
            )
    pairs.setdefault(0, "background")
    return ClassMap.from_json({str(i): n for i, n in sorted(pairs.items())}, source=str(path))


def _grid_bounds(grid) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    return array_bounds(grid.height, grid.width, grid.transform)


def _check_overlap(path: Path, crs, bounds, grid) -> None:
    left, bottom, right, top = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    g_left, g_bottom, g_right, g_top = _grid_bounds(grid)
    if left >= g_right or right <= g_left or bottom >= g_top or top <= g_bottom:
        raise LabelsError(
            f"{path}: labels do not overlap the raster; check that they cover the same area "
            f"and carry the right CRS ({crs.to_string()})"
        )


def open_labels(
    path: str | Path,
    grid,
    *,
    field: str | None = None,
    classes: ClassMap | None = None,
    unlabeled: str = "background",
    infer_classes: bool = True,
) -> RasterLabels | VectorLabels:
    """Labels for a raster grid (an object with crs, transform, width, height).

    ``infer_classes=False``: class names in a vector field need ``classes`` (evaluation
    must not guess the ids a prediction uses).
    """
    if unlabeled not in UNLABELED:
        raise OptionError(f"--unlabeled must be background or ignore, got {unlabeled!r}")
    path = Path(path)
    if is_vector(path) or path.is_dir():
        return VectorLabels(
            path,
            grid,
            field=field,
            classes=classes,
            unlabeled=unlabeled,
            infer_classes=infer_classes,
        )
    return RasterLabels(path, grid, classes=classes)
