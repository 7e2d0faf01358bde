"""geoseg's outputs in real QGIS: PyQGIS (the system Python, under Xvfb) loads and renders them.

QGIS's Python is not the project's: it is Debian's ``/usr/bin/python3`` with ``python3-qgis``,
so every check runs in a subprocess with a clean environment (no virtualenv, no PROJ_DATA),
the way a QGIS user opens the files. The outputs come from the real NAIP sample through the
geoseg command line. Skipped, with the reason, where QGIS or Xvfb is not installed
(``.ci/run`` installs them).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import EXAMPLE_NAIP, NAIP

QGIS_PYTHON = "/usr/bin/python3"
SAMPLE = NAIP if NAIP.exists() else EXAMPLE_NAIP
GEOSEG = Path(sys.executable).with_name("geoseg")


@functools.cache
def qgis_missing() -> str | None:
    """Why PyQGIS cannot run here, or None when it can."""
    if shutil.which("xvfb-run") is None:
        return "xvfb-run not installed (apt-get install xvfb)"
    if not Path(QGIS_PYTHON).exists():
        return f"{QGIS_PYTHON} not found (QGIS's Python)"
    found = subprocess.run(
        [QGIS_PYTHON, "-c", "import qgis.core"], env=qgis_env(), capture_output=True, text=True
    )
    if found.returncode != 0:
        return "PyQGIS not installed (apt-get install qgis python3-qgis)"
    return None


@pytest.fixture(autouse=True)
def _skip_without_qgis():
    reason = qgis_missing()
    if reason is not None:
        pytest.skip(reason)


def qgis_env(home: Path | None = None) -> dict[str, str]:
    """The environment a QGIS user has: system paths only, nothing of this virtualenv."""
    home = home or Path("/tmp")
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(runtime),
        "QT_QPA_PLATFORM": "offscreen",
    }


# What QGIS makes of the layers: run inside QGIS's Python with a job (JSON) as argument.
PROBE = r"""
import json, os, sys
from qgis.core import (QgsApplication, QgsMapRendererParallelJob, QgsMapSettings,
                       QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

job = json.loads(open(sys.argv[1]).read())
app = QgsApplication([], False)
app.initQgis()
messages = []
QgsApplication.messageLog().messageReceived.connect(
    lambda text, tag, level: messages.append(f"{tag}: {text}"))
layers, report = {}, {}
for name, uri in job["layers"].items():
    raster = uri.split("|")[0].endswith(".tif")
    layer = QgsRasterLayer(uri, name) if raster else QgsVectorLayer(uri, name, "ogr")
    layers[name] = layer
    renderer = layer.renderer()
    info = {"valid": layer.isValid(), "renderer": renderer.type() if renderer else None}
    if raster:
        info["pyramids"] = bool(layer.dataProvider().hasPyramids())
        if renderer.type() == "paletted":
            info["classes"] = [[int(c.value), c.label, c.color.name(), c.color.alpha()]
                               for c in renderer.classes()]
    else:
        info["features"] = layer.featureCount()
        symbols = []
        if renderer.type() == "categorizedSymbol":
            info["attr"] = renderer.classAttribute()
            categories = renderer.categories()  # the symbols belong to these copies
            symbols = [(str(c.value()), c.label(), c.symbol()) for c in categories]
        elif renderer.type() == "singleSymbol":
            symbols = [("", "", renderer.symbol())]
        info["symbols"] = [
            [value, label, symbol.symbolLayer(0).layerType(), symbol.symbolLayer(0).properties()]
            for value, label, symbol in symbols]
    report[name] = info
for render in job.get("renders", []):
    base = layers[render["extent"]]
    settings = QgsMapSettings()
    settings.setLayers([layers[n] for n in render["layers"]])  # first is on top
    settings.setDestinationCrs(base.crs())
    settings.setExtent(base.extent())
    settings.setOutputSize(QSize(*render["size"]))
    settings.setBackgroundColor(QColor(255, 255, 255))
    renderer = QgsMapRendererParallelJob(settings)
    renderer.start()
    renderer.waitForFinished()
    renderer.renderedImage().save(render["png"], "PNG")
report["messages"] = messages
print("PROBE " + json.dumps(report), flush=True)
# PyQGIS 3.22 can crash in its exit handlers once layers were loaded; the report is out.
os._exit(0)
"""


def run_probe(tmp: Path, layers: dict[str, str], renders: list[dict] | None = None) -> dict:
    """Load ``layers`` (name -> QGIS data source) in PyQGIS; return what QGIS reports."""
    job = tmp / "probe.json"
    job.write_text(json.dumps({"layers": layers, "renders": renders or []}))
    script = tmp / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run(
        ["xvfb-run", "-a", QGIS_PYTHON, str(script), str(job)],
        env={**qgis_env(tmp), "QT_QPA_PLATFORM": "xcb"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    return json.loads(lines[-1][len("PROBE ") :])


def geoseg(*args: str | Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(GEOSEG), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Mask, polygons, prompts and chip footprints of the NAIP sample, made by the CLI."""
    if qgis_missing() is not None:
        pytest.skip(qgis_missing())
    out = tmp_path_factory.mktemp("qgis")
    geoseg("predict", SAMPLE, "--backend", "spectral", "--bands", "naip", "-o", out / "naip.tif",
           "--vector", out / "naip.gpkg", "-q")  # fmt: skip
    geoseg("prompts", SAMPLE, "--bands", "naip", "--negative", "4", "-o", out / "prompts.gpkg",
           "-q")  # fmt: skip
    geoseg("tile", SAMPLE, "--bands", "naip", "--size", "256", "--overlap", "32",
           "-o", out / "chips", "-q")  # fmt: skip
    return out


def test_outputs_open_styled_in_qgis(outputs):
    with rasterio.open(SAMPLE) as source:
        size = [source.width, source.height]
    renders = [
        {"layers": ["image"], "extent": "image", "size": size, "png": str(outputs / "image.png")},
        {
            "layers": ["mask", "image"],
            "extent": "image",
            "size": size,
            "png": str(outputs / "mask_over_image.png"),
        },
    ]
    report = run_probe(
        outputs,
        {
            "image": str(SAMPLE),
            "mask": str(outputs / "naip.tif"),
            "polygons": f"{outputs / 'naip.gpkg'}|layername=classes",
            "points": f"{outputs / 'prompts.gpkg'}|layername=points",
            "boxes": f"{outputs / 'prompts.gpkg'}|layername=boxes",
            "tiles": f"{outputs / 'chips' / 'tiles.gpkg'}|layername=tiles",
        },
        renders,
    )
    assert all(report[name]["valid"] for name in report if name != "messages")
    # the .qml beside the mask: paletted, labelled, background transparent, water see-through
    mask = report["mask"]
    assert mask["renderer"] == "paletted" and mask["pyramids"]
    (background, water) = mask["classes"]
    assert background[:2] == [0, "background"] and background[3] == 0
    assert water[:3] == [1, "water", "#1f78b4"] and 0 < water[3] < 255
    # the GeoPackage's layer_styles: categorized by class (not QGIS's random single fill)
    polygons = report["polygons"]
    assert polygons["renderer"] == "categorizedSymbol" and polygons["attr"] == "class_name"
    assert [s[1] for s in polygons["symbols"]] == ["background", "water"]
    assert polygons["symbols"][0][3]["style"] == "no"  # background: no fill
    assert polygons["symbols"][1][3]["color"].startswith("31,120,180,")
    # prompts: points by label in two colours, boxes as outlines
    points = report["points"]
    assert points["renderer"] == "categorizedSymbol" and points["attr"] == "label"
    colours = {value: props["color"] for value, _, _, props in points["symbols"]}
    assert set(colours) == {"0", "1"} and colours["0"] != colours["1"]
    [(_, _, kind, props)] = report["boxes"]["symbols"]
    assert report["boxes"]["renderer"] == "singleSymbol" and kind == "SimpleFill"
    assert props["style"] == "no" and props["outline_style"] == "solid"
    # chip footprints: outlines coloured by split
    tiles = report["tiles"]
    assert tiles["renderer"] == "categorizedSymbol" and tiles["attr"] == "split"
    outlines = {value: props for value, _, _, props in tiles["symbols"]}
    assert {"train", "val"} <= set(outlines)
    assert all(p["style"] == "no" for p in outlines.values())
    assert outlines["train"]["outline_color"] != outlines["val"]["outline_color"]
    assert not [m for m in report["messages"] if "failed" in m.lower()], report["messages"]

    # rendered over the image: the background lets the image through, water is tinted blue
    with rasterio.open(outputs / "naip.tif") as m:
        classes = m.read(1)
    with (
        rasterio.open(outputs / "image.png") as a,
        rasterio.open(outputs / "mask_over_image.png") as b,
    ):
        image, styled = a.read([1, 2, 3]).astype(int), b.read([1, 2, 3]).astype(int)
    from scipy.ndimage import binary_erosion

    inner_background = binary_erosion(classes == 0, iterations=2)
    inner_water = binary_erosion(classes == 1, iterations=2)
    assert inner_background.mean() > 0.5 and inner_water.sum() > 1000
    assert np.abs(styled - image)[:, inner_background].max() <= 2
    tinted = styled[:, inner_water]
    assert (tinted[2] > tinted[0]).mean() > 0.99  # blue over red
    assert tinted.std(axis=1).min() > 1  # the image shows through: not one flat colour
