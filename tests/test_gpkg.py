"""geoseg's own GeoPackage writer: GDAL reads back every field, geometry and CRS, its
spatial index answers and stays right when GDAL edits the file, and the OGC validator
that ships with GDAL finds nothing wrong."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS

from geoseg.atomic import verify_vector
from geoseg.errors import IncompleteOutputError
from geoseg.gpkg import FeatureWriter

VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
UTM = CRS.from_epsg(32614)
FIELDS = {"name": "str", "n": "int32", "big": "int64", "x": "float64", "flag": "bool"}


def squares(n: int, x0: float = 500_000.0, y0: float = 5_200_000.0, side: float = 10.0):
    """n squares in a row, each with a square hole."""
    out = []
    for i in range(n):
        left = x0 + i * 2 * side
        hole = shapely.box(left + 2, y0 + 2, left + 4, y0 + 4).exterior.coords
        out.append(shapely.Polygon(shapely.box(left, y0, left + side, y0 + side).exterior, [hole]))
    return np.array(out, dtype=object)


def write(path: Path, geoms, *, crs=UTM, order_by=(), **columns):
    with FeatureWriter(path, "things", crs=crs, fields=FIELDS, order_by=order_by) as layer:
        layer.add(geoms, **columns)
    return path


def columns(n: int) -> dict:
    return dict(
        name=[f"thing {i}" if i % 3 else None for i in range(n)],
        n=np.arange(n, dtype=np.int32),
        big=np.arange(n, dtype=np.int64) * 2**40,
        x=np.linspace(0.5, 1.5, n),
        flag=np.arange(n) % 2 == 0,
    )


def test_gdal_reads_back_fields_geometries_crs_and_extent(tmp_path):
    geoms = squares(5)
    path = write(tmp_path / "a.gpkg", geoms, **columns(5))
    frame = pyogrio.read_dataframe(path, layer="things")
    assert frame.crs.to_epsg() == 32614
    assert shapely.equals_exact(frame.geometry.values, geoms, 0).all()
    assert frame["name"].isna().tolist() == [True, False, False, True, False]
    assert frame["name"][1] == "thing 1"
    assert frame["n"].dtype == np.int32 and frame["n"].tolist() == [0, 1, 2, 3, 4]
    assert frame["big"].dtype == np.int64 and frame["big"].tolist()[-1] == 4 * 2**40
    assert frame["x"].tolist() == pytest.approx([0.5, 0.75, 1.0, 1.25, 1.5])
    assert frame["flag"].dtype == bool and frame["flag"].tolist() == [True, False] * 2 + [True]
    info = pyogrio.read_info(path, layer="things")
    assert info["geometry_type"] == "Polygon" and info["features"] == 5
    assert tuple(info["total_bounds"]) == pytest.approx(tuple(shapely.total_bounds(geoms)))


def test_rows_added_in_batches_keep_their_order_or_the_order_asked_for(tmp_path):
    geoms = squares(6)
    path = tmp_path / "ordered.gpkg"
    with FeatureWriter(path, "things", crs=None, fields=FIELDS, order_by=("x DESC",)) as layer:
        for part in (slice(0, 2), slice(2, 6)):
            layer.add(
                geoms[part], **{k: np.asarray(v, object)[part] for k, v in columns(6).items()}
            )
    frame = pyogrio.read_dataframe(path, layer="things", fid_as_index=True)
    assert frame["n"].tolist() == [5, 4, 3, 2, 1, 0]  # largest x first
    assert frame.index.tolist() == [1, 2, 3, 4, 5, 6]
    assert not path.with_name("ordered.gpkg.staging").exists()
    # The index matches the reordered features: a box around the first square finds it.
    found = pyogrio.read_dataframe(
        path, layer="things", bbox=(500_001, 5_200_001, 500_002, 5_200_002)
    )
    assert found["n"].tolist() == [0]


@pytest.mark.parametrize("order_by", [(), ("n DESC",)])
def test_spatial_index_answers_and_follows_gdal_edits(tmp_path, order_by):
    path = write(tmp_path / "i.gpkg", squares(50), order_by=order_by, **columns(50))
    has_index = pyogrio.read_dataframe(
        path, sql="SELECT HasSpatialIndex('things', 'geom')", read_geometry=False
    )
    assert has_index.iloc[0, 0] == 1
    box = (500_400, 5_200_000, 500_425, 5_200_010)  # squares 20 and 21
    assert sorted(pyogrio.read_dataframe(path, layer="things", bbox=box)["n"]) == [20, 21]
    # GDAL appends a feature: the triggers written with the layer index it and count it.
    extra = pyogrio.read_dataframe(path, layer="things", where="n = 0")
    extra["geometry"] = squares(1, x0=600_000.0)
    extra["n"] = 99
    pyogrio.write_dataframe(extra, path, layer="things", append=True)
    far = pyogrio.read_dataframe(
        path, layer="things", bbox=(600_001, 5_200_001, 600_002, 5_200_002)
    )
    assert far["n"].tolist() == [99]
    assert pyogrio.read_info(path, layer="things")["features"] == 51


def test_geographic_and_custom_crs(tmp_path):
    lonlat = squares(2, x0=10.0, y0=50.0, side=0.001)
    frame = pyogrio.read_dataframe(
        write(tmp_path / "g.gpkg", lonlat, crs=CRS.from_epsg(4326), **columns(2))
    )
    assert frame.crs.to_epsg() == 4326
    custom = CRS.from_proj4(
        "+proj=laea +lat_0=51.5 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80"
    )
    frame = pyogrio.read_dataframe(write(tmp_path / "c.gpkg", squares(2), crs=custom, **columns(2)))
    assert CRS.from_wkt(frame.crs.to_wkt()) == custom


def test_an_empty_geometry_and_an_empty_layer(tmp_path):
    geoms = np.array([shapely.Polygon(), *squares(1)], dtype=object)
    path = write(tmp_path / "e.gpkg", geoms, **columns(2))
    frame = pyogrio.read_dataframe(path, layer="things")
    assert frame.geometry.is_empty.tolist() == [True, False]
    with FeatureWriter(tmp_path / "none.gpkg", "things", crs=None, fields=FIELDS):
        pass
    assert pyogrio.read_info(tmp_path / "none.gpkg", layer="things")["features"] == 0


@pytest.mark.skipif(not VALIDATOR.exists(), reason="GDAL's validate_gpkg.py (python3-gdal) absent")
def test_the_ogc_validator_shipped_with_gdal_accepts_the_file(tmp_path):
    path = write(tmp_path / "v.gpkg", squares(3), order_by=("n",), **columns(3))
    done = subprocess.run(
        ["/usr/bin/python3", str(VALIDATOR), str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_verify_vector_catches_a_cut_gpkg_without_gdal(tmp_path):
    path = write(tmp_path / "whole.gpkg", squares(2000), **columns(2000))
    verify_vector(path, layers=("things",))
    with pytest.raises(IncompleteOutputError, match="no layer 'other'"):
        verify_vector(path, layers=("other",))
    cut = tmp_path / "cut.gpkg"
    shutil.copy(path, cut)
    with open(cut, "r+b") as file:
        file.truncate(cut.stat().st_size // 2)
    with pytest.raises(IncompleteOutputError, match="cut.gpkg"):
        verify_vector(cut)
    (tmp_path / "text.gpkg").write_text("not a database")
    with pytest.raises(IncompleteOutputError, match="text.gpkg"):
        verify_vector(tmp_path / "text.gpkg")


def test_bad_names_and_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="usable"):
        FeatureWriter(tmp_path / "x.gpkg", "bad name", crs=None, fields={})
    with pytest.raises(ValueError, match="field types"):
        FeatureWriter(tmp_path / "y.gpkg", "ok", crs=None, fields={"a": "date"})
    with FeatureWriter(tmp_path / "z.gpkg", "ok", crs=None, fields={"a": "int32"}) as layer:
        with pytest.raises(ValueError, match="columns"):
            layer.add(squares(1), b=[1])
        with pytest.raises(ValueError, match="one value per geometry"):
            layer.add(squares(2), a=[1])


def test_a_failed_write_leaves_no_scratch_file(tmp_path):
    path = tmp_path / "f.gpkg"
    with (
        pytest.raises(RuntimeError),
        FeatureWriter(path, "things", crs=None, fields=FIELDS, order_by=("n",)) as layer,
    ):
        layer.add(squares(3), **columns(3))
        raise RuntimeError("the mask could not be read")
    assert not path.with_name("f.gpkg.staging").exists()
