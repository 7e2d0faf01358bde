"""The ``onnx`` backend: class probabilities from an ONNX model run by ONNX Runtime.

It runs models written by ``geoseg export`` (they describe their bands, classes,
normalisation and chip size in their metadata) and segmentation models from elsewhere
that carry QGIS Deepness metadata (``class_names``, ``standardization_mean`` and
``standardization_std``; pixels scaled by 1/255 first, as Deepness does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch
from geoseg.classes import ClassMap
from geoseg.config import option
from geoseg.errors import BackendError, BandError, WeightsError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class OnnxOptions:
    """Options of the ONNX Runtime session (prediction only)."""

    threads: int = option(
        0, applies="predict",
        help="CPU threads ONNX Runtime uses within an operator (0: its default, one per core).",
    )  # fmt: skip
    providers: tuple[str, ...] = option(
        (), applies="predict",
        help="Execution providers in order of preference, comma-separated (e.g. "
        "CUDAExecutionProvider,CPUExecutionProvider); empty: from --device (cpu: CPU; "
        "cuda: CUDA then CPU; auto: CUDA when onnxruntime-gpu has it, else CPU).",
    )  # fmt: skip
    memory_arena: bool = option(
        False, applies="predict",
        help="ONNX Runtime's CPU memory arena; off by default, which measured faster and "
        "smaller on SegFormer-b0 chips (benchmarks/onnx_speed.py).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


class OnnxBackend(Backend):
    """Any ONNX segmentation model: geoseg exports and Deepness-style models."""

    name = "onnx"
    description = (
        "ONNX models through ONNX Runtime (geoseg export, QGIS Deepness models); "
        "CPU by default, CUDA with onnxruntime-gpu; no torch needed"
    )
    Options = OnnxOptions

    def __init__(self, options: OnnxOptions | None = None) -> None:
        super().__init__(options)
        self.session: Any = None
        self.info: Any = None
        self.path: Path | None = None

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Multi-class; bands, classes and chip size come from the model's metadata."""
        return Capabilities(binary=False, chip_size=512)

    def loaded_capabilities(self) -> Capabilities:
        """After ``load``: the bands, binary-ness and chip size the model file records."""
        info = self.info
        if info is None:
            return self.capabilities()
        return Capabilities(
            binary=len(info.classes) == 2,
            bands=tuple(info.bands or ()),
            chip_size=info.size or 512,
        )

    def load(self, model: str | None, device: str = "auto") -> None:
        import onnxruntime as ort

        from geoseg.export import read_metadata

        if not model:
            raise WeightsError("onnx needs --model FILE.onnx, e.g. one written by geoseg export")
        path = Path(model).expanduser()
        if path.is_dir() or path.suffix.lower() != ".onnx":
            raise WeightsError(
                f"{model}: not an .onnx file; export the model folder first: "
                f"geoseg export --model {model} -o model.onnx"
            )
        if not path.is_file():
            raise WeightsError(f"{model}: no such file; give an .onnx file")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.enable_cpu_mem_arena = self.options.memory_arena
        if self.options.threads:
            session_options.intra_op_num_threads = self.options.threads
        session_options.log_severity_level = 3  # errors only: geoseg reports what matters
        providers = self._providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own types for bad files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"{path}: not a readable ONNX model ({reason[:200]}); export it again with "
                "geoseg export"
            ) from None
        self.info = read_metadata(path, self.session)
        self.path = path
        log.info(
            "onnx: %s with %s, bands %s, classes %s, chip %s",
            path, ",".join(self.session.get_providers()), ",".join(self.info.bands or ("?",)),
            ",".join(self.info.classes.names), self.info.size,
        )  # fmt: skip

    def _providers(self, device: str, available: list[str]) -> list[str]:
        if self.options.providers:
            missing = [p for p in self.options.providers if p not in available]
            if missing:
                raise BackendError(
                    f"onnxruntime has no {', '.join(missing)}; available: {', '.join(available)}"
                )
            return list(self.options.providers)
        device = (device or "auto").lower()
        if device.startswith("cuda"):
            if CUDA not in available:
                raise BackendError(
                    "--device cuda: this onnxruntime has no CUDA provider; install "
                    "onnxruntime-gpu or use --device cpu"
                )
            return [CUDA, CPU]
        if device == "mps":
            raise BackendError("--device mps: ONNX Runtime has no MPS provider; use --device cpu")
        if device == "auto" and CUDA in available:
            return [CUDA, CPU]
        return [CPU]

    def classes(self) -> ClassMap:
        return self._info().classes

    def _info(self):
        if self.info is None:
            raise BackendError("onnx: call load(model) before predicting")
        return self.info

    def begin_raster(self, source) -> None:
        info = self._info()
        if info.bands is not None:
            from geoseg.manifest import check_bands

            check_bands({"bands": list(info.bands)}, tuple(source.band_names), str(source.path))
        elif len(source.band_names) < info.channels:
            raise BandError(
                f"{source.path}: the model reads {info.channels} bands but the source has "
                f"{len(source.band_names)}; give a raster with at least {info.channels} bands"
            )

    def predict(self, batch: ChipBatch) -> np.ndarray:
        info = self._info()
        images = self._model_bands(batch)
        height, width = images.shape[-2:]
        if info.size is not None and (height, width) != (info.size, info.size):
            raise BackendError(
                f"{self.path}: the model takes {info.size} px chips, not {height} x {width}; "
                f"drop --size or pass --size {info.size} (or export again with --size {height})"
            )
        pixels = np.array(images, dtype=np.float32)
        invalid = ~batch.valid
        if info.fill is not None:
            # Invalid pixels get the training mean, which the graph normalises to 0 as the
            # torch backend does.
            fill = np.asarray(info.fill, np.float32)
            pixels = np.where(invalid[:, None], fill[None, :, None, None], pixels)
        elif info.mean is not None:
            pixels *= 1 / 255  # Deepness's scaling of 8-bit pixels, then its standardisation
            mean = np.asarray(info.mean, np.float32)[None, :, None, None]
            std = np.asarray(info.std, np.float32)[None, :, None, None]
            pixels = (pixels - mean) / std
            pixels *= batch.valid[:, None]
        step = len(pixels) if info.batch is None else info.batch
        outputs = []
        for start in range(0, len(pixels), step):
            chunk = np.ascontiguousarray(pixels[start : start + step])
            outputs.append(self.session.run(None, {info.input_name: chunk})[0])
        probabilities = np.concatenate(outputs).astype(np.float32, copy=False)
        if probabilities.shape[1] != len(info.classes):
            raise WeightsError(
                f"{self.path}: the model gives {probabilities.shape[1]} channels but its "
                f"metadata names {len(info.classes)} classes"
            )
        return probabilities

    def _model_bands(self, batch: ChipBatch) -> np.ndarray:
        info = self._info()
        given = tuple(batch.band_names)
        if info.bands is None:
            return batch.images[:, : info.channels]
        wanted = tuple(info.bands)
        if given == wanted:
            return batch.images
        return batch.images[:, [given.index(b) for b in wanted]]
