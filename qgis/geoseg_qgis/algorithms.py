"""One Processing algorithm per geoseg command that matters in QGIS.

Each algorithm turns its parameters into the command's arguments (layers become their
file paths), runs the configured geoseg executable (``runner.run_geoseg``) and loads its
outputs with their default styles (the ``.qml`` beside a mask, the ``layer_styles`` of a
GeoPackage).
"""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
)

from .runner import GeosegCommandError, run_geoseg

DEVICES = ["auto", "cpu", "cuda", "mps"]


class DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies a loaded output's default style: its ``.qml``, or its GeoPackage style."""

    _alive: list[DefaultStyle] = []  # QGIS keeps a pointer only: Python must hold them

    @classmethod
    def create(cls) -> DefaultStyle:
        instance = cls()
        cls._alive.append(instance)
        return instance

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        message, ok = layer.loadDefaultStyle()
        if not ok and feedback is not None:
            feedback.pushInfo(f"{layer.name()}: no default style ({message})")
        layer.triggerRepaint()


class GeosegAlgorithm(QgsProcessingAlgorithm):
    """Runs ``geoseg <command> ...``; subclasses declare parameters and build arguments."""

    command = ""
    title = ""
    help_text = ""

    def __init__(self, provider=None) -> None:
        super().__init__()
        self._provider_ref = provider

    # identity ----------------------------------------------------------------------------
    def name(self):
        return self.command

    def displayName(self):  # noqa: N802
        return self.title

    def shortHelpString(self):  # noqa: N802
        return self.help_text

    def createInstance(self):  # noqa: N802
        return type(self)(self._provider_ref)

    # running -----------------------------------------------------------------------------
    def geoseg_provider(self):
        return self._provider_ref or self.provider()

    def arguments(self, parameters, context, feedback) -> tuple[list[str], dict]:
        """The command's arguments after ``geoseg <command>``, and the algorithm's results."""
        raise NotImplementedError

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        provider = self.geoseg_provider()
        try:
            executable = provider.executable()
        except GeosegCommandError as exc:
            raise QgsProcessingException(str(exc)) from None
        args, results = self.arguments(parameters, context, feedback)
        command = [executable, self.command, *args]
        feedback.pushCommandInfo(" ".join(_quote(part) for part in command))

        shown = []

        def progress(fraction, what):
            if fraction is not None:
                feedback.setProgress(100.0 * fraction)
            if not shown or shown[-1] != what:
                shown.append(what)
                feedback.setProgressText(what)

        try:
            run_geoseg(
                command,
                on_progress=progress,
                on_output=feedback.pushConsoleInfo,
                is_canceled=feedback.isCanceled,
            )
        except GeosegCommandError as exc:
            raise QgsProcessingException(str(exc)) from None
        self.style_outputs(context, results)
        return results

    def style_outputs(self, context: QgsProcessingContext, results: dict) -> None:
        """Give this algorithm's outputs that QGIS loads on completion their default style."""
        ours = {str(value) for value in results.values()}
        for path in list(context.layersToLoadOnCompletion()):
            if path in ours:
                details = context.layerToLoadOnCompletionDetails(path)
                details.setPostProcessor(DefaultStyle.create())

    # parameter helpers -------------------------------------------------------------------
    def add_raster(self, name="INPUT", description="Raster", optional=False):
        self.addParameter(QgsProcessingParameterRasterLayer(name, description, optional=optional))

    def add_string(self, name, description, default=None, optional=True):
        self.addParameter(
            QgsProcessingParameterString(name, description, defaultValue=default, optional=optional)
        )

    def add_bands(self):
        self.add_string(
            "BANDS",
            "Bands: a preset (naip, sentinel2, landsat8, rgb) or NAME=INDEX pairs, e.g. "
            "red=1,green=2,blue=3,nir=4 (empty: the file's band descriptions)",
        )

    def add_backend(self, trains: bool = False, kind: str | None = "pixels"):
        names = self.geoseg_provider().backend_names(trains=trains, kind=kind)
        self.addParameter(
            QgsProcessingParameterEnum(
                "BACKEND",
                "Backend (from geoseg backends)",
                options=names,
                defaultValue="spectral" if "spectral" in names else (names or [None])[0],
                usesStaticStrings=True,
            )
        )

    def add_options(self):
        self.add_string(
            "OPTIONS", "Backend options: KEY=VALUE pairs separated by spaces (see geoseg backends)"
        )

    def raster_path(self, parameters, name, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: choose a raster layer or file")
        return _file_of(layer)

    def layer_path(self, parameters, name, context) -> str | None:
        layer = self.parameterAsLayer(parameters, name, context)
        return None if layer is None else _file_of(layer)

    def text(self, parameters, name, context) -> str:
        return (self.parameterAsString(parameters, name, context) or "").strip()


def _file_of(layer) -> str:
    """The file behind a layer of the project; geoseg reads files, not QGIS layers."""
    provider = layer.providerType()
    if provider not in ("gdal", "ogr"):
        raise QgsProcessingException(
            f"{layer.name()}: a {provider} layer has no file geoseg can read; save it as a "
            f"GeoTIFF or GeoPackage first"
        )
    parts = QgsProviderRegistry.instance().decodeUri(provider, layer.source())
    path = parts.get("path") or layer.source().split("|")[0]
    if not os.path.exists(path):
        raise QgsProcessingException(f"{layer.name()}: {path} is not a file geoseg can read")
    return path


def _quote(part: str) -> str:
    return f'"{part}"' if " " in part else part


def _flag(args: list[str], option: str, value) -> None:
    """Append ``option value`` when a value was given."""
    if value not in (None, ""):
        args += [option, str(value)]


def _backend_options(args: list[str], text: str) -> None:
    for pair in text.replace(",", " ").split():
        args += ["--option", pair]


class PredictAlgorithm(GeosegAlgorithm):
    command = "predict"
    title = "Predict class mask"
    help_text = (
        "Runs geoseg predict on a raster: a class mask (Cloud Optimized GeoTIFF, styled by "
        "its .qml: background transparent) and optionally class polygons (GeoPackage, styled "
        "by class). Runs the geoseg executable set in the provider's settings."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Orthoimage or satellite raster")
        self.add_backend()
        self.add_bands()
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                "Model folder (empty: the backend's default)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL_FILE",
                "Model file, for the onnx backend (an .onnx from geoseg export or Deepness)",
                extension="onnx",
                optional=True,
            )
        )
        self.add_string("SIZE", "Chip size: pixels, or metres with m (empty: the backend's)")
        self.add_string("OVERLAP", "Overlap: pixels, or metres with m (empty: the backend's)")
        self.add_options()
        self.addParameter(
            QgsProcessingParameterEnum(
                "DEVICE", "Device", options=DEVICES, defaultValue="auto", usesStaticStrings=True
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Class mask"))
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "VECTOR",
                "Class polygons",
                type=QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=True,
            )
        )

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        vector = self.parameterAsOutputLayer(parameters, "VECTOR", context)
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        args += ["--backend", self.parameterAsEnumString(parameters, "BACKEND", context)]
        _flag(args, "--bands", self.text(parameters, "BANDS", context))
        folder = self.text(parameters, "MODEL", context)
        file = self.text(parameters, "MODEL_FILE", context)
        if folder and file:
            raise QgsProcessingException(
                "MODEL and MODEL_FILE: give one model, a folder or an .onnx file"
            )
        _flag(args, "--model", folder or file)
        _flag(args, "--size", self.text(parameters, "SIZE", context))
        _flag(args, "--overlap", self.text(parameters, "OVERLAP", context))
        _flag(args, "--device", self.parameterAsEnumString(parameters, "DEVICE", context))
        _backend_options(args, self.text(parameters, "OPTIONS", context))
        results = {"OUTPUT": output}
        if vector:
            if not vector.lower().endswith(".gpkg"):
                raise QgsProcessingException(f"{vector}: class polygons are written as .gpkg")
            args += ["--vector", vector]
            results["VECTOR"] = vector
        return args, results


class ClassifyChipsAlgorithm(GeosegAlgorithm):
    command = "predict"
    title = "Classify chips"
    help_text = (
        "Runs geoseg predict with a chip classifier (a backend of kind chips, e.g. "
        "hf-classifier): one class per chip, as chip footprints with the class and its "
        "probabilities (GeoPackage, styled by class) and a coarse class raster, one pixel per "
        "chip (Cloud Optimized GeoTIFF with its .qml)."
    )

    def name(self):
        return "classify"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Orthoimage or satellite raster")
        self.add_backend(kind="chips")
        self.add_bands()
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                "Model folder (from geoseg train) or a classification checkpoint folder",
                behavior=QgsProcessingParameterFile.Folder,
            )
        )
        self.add_string("SIZE", "Chip size: pixels, or metres with m (empty: the model's)")
        self.add_string("OVERLAP", "Overlap: pixels, or metres with m (empty: none)")
        self.addParameter(
            QgsProcessingParameterEnum(
                "DEVICE", "Device", options=DEVICES, defaultValue="auto", usesStaticStrings=True
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Coarse class raster"))
        self.addOutput(QgsProcessingOutputVectorLayer("CHIPS", "Chip classes"))

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if not output.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(f"{output}: the class raster is written as .tif")
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        args += ["--backend", self.parameterAsEnumString(parameters, "BACKEND", context)]
        _flag(args, "--bands", self.text(parameters, "BANDS", context))
        _flag(args, "--model", self.text(parameters, "MODEL", context))
        _flag(args, "--size", self.text(parameters, "SIZE", context))
        _flag(args, "--overlap", self.text(parameters, "OVERLAP", context))
        _flag(args, "--device", self.parameterAsEnumString(parameters, "DEVICE", context))
        chips = f"{os.path.splitext(output)[0]}.gpkg|layername=chips"
        if context.project() is not None:
            details = QgsProcessingContext.LayerDetails("chip classes", context.project(), "CHIPS")
            context.addLayerToLoadOnCompletion(chips, details)
        return args, {"OUTPUT": output, "CHIPS": chips}


class TileAlgorithm(GeosegAlgorithm):
    command = "tile"
    title = "Tile into training chips"
    help_text = (
        "Runs geoseg tile: overlapping chips (and label chips) in a folder, with tiles.gpkg "
        "(chip footprints styled by train/val split) and dataset.json."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Orthoimage or satellite raster")
        self.add_bands()
        self.add_string(
            "SIZE", "Chip size: pixels, or metres with m", default="512", optional=False
        )
        self.add_string(
            "OVERLAP", "Overlap: pixels, or metres with m", default="64", optional=False
        )
        self.addParameter(
            QgsProcessingParameterMapLayer(
                "LABELS", "Labels (class raster or polygons)", optional=True
            )
        )
        self.add_string("LABEL_FIELD", "Label field of the polygons (class ids or names)")
        self.addParameter(
            QgsProcessingParameterFile("CLASSES", "Classes JSON", extension="json", optional=True)
        )
        self.add_string(
            "CHIP_LABELS",
            "One class per chip, for chip classifiers: majority, centre or any:CLASS (empty: "
            "pixel labels only)",
        )
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Chip folder"))
        self.addOutput(QgsProcessingOutputVectorLayer("TILES", "Chip footprints"))

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        _flag(args, "--bands", self.text(parameters, "BANDS", context))
        _flag(args, "--size", self.text(parameters, "SIZE", context))
        _flag(args, "--overlap", self.text(parameters, "OVERLAP", context))
        _flag(args, "--labels", self.layer_path(parameters, "LABELS", context))
        _flag(args, "--label-field", self.text(parameters, "LABEL_FIELD", context))
        _flag(args, "--classes", self.text(parameters, "CLASSES", context))
        _flag(args, "--chip-labels", self.text(parameters, "CHIP_LABELS", context))
        tiles = os.path.join(output, "tiles.gpkg")
        if context.project() is not None:
            details = QgsProcessingContext.LayerDetails(
                "chip footprints", context.project(), "TILES"
            )
            context.addLayerToLoadOnCompletion(f"{tiles}|layername=tiles", details)
        return args, {"OUTPUT": output, "TILES": f"{tiles}|layername=tiles"}


class TrainAlgorithm(GeosegAlgorithm):
    command = "train"
    title = "Train a model"
    help_text = "Runs geoseg train on a chip folder written by geoseg tile."

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFile(
                "CHIPS",
                "Chip folder (from geoseg tile)",
                behavior=QgsProcessingParameterFile.Folder,
            )
        )
        self.add_backend(trains=True, kind=None)
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                "Base checkpoint folder (empty: the backend's)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "EPOCHS", "Epochs (0: the backend's)", defaultValue=0, minValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "BATCH_SIZE", "Chips per step (0: the backend's)", defaultValue=0, minValue=0
            )
        )
        self.add_options()
        self.addParameter(
            QgsProcessingParameterEnum(
                "DEVICE", "Device", options=DEVICES, defaultValue="auto", usesStaticStrings=True
            )
        )
        self.addParameter(QgsProcessingParameterBoolean("RESUME", "Resume", defaultValue=False))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Model folder"))

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["--backend", self.parameterAsEnumString(parameters, "BACKEND", context)]
        args += [self.text(parameters, "CHIPS", context), "-o", output]
        _flag(args, "--model", self.text(parameters, "MODEL", context))
        epochs = self.parameterAsInt(parameters, "EPOCHS", context)
        _flag(args, "--epochs", epochs or None)
        _flag(args, "--batch-size", self.parameterAsInt(parameters, "BATCH_SIZE", context) or None)
        _flag(args, "--device", self.parameterAsEnumString(parameters, "DEVICE", context))
        if self.parameterAsBool(parameters, "RESUME", context):
            args.append("--resume")
        _backend_options(args, self.text(parameters, "OPTIONS", context))
        return args, {"OUTPUT": output}


class EvaluateAlgorithm(GeosegAlgorithm):
    command = "evaluate"
    title = "Evaluate a mask against labels"
    help_text = (
        "Runs geoseg evaluate: per-class IoU, F1, precision, recall and confusion matrix "
        "of a predicted mask against a class raster or labelled polygons."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("PREDICTION", "Predicted class mask")
        self.addParameter(
            QgsProcessingParameterMapLayer("LABELS", "Labels (class raster or polygons)")
        )
        self.add_string("LABEL_FIELD", "Label field of the polygons (class ids or names)")
        self.addParameter(
            QgsProcessingParameterFile("CLASSES", "Classes JSON", extension="json", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFileDestination("OUTPUT", "Scores (JSON)", "JSON files (*.json)")
        )

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        labels = self.layer_path(parameters, "LABELS", context)
        if labels is None:
            raise QgsProcessingException("LABELS: choose a class raster or a polygon layer")
        args = [self.raster_path(parameters, "PREDICTION", context), labels]
        args += ["--json", output, "--overwrite"]
        _flag(args, "--label-field", self.text(parameters, "LABEL_FIELD", context))
        _flag(args, "--classes", self.text(parameters, "CLASSES", context))
        return args, {"OUTPUT": output}


class PromptsAlgorithm(GeosegAlgorithm):
    command = "prompts"
    title = "Draw SAM prompts"
    help_text = (
        "Runs geoseg prompts: positive/negative points and boxes from a water index, in a "
        "GeoPackage (layers points and boxes, styled) to check or edit before geoseg "
        "predict --prompts."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Orthoimage or satellite raster")
        self.add_bands()
        self.add_string("INDEX", "Water index (empty: geoseg's default)")
        self.addParameter(
            QgsProcessingParameterNumber(
                "NEGATIVE", "Negative points per chip", defaultValue=0, minValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Prompts (GeoPackage)", "GeoPackage (*.gpkg)"
            )
        )
        self.addOutput(QgsProcessingOutputVectorLayer("POINTS", "Prompt points"))
        self.addOutput(QgsProcessingOutputVectorLayer("BOXES", "Prompt boxes"))

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        _flag(args, "--bands", self.text(parameters, "BANDS", context))
        _flag(args, "--index", self.text(parameters, "INDEX", context))
        _flag(args, "--negative", self.parameterAsInt(parameters, "NEGATIVE", context))
        results = {"OUTPUT": output}
        for key, layer in (("POINTS", "points"), ("BOXES", "boxes")):
            uri = f"{output}|layername={layer}"
            results[key] = uri
            if context.project() is not None:
                details = QgsProcessingContext.LayerDetails(
                    f"prompt {layer}", context.project(), key
                )
                context.addLayerToLoadOnCompletion(uri, details)
        return args, results


class VectorizeAlgorithm(GeosegAlgorithm):
    command = "vectorize"
    title = "Vectorize a class mask"
    help_text = (
        "Runs geoseg vectorize: class polygons dissolved across tile seams, styled by class."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Class mask")
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA",
                "Minimum area (m²)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SIMPLIFY",
                "Simplify (metres)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Class polygons", type=QgsProcessing.TypeVectorPolygon
            )
        )

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        if not output.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"{output}: class polygons are written as .gpkg")
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        _flag(args, "--min-area", self.parameterAsDouble(parameters, "MIN_AREA", context) or None)
        _flag(args, "--simplify", self.parameterAsDouble(parameters, "SIMPLIFY", context) or None)
        return args, {"OUTPUT": output}


class IndexAlgorithm(GeosegAlgorithm):
    command = "index"
    title = "Spectral index"
    help_text = "Runs geoseg index: NDWI, MNDWI, NDVI or the HSV rule as a float32 GeoTIFF."

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_raster("INPUT", "Orthoimage or satellite raster")
        self.add_bands()
        self.add_string("INDEX", "Index: ndwi, mndwi, ndvi or hsv", default="ndwi", optional=False)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Index raster"))

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = [self.raster_path(parameters, "INPUT", context), "-o", output, "--overwrite"]
        _flag(args, "--bands", self.text(parameters, "BANDS", context))
        _flag(args, "--index", self.text(parameters, "INDEX", context))
        return args, {"OUTPUT": output}


class ExportAlgorithm(GeosegAlgorithm):
    command = "export"
    title = "Export a model to ONNX"
    help_text = (
        "Runs geoseg export: a model folder from geoseg train as one ONNX file with its "
        "metadata, for the onnx backend (no torch needed) and the Deepness plugin."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                "Model folder (from geoseg train)",
                behavior=QgsProcessingParameterFile.Folder,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SIZE", "Chip size in pixels (a multiple of 16)", defaultValue=512, minValue=16
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "FP16", "Half-precision weights (about half the file size)", defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination("OUTPUT", "ONNX model", "ONNX models (*.onnx)")
        )

    def arguments(self, parameters, context, feedback):
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith(".onnx"):
            raise QgsProcessingException(f"{output}: ONNX models are written as .onnx")
        size = self.parameterAsInt(parameters, "SIZE", context)
        args = ["--model", self.text(parameters, "MODEL", context), "-o", output]
        args += ["--size", str(size), "--overwrite"]
        if self.parameterAsBool(parameters, "FP16", context):
            args.append("--fp16")
        return args, {"OUTPUT": output}


ALGORITHMS = (
    PredictAlgorithm,
    ClassifyChipsAlgorithm,
    TileAlgorithm,
    TrainAlgorithm,
    ExportAlgorithm,
    EvaluateAlgorithm,
    PromptsAlgorithm,
    VectorizeAlgorithm,
    IndexAlgorithm,
)
