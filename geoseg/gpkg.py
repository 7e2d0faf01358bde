"""GeoPackage feature layers written straight to SQLite, in batches, as GDAL writes them.

A GeoPackage is an SQLite file with a fixed schema (OGC 12-128r18, version 1.2 here, as
geoseg's other GeoPackages). geoseg writes its own feature layers (polygons, chip
footprints) with Python's ``sqlite3``, using the tables, column types, geometry blobs,
R-tree spatial index and triggers that GDAL's GPKG driver writes, for two reasons:

- rows are appended window by window, so a raster's polygons never have to sit in
  memory together (GDAL through pyogrio takes a whole layer, or one call per append);
- it needs neither pandas nor geopandas, whose import (about 0.25 s, pulled in by
  ``import pyogrio``) was a sixth of a ``geoseg tile`` run.

Everything else reads the files with GDAL (pyogrio, QGIS): the tests check that GDAL reads
back every field, geometry and the CRS, and that QGIS renders them.

    with FeatureWriter(path, "classes", crs=crs, fields={"class_id": "int32"}) as layer:
        layer.add(polygons, class_id=ids)
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely

from geoseg.atomic import probe_cause
from geoseg.styles import GPKG_VERSION

__all__ = ["FIELD_TYPES", "FeatureWriter"]

#: Field types a layer may declare, and the SQL type GDAL writes (and reads back) for each.
FIELD_TYPES = {
    "int32": "MEDIUMINT",
    "int64": "INTEGER",
    "float32": "FLOAT",
    "float64": "REAL",
    "bool": "BOOLEAN",
    "str": "TEXT",
}
GEOMETRY_COLUMN = "geom"
#: ``PRAGMA application_id`` ('GPKG') and ``user_version`` (1.2 is 10200), the version
#: geoseg's GeoPackages written through GDAL have too.
APPLICATION_ID = 0x47504B47
USER_VERSION = int("".join(f"{int(part):02d}" for part in GPKG_VERSION.split(".")) + "00")
#: Rows inserted per ``executemany``.
BATCH = 10_000

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
_WGS84 = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)
#: The base tables and the three spatial reference systems every GeoPackage holds.
_SCHEMA = (
    "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL,srs_id INTEGER NOT NULL "
    "PRIMARY KEY,organization TEXT NOT NULL,organization_coordsys_id INTEGER NOT NULL,"
    "definition  TEXT NOT NULL,description TEXT)",
    "CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,data_type TEXT NOT "
    "NULL,identifier TEXT UNIQUE,description TEXT DEFAULT '',last_change DATETIME NOT NULL "
    f"DEFAULT ({_NOW}),min_x DOUBLE, min_y DOUBLE,max_x DOUBLE, max_y DOUBLE,srs_id INTEGER,"
    "CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))",
    "CREATE TABLE gpkg_ogr_contents(table_name TEXT NOT NULL PRIMARY KEY,feature_count "
    "INTEGER DEFAULT NULL)",
    "CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL,column_name TEXT NOT NULL,"
    "geometry_type_name TEXT NOT NULL,srs_id INTEGER NOT NULL,z TINYINT NOT NULL,m TINYINT "
    "NOT NULL,CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),CONSTRAINT "
    "uk_gc_table_name UNIQUE (table_name),CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) "
    "REFERENCES gpkg_contents(table_name),CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) "
    "REFERENCES gpkg_spatial_ref_sys (srs_id))",
    "CREATE TABLE gpkg_extensions (table_name TEXT,column_name TEXT,extension_name TEXT NOT "
    "NULL,definition TEXT NOT NULL,scope TEXT NOT NULL,CONSTRAINT ge_tce UNIQUE (table_name, "
    "column_name, extension_name))",
)
_BASE_SRS = (
    (
        "Undefined Cartesian SRS",
        -1,
        "NONE",
        -1,
        "undefined",
        "undefined Cartesian coordinate reference system",
    ),
    (
        "Undefined geographic SRS",
        0,
        "NONE",
        0,
        "undefined",
        "undefined geographic coordinate reference system",
    ),
    (
        "WGS 84 geodetic",
        4326,
        "EPSG",
        4326,
        _WGS84,
        "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid",
    ),
)
#: The R-tree index's triggers, as GDAL writes them ({t}: table, {i}: index table).
_RTREE_TRIGGERS = (
    'CREATE TRIGGER "{i}_insert" AFTER INSERT ON "{t}" WHEN (new."geom" NOT NULL AND NOT '
    'ST_IsEmpty(NEW."geom")) BEGIN INSERT OR REPLACE INTO "{i}" VALUES (NEW."fid",'
    'ST_MinX(NEW."geom"), ST_MaxX(NEW."geom"),ST_MinY(NEW."geom"), ST_MaxY(NEW."geom")); END',
    'CREATE TRIGGER "{i}_update1" AFTER UPDATE OF "geom" ON "{t}" WHEN OLD."fid" = NEW."fid" '
    'AND (NEW."geom" NOTNULL AND NOT ST_IsEmpty(NEW."geom")) BEGIN INSERT OR REPLACE INTO '
    '"{i}" VALUES (NEW."fid",ST_MinX(NEW."geom"), ST_MaxX(NEW."geom"),ST_MinY(NEW."geom"), '
    'ST_MaxY(NEW."geom")); END',
    'CREATE TRIGGER "{i}_update2" AFTER UPDATE OF "geom" ON "{t}" WHEN OLD."fid" = NEW."fid" '
    'AND (NEW."geom" ISNULL OR ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "{i}" WHERE id = '
    'OLD."fid"; END',
    'CREATE TRIGGER "{i}_update3" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
    '(NEW."geom" NOTNULL AND NOT ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "{i}" WHERE id = '
    'OLD."fid"; INSERT OR REPLACE INTO "{i}" VALUES (NEW."fid",ST_MinX(NEW."geom"), '
    'ST_MaxX(NEW."geom"),ST_MinY(NEW."geom"), ST_MaxY(NEW."geom")); END',
    'CREATE TRIGGER "{i}_update4" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
    '(NEW."geom" ISNULL OR ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "{i}" WHERE id IN '
    '(OLD."fid", NEW."fid"); END',
    'CREATE TRIGGER "{i}_delete" AFTER DELETE ON "{t}" WHEN old."geom" NOT NULL BEGIN DELETE '
    'FROM "{i}" WHERE id = OLD."fid"; END',
)
_COUNT_TRIGGERS = (
    'CREATE TRIGGER "trigger_insert_feature_count_{t}" AFTER INSERT ON "{t}" BEGIN UPDATE '
    "gpkg_ogr_contents SET feature_count = feature_count + 1 WHERE lower(table_name) = "
    "lower('{t}'); END",
    'CREATE TRIGGER "trigger_delete_feature_count_{t}" AFTER DELETE ON "{t}" BEGIN UPDATE '
    "gpkg_ogr_contents SET feature_count = feature_count - 1 WHERE lower(table_name) = "
    "lower('{t}'); END",
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The geometry blob's header: magic, version, flags (envelope [minx, maxx, miny, maxy],
#: little-endian), srs_id, envelope; an empty geometry's header has no envelope.
_HEADER = np.dtype([("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs_id", "<i4")])
_ENVELOPE = np.dtype([*_HEADER.descr, ("envelope", "<f8", (4,))])
_FLAGS_ENVELOPE, _FLAGS_EMPTY = 0b0000_0011, 0b0001_0001


class FeatureWriter:
    """One new layer of a new GeoPackage, its features added in batches.

    ``fields`` maps each attribute to one of ``FIELD_TYPES``. ``order_by`` (SQL terms on
    the fields, e.g. ``("class_id", "area_m2 DESC")``) stores the features in that order,
    ties kept in the order added, by staging them in a scratch file beside ``path``: the
    features are never all in memory. Leaving the ``with`` block finishes the file (the
    extent, the spatial index); an exception leaves an unfinished file, for the caller's
    ``atomic_output`` to throw away. The file is not synced: ``atomic_output`` does that.
    """

    def __init__(
        self,
        path: str | Path,
        layer: str,
        *,
        crs,
        fields: Mapping[str, str],
        geometry_type: str = "POLYGON",
        order_by: Sequence[str] = (),
    ) -> None:
        for name in (layer, *fields):
            if not _NAME.match(name) or name.lower() in ("fid", GEOMETRY_COLUMN):
                raise ValueError(f"{name!r} is not a usable layer or field name")
        unknown = {t for t in fields.values() if t not in FIELD_TYPES}
        if unknown:
            raise ValueError(f"field types {sorted(unknown)}; use {sorted(FIELD_TYPES)}")
        self.path, self.layer, self.fields = Path(path), layer, dict(fields)
        self.geometry_type = geometry_type.upper()
        self.order_by = tuple(order_by)
        self.count = 0
        self._extent = [np.inf, np.inf, -np.inf, -np.inf]  # min x, min y, max x, max y
        self._staging = self.path.with_name(self.path.name + ".staging") if self.order_by else None
        self._closed = False
        for scratch in (self.path, self._staging):
            if scratch is not None:
                scratch.unlink(missing_ok=True)  # a new file: a name left by a killed run
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._create(crs)
        except BaseException:
            self._release()
            raise

    def _create(self, crs) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode = OFF")  # a new file; atomic_output keeps it
        db.execute("PRAGMA synchronous = OFF")  # safe, and syncs it once at the end
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {USER_VERSION}")
        if self._staging is not None:
            db.execute("ATTACH DATABASE ? AS staging", (str(self._staging),))
            db.execute("PRAGMA staging.journal_mode = OFF")
            db.execute("PRAGMA staging.synchronous = OFF")
        db.execute("BEGIN")
        for statement in _SCHEMA:
            db.execute(statement)
        db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", _BASE_SRS)
        self.srs_id = self._add_srs(crs)
        columns = ", ".join(f'"{name}" {FIELD_TYPES[kind]}' for name, kind in self.fields.items())
        db.execute(
            f'CREATE TABLE "{self.layer}" ( "fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
            f'"{GEOMETRY_COLUMN}" {self.geometry_type}' + (f", {columns})" if columns else ")")
        )
        db.execute(f'CREATE VIRTUAL TABLE "{self._rtree}" USING rtree(id, minx, maxx, miny, maxy)')
        if self._staging is not None:
            db.execute(
                "CREATE TABLE staging.features (minx, maxx, miny, maxy, geom"
                + "".join(f', "{name}"' for name in self.fields)
                + ")"
            )

    # Adding features ------------------------------------------------------------------

    def add(self, geometries, **columns) -> None:
        """Append features: shapely ``geometries`` and one array or list per field."""
        with self._write_errors():
            self._add(geometries, columns)

    def _add(self, geometries, columns: dict) -> None:
        geometries = np.asarray(geometries, dtype=object)
        if set(columns) != set(self.fields):
            raise ValueError(f"columns {sorted(columns)}, the layer has {sorted(self.fields)}")
        n = len(geometries)
        if any(len(values) != n for values in columns.values()):
            raise ValueError("every column needs one value per geometry")
        if n == 0:
            return
        bounds = shapely.bounds(geometries)  # NaN for an empty geometry
        blobs = _geometry_blobs(geometries, bounds, self.srs_id)
        if not np.isnan(bounds).all():
            self._extent[:2] = np.minimum(self._extent[:2], np.nanmin(bounds[:, :2], axis=0))
            self._extent[2:] = np.maximum(self._extent[2:], np.nanmax(bounds[:, 2:], axis=0))
        values = [_python_values(columns[name], kind) for name, kind in self.fields.items()]
        # R-tree rows as minx, maxx, miny, maxy; None for an empty geometry.
        envelopes = np.where(np.isnan(bounds), None, bounds[:, [0, 2, 1, 3]].astype(object))
        if self._staging is not None:
            names = "minx, maxx, miny, maxy, geom" + "".join(f', "{c}"' for c in self.fields)
            marks = ", ".join("?" * (5 + len(self.fields)))
            rows = zip(*envelopes.T.tolist(), blobs, *values, strict=True)
            for batch in _batches(rows):
                self._db.executemany(
                    f"INSERT INTO staging.features ({names}) VALUES ({marks})", batch
                )
        else:
            fids = range(self.count + 1, self.count + n + 1)
            self._insert(zip(fids, blobs, *values, strict=True))
            index = [
                (fid, *box)
                for fid, box in zip(fids, envelopes.tolist(), strict=True)
                if box[0] is not None
            ]
            self._db.executemany(f'INSERT INTO "{self._rtree}" VALUES (?, ?, ?, ?, ?)', index)
        self.count += n

    def _insert(self, rows) -> None:
        names = '"fid", "geom"' + "".join(f', "{c}"' for c in self.fields)
        marks = ", ".join("?" * (2 + len(self.fields)))
        for batch in _batches(rows):
            self._db.executemany(f'INSERT INTO "{self.layer}" ({names}) VALUES ({marks})', batch)

    @property
    def _rtree(self) -> str:
        return f"rtree_{self.layer}_{GEOMETRY_COLUMN}"

    # Finishing ------------------------------------------------------------------------

    def close(self) -> None:
        """Finish the file: features in order, extent, spatial index, triggers, counts."""
        if self._closed:
            return
        try:
            with self._write_errors():
                self._finish()
        finally:
            self._release()

    @contextlib.contextmanager
    def _write_errors(self):
        """SQLite says only "disk I/O error" or "database or disk is full": an ``OSError``
        of the cause (full disk, file size limit) instead, for ``atomic_output`` to name."""
        try:
            yield
        except sqlite3.Error as exc:
            cause = probe_cause(self.path, [p for p in (self.path, self._staging) if p])
            if cause is None:
                raise
            raise OSError(cause, os.strerror(cause), str(self.path)) from exc

    def _finish(self) -> None:
        db, layer = self._db, self.layer
        if self._staging is not None:
            order = ", ".join([*self.order_by, "rowid"])
            fields = "".join(f', "{c}"' for c in self.fields)
            db.execute(
                f'INSERT INTO "{layer}" ("fid", "geom"{fields}) SELECT ROW_NUMBER() OVER '
                f"(ORDER BY {order}), geom{fields} FROM staging.features ORDER BY {order}"
            )
            db.execute(
                f'INSERT INTO "{self._rtree}" SELECT fid, minx, maxx, miny, maxy FROM (SELECT '
                f"ROW_NUMBER() OVER (ORDER BY {order}) AS fid, minx, maxx, miny, maxy FROM "
                "staging.features) WHERE minx IS NOT NULL"
            )
        extent = self._extent if self.count and np.isfinite(self._extent).all() else [None] * 4
        db.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
            "last_change, min_x, min_y, max_x, max_y, srs_id) VALUES (?, 'features', ?, '', "
            f"{_NOW}, ?, ?, ?, ?, ?)",
            (layer, layer, *[None if v is None else float(v) for v in extent], self.srs_id),
        )
        db.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, ?, ?, ?, 0, 0)",
            (layer, GEOMETRY_COLUMN, self.geometry_type, self.srs_id),
        )
        db.execute(
            "INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
            "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
            (layer, GEOMETRY_COLUMN),
        )
        db.execute("INSERT INTO gpkg_ogr_contents VALUES (?, ?)", (layer, self.count))
        for trigger in (*_RTREE_TRIGGERS, *_COUNT_TRIGGERS):
            db.execute(trigger.format(t=layer, i=self._rtree))
        db.execute("COMMIT")

    def _release(self) -> None:
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            if self._staging is not None:
                self._db.execute("DETACH DATABASE staging")
        self._db.close()
        if self._staging is not None:
            self._staging.unlink(missing_ok=True)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release()

    # The spatial reference system -----------------------------------------------------

    def _add_srs(self, crs) -> int:
        """The ``srs_id`` of ``crs`` (a rasterio CRS, or None), added to the SRS table."""
        if crs is None:
            return -1
        definition = crs.to_wkt()
        code = crs.to_epsg()
        if code == 4326:
            return 4326
        found = re.match(r'^\w+\["([^"]*)"', definition)
        name = found.group(1) if found else "Unknown"
        srs_id, organization = (code, "EPSG") if code else (100000, "NONE")
        self._db.execute(
            "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, NULL)",
            (name, srs_id, organization, srs_id, definition),
        )
        return srs_id


def _geometry_blobs(geometries: np.ndarray, bounds: np.ndarray, srs_id: int) -> list[bytes]:
    """GeoPackage geometry blobs: a header with the envelope, then little-endian WKB."""
    wkb = shapely.to_wkb(geometries, byte_order=1, output_dimension=2, flavor="iso")
    empty = np.isnan(bounds[:, 0])
    headers = np.zeros(len(geometries), _ENVELOPE)
    headers["magic"], headers["flags"], headers["srs_id"] = b"GP", _FLAGS_ENVELOPE, srs_id
    headers["envelope"] = bounds[:, [0, 2, 1, 3]]
    raw = headers.tobytes()
    size = _ENVELOPE.itemsize
    blobs = [raw[i * size : (i + 1) * size] + w for i, w in enumerate(wkb.tolist())]
    if empty.any():
        head = np.zeros(1, _HEADER)
        head["magic"], head["flags"], head["srs_id"] = b"GP", _FLAGS_EMPTY, srs_id
        for i in np.flatnonzero(empty):
            blobs[i] = head.tobytes() + wkb[i]
    return blobs


def _python_values(values, kind: str) -> list:
    """A column as Python values for sqlite3 (None stays NULL)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if kind == "str":
            return values.astype(str).tolist()
        return values.tolist()
    values = list(values)
    if kind in ("int32", "int64", "bool"):
        return [None if v is None else int(v) for v in values]
    if kind in ("float32", "float64"):
        return [None if v is None else float(v) for v in values]
    return [None if v is None else str(v) for v in values]


def _batches(rows, size: int = BATCH):
    rows = iter(rows)
    while batch := [row for _, row in zip(range(size), rows, strict=False)]:
        yield batch
