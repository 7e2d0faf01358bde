"""ONNX export of trained models: the contract, and the metadata geoseg and Deepness read.

``geoseg export --model DIR -o model.onnx`` asks the backend that trained ``DIR`` (named
in its ``geoseg_model.json``) for an ONNX graph through ``Backend.export_onnx``, then
writes the metadata into the file, checks it with the ONNX checker and moves it to its
final name. The graph every backend exports takes one input and gives one output:

- input ``image`` ``(N, B, S, S)`` float32: the model's bands in ``ExportedModel.bands``
  order, raw source values (the normalisation is inside the graph), S = the chip size;
- output ``probabilities`` ``(N, C, S, S)`` float32: class probabilities (softmax) in
  ``ExportedModel.classes`` channel order.

Metadata (``metadata_props``, every value JSON text): the keys of the QGIS Deepness
plugin (``model_type``, ``class_names``, ``resolution`` in cm/px, ``tiles_size``,
``tiles_overlap`` in percent, ``seg_thresh``, ``seg_small_segment``,
``standardization_mean``, ``standardization_std``) and ``geoseg`` (see
``geoseg_metadata``). Deepness scales 8-bit pixels to 0..1 and then applies
``(x - mean) / std``; geoseg writes mean 0 and std 1/255 so that the graph receives the
raw values again and its own normalisation applies, the same in Deepness and in geoseg.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.classes import ClassMap
from geoseg.errors import BackendError, OptionError, WeightsError

__all__ = [
    "ExportSettings",
    "ExportedModel",
    "OnnxModelInfo",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "read_metadata",
]

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: Opset of the graphs torch's exporter writes by default (its lowest for dynamo export).
DEFAULT_OPSET = 18
DEFAULT_SIZE = 512
#: Version of the ``geoseg`` metadata entry.
METADATA_FORMAT = 1
#: The keys Deepness reads for a segmentation model (its "Adding metadata" page).
DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tiles_size",
    "tiles_overlap",
    "seg_thresh",
    "seg_small_segment",
    "standardization_mean",
    "standardization_std",
)


@dataclass(frozen=True)
class ExportSettings:
    """What ``geoseg export`` asks of a backend.

    ``size``: chip size in pixels (the graph's fixed height and width). ``opset``: ONNX
    opset. ``dynamic_batch``: a free batch dimension (otherwise 1). ``fp16``: half
    precision weights and arithmetic, float32 input and output.
    """

    size: int = DEFAULT_SIZE
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = False
    fp16: bool = False

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 16:
            raise OptionError(f"--size must be a multiple of 16 and >= 16, got {self.size}")
        if not 13 <= self.opset <= 23:
            raise OptionError(f"--opset must be between 13 and 23, got {self.opset}")


@dataclass(frozen=True)
class ExportedModel:
    """What a backend's exported graph reads and gives: ``bands`` in input order,
    ``classes`` in output channel order, and the ``normalization`` baked into it."""

    bands: tuple[str, ...]
    classes: ClassMap
    normalization: dict[str, Any]


def export_model(
    model: str | Path,
    output: str | Path,
    settings: ExportSettings,
    *,
    backend_name: str | None = None,
    overwrite: bool = True,
) -> dict[str, str]:
    """Export the trained model folder ``model`` to ``output`` (.onnx); its metadata.

    The backend is the one named in the folder's manifest (``backend_name`` overrides it
    for a folder without one).
    """
    from geoseg.atomic import atomic_output
    from geoseg.manifest import read_manifest
    from geoseg.plugins import create_backend

    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise OptionError(f"{output}: the output must be a .onnx file")
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{model}: not a model folder; give a folder written by geoseg train")
    manifest = read_manifest(folder)
    if manifest is None and backend_name is None:
        raise WeightsError(
            f"{folder}: no geoseg_model.json, so the backend that trained it is unknown; "
            "give --backend NAME or retrain with geoseg train"
        )
    name = backend_name or manifest["backend"]["name"]
    if manifest is not None and name != manifest["backend"]["name"]:
        raise BackendError(
            f"{folder}: the model was trained by backend {manifest['backend']['name']!r}, "
            f"not {name!r}; drop --backend"
        )
    backend = create_backend(name)
    with atomic_output(output, overwrite=overwrite) as tmp:
        exported = backend.export_onnx(str(folder), tmp, settings)
        metadata = onnx_metadata(exported, manifest, settings, backend_name=name)
        finish_graph(tmp, metadata, settings)
    return metadata


def finish_graph(path: Path, metadata: dict[str, str], settings: ExportSettings) -> None:
    """Write ``metadata`` into the graph at ``path`` (fp16 if asked) and check it."""
    import onnx

    graph = onnx.load(str(path))
    if settings.fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Input and output stay float32: Deepness and geoseg feed float32 pixels.
        graph = convert_float_to_float16(graph, keep_io_types=True)
        _sort_nodes(graph.graph)  # the converter appends its input casts at the end
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name = "geoseg"
    onnx.save(graph, str(path))
    check_graph(path)


def _sort_nodes(graph) -> None:
    """Order ``graph``'s nodes so that each comes after the nodes it reads from."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave it for the checker to report
            ordered.extend(pending)
            break
        for node in ready:
            known.update(node.output)
        ordered.extend(ready)
        pending = [n for n in pending if all(n is not r for r in ready)]
    nodes = [n.SerializeToString() for n in ordered]
    del graph.node[:]
    for data in nodes:
        graph.node.add().ParseFromString(data)


def check_graph(path: Path) -> None:
    """The ONNX checker on the file at ``path`` (full check, with shape inference)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BackendError(f"{path}: the exported graph fails the ONNX checker: {exc}") from None


def onnx_metadata(
    exported: ExportedModel,
    manifest: dict[str, Any] | None,
    settings: ExportSettings,
    *,
    backend_name: str,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: Deepness's keys and ``geoseg``."""
    import geoseg

    manifest = manifest or {}
    classes = exported.classes
    chip_size = manifest.get("chip_size") or settings.size
    overlap = manifest.get("overlap")
    if not overlap:
        from geoseg.predict import DEFAULT_OVERLAP

        overlap = min(DEFAULT_OVERLAP, settings.size // 4)
        chip_size = settings.size
    deepness: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(classes)},
        "tiles_size": settings.size,
        "tiles_overlap": int(round(100 * overlap / chip_size)),
        # geoseg takes the most probable class; with more than two classes any threshold
        # above 1/C could leave pixels unclassified in Deepness.
        "seg_thresh": 0.5 if len(classes) <= 2 else 0.0,
        "seg_small_segment": 0,
        # Deepness divides 8-bit values by 255 first: this undoes it, the graph normalises.
        "standardization_mean": [0.0] * len(exported.bands),
        "standardization_std": [1 / 255] * len(exported.bands),
    }
    resolution = resolution_cm(manifest)
    if resolution is not None:
        deepness["resolution"] = resolution
    own = {
        "format": METADATA_FORMAT,
        "geoseg_version": geoseg.__version__,
        "backend": manifest.get("backend") or {"name": backend_name},
        "input": {
            "name": INPUT_NAME,
            "bands": list(exported.bands),
            "values": "raw",
            "size": settings.size,
            "dynamic_batch": settings.dynamic_batch,
        },
        "output": {"name": OUTPUT_NAME, "kind": "probabilities"},
        "classes": classes.to_json(),
        "normalization": exported.normalization,
        "fp16": settings.fp16,
        "opset": settings.opset,
        "manifest": manifest or None,
    }
    values = {key: json.dumps(value) for key, value in deepness.items()}
    # Deepness up to 0.6 reads "tile_size", its documentation "tiles_size": write both.
    values["tile_size"] = values["tiles_size"]
    values["geoseg"] = json.dumps(own)
    return values


def resolution_cm(manifest: dict[str, Any]) -> float | None:
    """Pixel size of the training chips in cm (Deepness's ``resolution``), if known.

    From the manifest's ``resolution`` and ``crs``, or the chip set's ``dataset.json`` when
    the manifest predates them; degrees count 111.32 km each (at the equator).
    """
    resolution, crs = manifest.get("resolution"), manifest.get("crs")
    if resolution is None:
        dataset = (manifest.get("training") or {}).get("dataset")
        info = Path(dataset) / "dataset.json" if dataset else None
        if info is None or not info.is_file():
            return None
        try:
            data = json.loads(info.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        resolution, crs = data.get("resolution"), data.get("crs")
    if not resolution:
        return None
    pixel = float(abs(resolution[0]) if isinstance(resolution, list) else resolution)
    metres = pixel
    if crs:
        from pyproj import CRS

        parsed = CRS.from_user_input(crs)
        if parsed.is_geographic:
            metres = pixel * 111_320.0
        else:
            factor = parsed.axis_info[0].unit_conversion_factor if parsed.axis_info else 1.0
            metres = pixel * (factor or 1.0)
    return round(metres * 100, 3) if math.isfinite(metres) else None


@dataclass(frozen=True)
class OnnxModelInfo:
    """What ``read_metadata`` finds in an ONNX model file.

    ``bands``: input band names (geoseg exports) or None; ``classes``; ``size``: the
    fixed chip size, or None when the graph's height and width are free; ``batch``: the
    fixed batch size or None; ``mean``/``std``: Deepness's standardisation, applied to
    values scaled by 1/255 (None: geoseg's raw input); ``fill``: per-band raw value for
    invalid pixels (the training mean, so that they normalise to 0), or None; ``geoseg``:
    geoseg's own metadata entry, or None for a model from elsewhere.
    """

    bands: tuple[str, ...] | None
    channels: int
    classes: ClassMap
    size: int | None
    batch: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    fill: tuple[float, ...] | None
    overlap_percent: int | None
    geoseg: dict[str, Any] | None
    input_name: str


def read_metadata(path: str | Path, session: Any) -> OnnxModelInfo:
    """The model description of an ONNX file opened as an onnxruntime ``session``.

    A geoseg export describes itself; a model from elsewhere needs Deepness's
    ``class_names`` (else classes are ``class_0``...) and gets Deepness's 1/255 scaling
    and standardisation (default mean 0, std 1 after scaling).
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise WeightsError(
            f"{path}: a segmentation model must take one input and give class "
            f"probabilities; this one takes {len(inputs)} inputs"
        )
    shape = list(inputs[0].shape)
    out_shape = list(outputs[0].shape)
    if len(shape) != 4 or len(out_shape) != 4:
        raise WeightsError(
            f"{path}: input {shape} / output {out_shape}: expected (N, bands, H, W) -> "
            "(N, classes, H, W), as Deepness's segmentation models"
        )
    channels = shape[1] if isinstance(shape[1], int) else None
    if channels is None:
        raise WeightsError(f"{path}: the input's band dimension is not fixed ({shape})")
    meta = session.get_modelmeta().custom_metadata_map
    own = _json_value(path, meta, "geoseg")
    if own is not None:
        classes = ClassMap.from_json(own["classes"], source=str(path))
        bands = tuple(own["input"]["bands"])
        normalization = own.get("normalization") or {}
        fill = tuple(normalization["mean"]) if normalization.get("mean") else None
        mean = std = None
    else:
        names = _deepness_class_names(path, meta)
        n_out = out_shape[1] if isinstance(out_shape[1], int) else None
        if names is None:
            if n_out is None:
                raise WeightsError(
                    f"{path}: no class_names in the metadata and no fixed class dimension; "
                    "add Deepness metadata (class_names) to the model"
                )
            names = [f"class_{i}" for i in range(max(n_out, 2))]
        if n_out == 1 and len(names) == 2:
            raise WeightsError(
                f"{path}: a single-channel (sigmoid) output is not supported; export two "
                "class channels (softmax)"
            )
        classes = ClassMap.from_names(names)
        bands = None
        fill = None
        mean = _float_list(path, meta, "standardization_mean", channels, 0.0)
        std = _float_list(path, meta, "standardization_std", channels, 1.0)
    size = shape[2] if isinstance(shape[2], int) else None
    overlap = _json_value(path, meta, "tiles_overlap")
    return OnnxModelInfo(
        bands=bands,
        channels=channels,
        classes=classes,
        size=size,
        batch=shape[0] if isinstance(shape[0], int) else None,
        mean=mean,
        std=std,
        fill=fill,
        overlap_percent=int(overlap) if overlap is not None else None,
        geoseg=own,
        input_name=inputs[0].name,
    )


def _json_value(path, meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        if key == "class_names":
            import ast

            try:  # Deepness also accepts Python dict text ({0: 'a'})
                return ast.literal_eval(meta[key])
            except (ValueError, SyntaxError):
                pass
        raise WeightsError(f"{path}: metadata {key!r} is not JSON ({meta[key][:60]!r})") from None


def _deepness_class_names(path, meta: dict[str, str]) -> list[str] | None:
    names = _json_value(path, meta, "class_names")
    if names is None:
        names = _json_value(path, meta, "names")
    if names is None:
        return None
    if isinstance(names, list):
        return [str(n) for n in names]
    try:
        pairs = sorted((int(k), str(v)) for k, v in names.items())
    except (AttributeError, ValueError, TypeError):
        raise WeightsError(f"{path}: metadata class_names must map ids to names") from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise WeightsError(f"{path}: metadata class_names ids must be 0, 1, 2, ... without gaps")
    return [v for _, v in pairs]


def _float_list(path, meta, key: str, channels: int, default: float) -> tuple[float, ...]:
    value = _json_value(path, meta, key)
    if value is None:
        return (default,) * channels
    values = [float(v) for v in (value if isinstance(value, list) else [value])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise WeightsError(
            f"{path}: metadata {key} has {len(values)} values for {channels} input bands"
        )
    return tuple(values)


def export_complete(path: str | Path, settings: ExportSettings) -> bool:
    """True when ``path`` is a checked geoseg export made with these settings."""
    import onnx

    path = Path(path)
    if not path.is_file():
        return False
    try:
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False)
        own = json.loads({p.key: p.value for p in graph.metadata_props}["geoseg"])
        made = (own["input"]["size"], own["opset"], own["fp16"], own["input"]["dynamic_batch"])
    except (onnx.checker.ValidationError, OSError, KeyError, ValueError, TypeError):
        return False
    except Exception:  # protobuf's DecodeError for a file cut short
        return False
    return made == (settings.size, settings.opset, settings.fp16, settings.dynamic_batch)
