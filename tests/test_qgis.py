"""geoseg's outputs in real QGIS: PyQGIS (the system Python, under Xvfb) loads and renders them.

QGIS's Python is not the project's: it is Debian's ``/usr/bin/python3`` with ``python3-qgis``,
so every check runs in a subprocess with a clean environment (no virtualenv, no PROJ_DATA),
the way a QGIS user opens the files. The outputs come from the real NAIP sample through the
geoseg command line. Skipped, with the reason, where QGIS or Xvfb is not installed
(``.ci/run`` installs them).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import EXAMPLE_NAIP, NAIP, REPO

QGIS_PYTHON = "/usr/bin/python3"
SAMPLE = NAIP if NAIP.exists() else EXAMPLE_NAIP
GEOSEG = Path(sys.executable).with_name("geoseg")
PLUGINS = REPO / "qgis"


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


def qgis_process_missing() -> str | None:
    """Why qgis_process cannot run here, or None when it can."""
    if qgis_missing() is not None:
        return qgis_missing()
    if qgis_process_command() is None:
        return "qgis_process not installed (apt-get install qgis)"
    return None


def qgis_process_command() -> str | None:
    # Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which qgis_process 3.22
    # rejects ("Command --noversioncheck not known!"): run the binary it wraps.
    for name in ("/usr/bin/qgis_process.bin", "qgis_process"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def qgis():
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
        # QGIS saves the statistics of a raster it shows in an .aux.xml beside it: the
        # shared samples are inputs and stay as they are.
        "GDAL_PAM_ENABLED": "NO",
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


GDAL_WARNINGS = r"""
import json, sys
from osgeo import gdal
messages = []
gdal.PushErrorHandler(lambda level, number, text: messages.append(text))
for path in sys.argv[1:]:
    dataset = gdal.OpenEx(path, gdal.OF_VECTOR)
    for index in range(dataset.GetLayerCount()):
        dataset.GetLayer(index).GetFeatureCount()
    dataset = None
print(json.dumps(messages))
"""


def system_gdal_warnings(tmp: Path, paths: list[Path]) -> list[str]:
    """What the GDAL of QGIS's Python says when it opens ``paths``."""
    result = subprocess.run(
        [QGIS_PYTHON, "-c", GDAL_WARNINGS, *map(str, paths)],
        env=qgis_env(tmp),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
    geoseg("reproject", out / "naip.tif", "-o", out / "naip_4326.tif", "--dst-crs", "EPSG:4326",
           "-q")  # fmt: skip
    geoseg("prompts", SAMPLE, "--bands", "naip", "--negative", "4", "-o", out / "prompts.gpkg",
           "-q")  # fmt: skip
    geoseg("tile", SAMPLE, "--bands", "naip", "--size", "256", "--overlap", "32",
           "-o", out / "chips", "-q")  # fmt: skip
    return out


def test_outputs_open_styled_in_qgis(qgis, outputs):
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
            "reprojected": str(outputs / "naip_4326.tif"),
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
    # reprojected by geoseg reproject: the same style, and overviews
    assert report["reprojected"]["classes"] == mask["classes"] and report["reprojected"]["pyramids"]
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

    # QGIS LTR's GDAL (3.6 on Debian bookworm) opens the GeoPackages without a warning
    gpkgs = [outputs / "naip.gpkg", outputs / "prompts.gpkg", outputs / "chips" / "tiles.gpkg"]
    assert system_gdal_warnings(outputs, gpkgs) == []

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


# The Processing provider (qgis/geoseg_qgis) -----------------------------------------------


def provider_runner():
    """The plugin's runner module; it imports no QGIS, so it runs in this Python too."""
    sys.path.insert(0, str(PLUGINS))
    try:
        from geoseg_qgis import runner
    finally:
        sys.path.remove(str(PLUGINS))
    return runner


def test_progress_lines_reach_the_caller_and_errors_are_the_cli_line(tmp_path):
    runner = provider_runner()
    progress, output = [], []
    command = [str(GEOSEG), "index", str(SAMPLE), "--bands", "naip", "-o", str(tmp_path / "i.tif")]
    runner.run_geoseg(
        command,
        on_progress=lambda fraction, what: progress.append((fraction, what)),
        on_output=output.append,
    )
    assert progress and progress[-1][0] == 1.0
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)
    assert not [line for line in output if line.startswith("{")]  # JSON lines are progress
    # QGIS's own PROJ and Python settings must not reach geoseg
    env = runner.clean_environment({"PROJ_DATA": "/usr/share/proj", "PYTHONPATH": "/q", "A": "b"})
    assert env["A"] == "b" and "PROJ_DATA" not in env and "PYTHONPATH" not in env
    assert env["GEOSEG_PROGRESS"] == "json"
    with pytest.raises(runner.GeosegCommandError) as failed:
        runner.run_geoseg([*command, "--bands", "sentinel2", "--overwrite"])
    message = str(failed.value)
    assert "sentinel2" in message and "\n" not in message and "geoseg: error" not in message


def test_cancel_stops_geoseg_and_leaves_no_partial_output(tmp_path):
    runner = provider_runner()
    seen = []
    out = tmp_path / "mask.tif"
    command = [str(GEOSEG), "predict", str(SAMPLE), "--backend", "spectral", "--bands", "naip"]
    command += ["-o", str(out), "--size", "64", "--overlap", "32", "--batch-size", "1"]
    with pytest.raises(runner.GeosegCommandError, match="cancelled"):
        runner.run_geoseg(
            command,
            on_progress=lambda fraction, what: seen.append(fraction),
            is_canceled=lambda: bool(seen),
        )
    assert seen and seen[0] < 1.0
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    """``qgis_process(*args)``: QGIS's command line with the geoseg plugin enabled, in an
    environment like QGIS's own (PROJ_DATA pointing at QGIS's PROJ)."""
    reason = qgis_process_missing()
    if reason is not None:
        pytest.skip(reason)
    import zipfile

    sys.path.insert(0, str(PLUGINS))
    try:
        from build_zip import build_zip
    finally:
        sys.path.remove(str(PLUGINS))
    home = tmp_path_factory.mktemp("qgis-home")
    profile = home / ".local/share/QGIS/QGIS3/profiles/default"
    (profile / "QGIS").mkdir(parents=True)
    # installed as the plugin manager installs a zip: unpacked into the profile's plugins
    with zipfile.ZipFile(build_zip(home / "geoseg_qgis.zip")) as archive:
        archive.extractall(profile / "python" / "plugins")
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\ngeoseg_qgis=true\n")
    env = {
        **qgis_env(home),
        "GEOSEG_EXECUTABLE": str(GEOSEG),
        "PROJ_DATA": "/usr/share/proj",  # QGIS's PROJ: geoseg must not see it
    }

    def run(*args, expect_ok: bool = True) -> dict | subprocess.CompletedProcess:
        result = subprocess.run(
            [qgis_process_command(), "--json", "run", *map(str, args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if not expect_ok:
            return result
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads(result.stdout)

    return run


def test_processing_algorithms_run_from_qgis_process(qgis_process, tmp_path):
    out = tmp_path
    predicted = qgis_process(
        "geoseg:predict", "--", f"INPUT={SAMPLE}", "BACKEND=spectral", "BANDS=naip",
        f"OUTPUT={out / 'naip.tif'}", f"VECTOR={out / 'naip.gpkg'}",
    )  # fmt: skip
    assert predicted["results"] == {
        "OUTPUT": str(out / "naip.tif"),
        "VECTOR": str(out / "naip.gpkg"),
    }
    tiled = qgis_process(
        "geoseg:tile", "--", f"INPUT={SAMPLE}", "BANDS=naip", "SIZE=256", "OVERLAP=0",
        f"LABELS={out / 'naip.tif'}", f"OUTPUT={out / 'chips'}",
    )  # fmt: skip
    assert tiled["results"]["TILES"] == f"{out / 'chips' / 'tiles.gpkg'}|layername=tiles"
    assert len(list((out / "chips" / "labels").glob("*.tif"))) == 12
    scored = qgis_process(
        "geoseg:evaluate", "--", f"PREDICTION={out / 'naip.tif'}",
        f"LABELS={out / 'naip.gpkg'}", f"OUTPUT={out / 'scores.json'}",
    )  # fmt: skip
    scores = json.loads((out / "scores.json").read_text())
    assert scored["results"]["OUTPUT"] == str(out / "scores.json")
    assert "water" in json.dumps(scores)  # the polygons are the mask: the classes agree
    qgis_process(
        "geoseg:prompts", "--", f"INPUT={SAMPLE}", "BANDS=naip", "NEGATIVE=2",
        f"OUTPUT={out / 'prompts.gpkg'}",
    )  # fmt: skip
    qgis_process("geoseg:vectorize", "--", f"INPUT={out / 'naip.tif'}", f"OUTPUT={out / 'v.gpkg'}")
    qgis_process(
        "geoseg:index", "--", f"INPUT={SAMPLE}", "BANDS=naip", "INDEX=ndwi",
        f"OUTPUT={out / 'ndwi.tif'}",
    )  # fmt: skip
    report = run_probe(
        out,
        {
            "mask": str(out / "naip.tif"),
            "polygons": f"{out / 'naip.gpkg'}|layername=classes",
            "vectorized": f"{out / 'v.gpkg'}|layername=classes",
            "points": f"{out / 'prompts.gpkg'}|layername=points",
            "tiles": f"{out / 'chips' / 'tiles.gpkg'}|layername=tiles",
        },
    )
    assert report["mask"]["renderer"] == "paletted"
    assert [c[1] for c in report["mask"]["classes"]] == ["background", "water"]
    for name in ("polygons", "vectorized", "points", "tiles"):
        assert report[name]["renderer"] == "categorizedSymbol", name
    with rasterio.open(out / "ndwi.tif") as ndwi:
        assert ndwi.dtypes[0] == "float32" and ndwi.crs.to_epsg() == 26914


def test_train_runs_from_qgis_process(qgis_process, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("geoseg_segformer")
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    tiny = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        sr_ratios=[4, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=32,
    )  # fmt: skip
    SegformerForSemanticSegmentation(tiny).save_pretrained(tmp_path / "tiny")
    geoseg("predict", SAMPLE, "--backend", "spectral", "--bands", "naip", "-o",
           tmp_path / "naip.tif", "-q")  # fmt: skip
    geoseg("tile", SAMPLE, "--bands", "naip", "--size", "128", "--overlap", "0", "--labels",
           tmp_path / "naip.tif", "-o", tmp_path / "chips", "-q")  # fmt: skip
    trained = qgis_process(
        "geoseg:train", "--", f"CHIPS={tmp_path / 'chips'}", "BACKEND=segformer",
        f"MODEL={tmp_path / 'tiny'}", "EPOCHS=1", "DEVICE=cpu", "BATCH_SIZE=4",
        "OPTIONS=num_workers=0",
        f"OUTPUT={tmp_path / 'model'}",
    )  # fmt: skip
    assert trained["results"]["OUTPUT"] == str(tmp_path / "model")
    assert (tmp_path / "model" / "geoseg_model.json").exists()
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return
    # The trained model as ONNX, and predicted with it, both from Processing.
    exported = qgis_process(
        "geoseg:export", "--", f"MODEL={tmp_path / 'model'}", "SIZE=128",
        f"OUTPUT={tmp_path / 'model.onnx'}",
    )  # fmt: skip
    assert exported["results"]["OUTPUT"] == str(tmp_path / "model.onnx")
    qgis_process(
        "geoseg:predict", "--", f"INPUT={SAMPLE}", "BACKEND=onnx", "BANDS=naip",
        f"MODEL_FILE={tmp_path / 'model.onnx'}", f"OUTPUT={tmp_path / 'onnx.tif'}",
    )  # fmt: skip
    with rasterio.open(SAMPLE) as source, rasterio.open(tmp_path / "onnx.tif") as mask:
        assert mask.crs == source.crs and mask.transform == source.transform
        assert mask.shape == source.shape


def test_a_bad_input_fails_with_the_cli_message(qgis_process, tmp_path):
    result = qgis_process(
        "geoseg:predict", "--", f"INPUT={SAMPLE}", "BACKEND=spectral", "BANDS=sentinel2",
        f"OUTPUT={tmp_path / 'bad.tif'}", expect_ok=False,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "sentinel2" in line]
    assert any("names 13 bands" in line for line in errors), result.stdout + result.stderr
    assert not (tmp_path / "bad.tif").exists()


# Inside QGIS: Processing loads the outputs into the project styled; cancel stops geoseg.
IN_PROCESSING = r"""
import json, os, sys
sys.path[:0] = ["/usr/share/qgis/python/plugins", sys.argv[1]]
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject
app = QgsApplication([], False)
app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
import processing
from geoseg_qgis.plugin import GeosegPlugin
plugin = GeosegPlugin()
plugin.initProcessing()
out, sample = sys.argv[2], sys.argv[3]
params = {"INPUT": sample, "BACKEND": "spectral", "BANDS": "naip",
          "OUTPUT": f"{out}/m.tif", "VECTOR": f"{out}/m.gpkg"}
context = QgsProcessingContext()
context.setProject(QgsProject.instance())
processing.runAndLoadResults("geoseg:predict", params, context=context)
layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
report = {"loaded": {name: layer.renderer().type() for name, layer in layers.items()}}
report["mask alpha"] = [c.color.alpha() for c in layers["Class mask"].renderer().classes()]

class Recorder(QgsProcessingFeedback):
    errors = []
    def reportError(self, error, fatalError=False):
        self.errors.append(error)

feedback = Recorder()
feedback.progressChanged.connect(lambda value: feedback.cancel())
algorithm = QgsApplication.processingRegistry().createAlgorithmById("geoseg:predict")
slow = {**params, "SIZE": "64", "OVERLAP": "32", "OUTPUT": f"{out}/c.tif", "VECTOR": None}
_, ok = algorithm.run(slow, QgsProcessingContext(), feedback)
report["cancel"] = [ok, feedback.errors]
report["files"] = sorted(os.listdir(out))

# a Processing model: predict, then vectorize the mask it made
from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                       QgsProcessingModelChildParameterSource as Source,
                       QgsProcessingModelOutput, QgsProcessingModelParameter,
                       QgsProcessingParameterRasterLayer, QgsVectorLayer)
model = QgsProcessingModelAlgorithm("water polygons", "geoseg")
model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"),
                        QgsProcessingModelParameter("image"))
predict = QgsProcessingModelChildAlgorithm("geoseg:predict")
predict.setChildId("predict")
predict.addParameterSources("INPUT", [Source.fromModelParameter("image")])
for name, value in (("BACKEND", "spectral"), ("BANDS", "naip"), ("DEVICE", "auto")):
    predict.addParameterSources(name, [Source.fromStaticValue(value)])
model.addChildAlgorithm(predict)
vectorize = QgsProcessingModelChildAlgorithm("geoseg:vectorize")
vectorize.setChildId("vectorize")
vectorize.addParameterSources("INPUT", [Source.fromChildOutput("predict", "OUTPUT")])
vectorize.addParameterSources("MIN_AREA", [Source.fromStaticValue(1000.0)])
polygons = QgsProcessingModelOutput("polygons")
polygons.setChildId("vectorize")
polygons.setChildOutputName("OUTPUT")
vectorize.setModelOutputs({"polygons": polygons})
model.addChildAlgorithm(vectorize)
model.updateDestinationParameters()
result = processing.run(model, {"image": sample, "vectorize:polygons": f"{out}/model.gpkg"})
layer = QgsVectorLayer(result["vectorize:polygons"], "model", "ogr")
report["model"] = sorted({f["class_name"] for f in layer.getFeatures()})
print("PROBE " + json.dumps(report), flush=True)
os._exit(0)
"""


def test_processing_loads_outputs_styled_cancels_and_runs_in_models(qgis, tmp_path):
    script = tmp_path / "in_processing.py"
    script.write_text(IN_PROCESSING)
    out = tmp_path / "out"
    out.mkdir()
    env = {**qgis_env(tmp_path), "GEOSEG_EXECUTABLE": str(GEOSEG), "PROJ_DATA": "/usr/share/proj"}
    result = subprocess.run(
        ["xvfb-run", "-a", QGIS_PYTHON, str(script), str(PLUGINS), str(out), str(SAMPLE)],
        env={**env, "QT_QPA_PLATFORM": "xcb"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    report = json.loads(lines[-1][len("PROBE ") :])
    assert report["loaded"] == {"Class mask": "paletted", "Class polygons": "categorizedSymbol"}
    assert report["mask alpha"] == [0, 191]  # its .qml, not the opaque colour table
    ok, errors = report["cancel"]
    assert not ok and any("cancelled" in error for error in errors)
    assert report["files"] == ["m.gpkg", "m.qml", "m.tif"]  # nothing of the cancelled run
    assert report["model"] == ["water"]  # predict -> vectorize as a Processing model


def test_classify_chips_runs_from_qgis_process(qgis_process, tmp_path):
    """A chip classifier from Processing: Tile with chip labels, then Classify chips, whose
    footprints and coarse raster open styled by class on the source grid."""
    pytest.importorskip("transformers")
    pytest.importorskip("geoseg_segformer")
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    tiny = ViTConfig(
        image_size=128, patch_size=32, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=1, intermediate_size=32, num_labels=2,
    )  # fmt: skip
    ViTForImageClassification(tiny).save_pretrained(tmp_path / "tiny")
    geoseg("predict", SAMPLE, "--backend", "spectral", "--bands", "naip", "-o",
           tmp_path / "naip.tif", "-q")  # fmt: skip
    qgis_process(
        "geoseg:tile", "--", f"INPUT={SAMPLE}", "BANDS=naip", "SIZE=128", "OVERLAP=0",
        f"LABELS={tmp_path / 'naip.tif'}", "CHIP_LABELS=majority", f"OUTPUT={tmp_path / 'chips'}",
    )  # fmt: skip
    info = json.loads((tmp_path / "chips" / "dataset.json").read_text())
    assert info["chip_labels"] == "majority" and sum(info["counts"]["class_chips"].values()) == 48
    geoseg("train", tmp_path / "chips", "--backend", "hf-classifier", "--model",
           tmp_path / "tiny", "-o", tmp_path / "model", "--epochs", "1", "-q")  # fmt: skip
    classified = qgis_process(
        "geoseg:classify", "--", f"INPUT={SAMPLE}", "BACKEND=hf-classifier", "BANDS=naip",
        f"MODEL={tmp_path / 'model'}", f"OUTPUT={tmp_path / 'classes.tif'}",
    )  # fmt: skip
    chips = f"{tmp_path / 'classes.gpkg'}|layername=chips"
    assert classified["results"] == {"OUTPUT": str(tmp_path / "classes.tif"), "CHIPS": chips}
    with rasterio.open(SAMPLE) as source, rasterio.open(tmp_path / "classes.tif") as coarse:
        step = 128 * source.res[0]
        assert coarse.crs == source.crs and coarse.shape == (6, 8)
        assert coarse.transform == source.transform * rasterio.Affine.scale(128)
        assert coarse.res == (step, step)
    report = run_probe(tmp_path, {"coarse": str(tmp_path / "classes.tif"), "chips": chips})
    assert report["coarse"]["renderer"] == "paletted"
    assert report["chips"]["renderer"] == "categorizedSymbol"
    assert report["chips"]["features"] == 48
