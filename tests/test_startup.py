"""Start-up cost: the command line imports heavy libraries only on the paths that need them.

Each case runs in a fresh interpreter (the test process has imported everything already)
and reports which of the heavy modules ``sys.modules`` holds once the command is done.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLE_NAIP

#: Libraries that cost a tenth of a second or more each and that only some paths need.
HEAVY = (
    "accelerate",
    "dask",
    "distributed",
    "geopandas",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "pandas",
    "peft",
    "pyogrio",
    "scipy",
    "shapely",
    "skimage",
    "torch",
    "transformers",
    "xarray",
)

_PROBE = """
import json, sys
from geoseg.cli import cli
try:
    cli.main({args!r}, prog_name="geoseg")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("@@" + json.dumps({{"code": code, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def loaded_after(*args: str) -> list[str]:
    """The heavy modules a fresh ``geoseg ARGS`` has imported by the time it exits."""
    probe = _PROBE.format(args=list(args), heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    line = [x for x in result.stdout.splitlines() if x.startswith("@@")]
    assert line, result.stderr[-2000:]
    report = json.loads(line[-1][2:])
    assert report["code"] in (0, None), result.stderr[-2000:]
    return report["loaded"]


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("backends",),
        ("backends", "spectral"),
        ("predict", "--help"),
        ("tile", "--help"),
        ("vectorize", "--help"),
        ("train", "--help"),
    ],
    ids=" ".join,
)
def test_light_commands_import_no_heavy_library(args):
    assert loaded_after(*args) == []


def test_predict_without_vector_imports_no_vector_or_model_library(tmp_path):
    out = tmp_path / "water.tif"
    loaded = loaded_after(
        "predict",
        str(EXAMPLE_NAIP),
        "-o",
        str(out),
        "--backend",
        "spectral",
        "--bands",
        "naip",
        "-q",
    )
    assert out.is_file()
    assert loaded == []


def test_importing_geoseg_loads_neither_rasterio_nor_numpy():
    # The package's public names are imported on first use (PEP 562), so the command
    # line's own start-up pays only for what a command needs.
    code = (
        "import sys, geoseg; before = sorted(m for m in ('rasterio', 'numpy') if m in sys.modules)\n"
        "from geoseg import open_raster, ClassMap, tile_grid\n"
        "print(before, callable(open_raster), 'rasterio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["[]", "True", "True"]


def test_tile_and_vector_outputs_import_neither_pandas_nor_geopandas(tmp_path):
    # Footprints and polygons go through geoseg.gpkg (SQLite): pyogrio's import alone pulls
    # in geopandas and pandas, a quarter of a second of every tile or vectorize command.
    chips = tmp_path / "chips"
    loaded = loaded_after("tile", str(EXAMPLE_NAIP), "-o", str(chips), "--bands", "naip", "-q")
    assert (chips / "tiles.gpkg").is_file()
    assert loaded == ["shapely"]
    mask, polygons = tmp_path / "water.tif", tmp_path / "water.gpkg"
    args = ["predict", str(EXAMPLE_NAIP), "-o", str(mask), "--backend", "spectral"]
    loaded = loaded_after(*args, "--bands", "naip", "--vector", str(polygons), "-q")
    assert polygons.is_file()
    assert loaded == ["shapely"]
