"""The spectral backend: a binary mask from an index threshold computed once per raster.

Pointwise by default: each pixel's probability depends on that pixel alone, so a mask
predicted chip by chip with overlap equals the mask predicted in one piece. The cleanup
options (``min_size``, ``fill_holes``, ``opening``, ``closing``) look at neighbourhoods
within one chip and so can differ along chip seams; use ``geoseg vectorize --min-area``
on the result for seam-free size filtering instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch
from geoseg.classes import ClassInfo, ClassMap
from geoseg.errors import BackendError

if TYPE_CHECKING:
    from geoseg.raster import RasterSource

#: Band names each index reads (mirrors geoseg.indices.INDICES without importing xarray
#: when geoseg only lists backends).
INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "ndwi": ("green", "nir"),
    "mndwi": ("green", "swir1"),
    "ndvi": ("nir", "red"),
    "hsv": ("red", "green", "blue"),
}
#: Values an index can take; a fixed threshold must lie inside.
INDEX_RANGES: dict[str, tuple[float, float]] = {
    "ndwi": (-1.0, 1.0),
    "mndwi": (-1.0, 1.0),
    "ndvi": (-1.0, 1.0),
    "hsv": (0.0, 1.0),
}
CLASS_COLORS = {"water": "#1f78b4", "vegetation": "#33a02c"}


@dataclass(frozen=True)
class SpectralOptions:
    """Options of the spectral backend (``--option key=value``).

    ``threshold``: ``otsu`` (once per raster, from a histogram of the whole raster) or a
    fixed index value; pixels above it belong to the class. ``class_name``: the class
    name in the output (default: vegetation for ndvi, water otherwise). ``softness``: 0
    gives hard 0/1 probabilities; a positive value gives sigmoid((index - threshold) /
    softness). ``min_size`` / ``fill_holes``: pixels, or square metres with an ``m2``
    suffix; with ``opening`` / ``closing`` (disk radii in pixels) they clean each chip and
    are not seam-free. ``hue`` (degrees), ``saturation`` and ``value`` (0..1) are the hsv
    rule's ranges; ``scale`` is the digital number of full brightness for hsv (default:
    the integer dtype's maximum). ``max_windows``: windows sampled for the Otsu histogram.
    """

    index: Literal["ndwi", "mndwi", "ndvi", "hsv"] = "ndwi"
    threshold: Literal["otsu"] | float = "otsu"
    class_name: str | None = None
    softness: float = 0.0
    min_size: int | str = 0
    fill_holes: int | str = 0
    opening: int = 0
    closing: int = 0
    hue: tuple[float, float] = (170.0, 260.0)
    saturation: tuple[float, float] = (0.08, 1.0)
    value: tuple[float, float] = (0.02, 1.0)
    scale: float | None = None
    max_windows: int = 256

    def __post_init__(self) -> None:
        if self.index not in INDEX_BANDS:
            raise ValueError(f"index must be one of {', '.join(INDEX_BANDS)}, got {self.index!r}")
        if self.threshold != "otsu":
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
                raise ValueError(f"threshold must be 'otsu' or a number, got {self.threshold!r}")
            low, high = INDEX_RANGES[self.index]
            if not low <= self.threshold <= high:
                raise ValueError(
                    f"threshold {self.threshold:g} is outside {self.index}'s range "
                    f"[{low:g}, {high:g}]; give a value inside it or 'otsu'"
                )
        if self.class_name is not None and (
            not self.class_name.strip() or self.class_name == "background"
        ):
            raise ValueError(
                f"class_name must be a name other than background, got {self.class_name!r}"
            )
        if not self.softness >= 0:
            raise ValueError(f"softness must be >= 0 (0: hard 0/1 mask), got {self.softness}")
        for name in ("min_size", "fill_holes"):
            _parse_area(getattr(self, name), name)
        for name in ("opening", "closing"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must be a radius >= 0 in pixels, got {getattr(self, name)}"
                )
        if not (0.0 <= self.hue[0] <= 360.0 and 0.0 <= self.hue[1] <= 360.0):
            raise ValueError(f"hue must be two angles in 0..360 degrees, got {self.hue}")
        for name in ("saturation", "value"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"{name} must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {low},{high}"
                )
        if self.scale is not None and not self.scale > 0:
            raise ValueError(
                f"scale must be > 0 (full-brightness digital number), got {self.scale}"
            )
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")

    @property
    def target(self) -> str:
        """The class name of mask pixels."""
        if self.class_name:
            return self.class_name
        return "vegetation" if self.index == "ndvi" else "water"

    @property
    def cleans(self) -> bool:
        """Whether any per-chip cleanup is asked for."""
        return bool(
            _parse_area(self.min_size, "min_size").value
            or _parse_area(self.fill_holes, "fill_holes").value
            or self.opening
            or self.closing
        )


def _parse_area(value: int | str, name: str):
    from geoseg.errors import OptionError
    from geoseg.masks import Area

    try:
        return Area.parse(value, what=name)
    except OptionError as exc:
        raise ValueError(str(exc)) from None


class _class_or_instance:
    """A method that receives the instance when there is one, else the class."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, instance: Any, owner: type) -> Any:
        return functools.partial(self.func, owner if instance is None else instance)


class SpectralBackend(Backend):
    """Water (or vegetation) where a spectral index exceeds a per-raster threshold."""

    name = "spectral"
    description = "Water or vegetation masks from NDWI/MNDWI/NDVI/HSV thresholds; no weights"
    Options = SpectralOptions

    def __init__(self, options: SpectralOptions | None = None) -> None:
        super().__init__(options)
        self.threshold: float | None = None
        self._min_size = 0
        self._fill_holes = 0
        self._scale: float | None = self.options.scale

    @_class_or_instance
    def capabilities(self_or_cls: Any) -> Capabilities:
        """Binary, no prompts, no training; bands of the chosen index (ndwi for the class)."""
        options = self_or_cls.options if isinstance(self_or_cls, Backend) else SpectralOptions()
        return Capabilities(
            binary=True,
            classes=("background", options.target),
            needs_prompts=False,
            trains=False,
            bands=INDEX_BANDS[options.index],
            chip_size=512,
            weights=False,
        )

    def classes(self) -> ClassMap:
        target = self.options.target
        return ClassMap(
            (
                ClassInfo(0, "background", "#000000"),
                ClassInfo(1, target, CLASS_COLORS.get(target, "#1f78b4")),
            )
        )

    def begin_raster(self, source: RasterSource) -> None:
        """Check the bands and compute the threshold (Otsu: over the whole raster) once."""
        from geoseg.masks import area_pixels, raster_threshold

        options = self.options
        _check_bands(options.index, source.band_names, str(source.path))
        if options.index == "hsv" and options.scale is None:
            dtype = np.dtype(source.dtype)
            self._scale = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        params = self._index_params()
        if options.threshold == "otsu":
            params["max_windows"] = options.max_windows
        self.threshold = raster_threshold(source, options.index, options.threshold, **params)
        self._min_size = area_pixels(options.min_size, source, what="min_size")
        self._fill_holes = area_pixels(options.fill_holes, source, what="fill_holes")

    def predict(self, batch: ChipBatch) -> np.ndarray:
        """Probabilities (N, 2, H, W) float32 of [background, class]; invalid pixels background."""
        from geoseg.indices import compute_index
        from geoseg.masks import clean_mask, threshold_mask

        options = self.options
        source = str(batch.source) if batch.source is not None else "the raster"
        _check_bands(options.index, batch.band_names, source)
        threshold = self._current_threshold()
        params = self._index_params()
        n, _, height, width = batch.images.shape
        result = np.empty((n, 2, height, width), np.float32)
        for i in range(n):
            valid = np.asarray(batch.valid[i], dtype=bool)
            values = compute_index(
                batch.images[i], batch.band_names, options.index, valid, **params
            )
            above = threshold_mask(values, threshold, valid)
            with np.errstate(invalid="ignore", over="ignore"):
                if options.softness > 0:
                    target = 1.0 / (1.0 + np.exp(-(values - threshold) / options.softness))
                    target = np.where(np.isfinite(values), target, 0.0)
                else:
                    target = above.astype(np.float32)
            if options.cleans:
                cleaned = clean_mask(
                    above,
                    min_size=self._min_size,
                    fill_holes=self._fill_holes,
                    opening=options.opening,
                    closing=options.closing,
                    valid=valid,
                )
                target = np.where(cleaned & ~above, 1.0, np.where(above & ~cleaned, 0.0, target))
            result[i, 1] = target
        result[:, 0] = 1.0 - result[:, 1]
        return result

    def _current_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        options = self.options
        if options.threshold == "otsu":
            raise BackendError(
                "spectral backend: threshold=otsu is computed per raster in begin_raster(source); "
                "call it before predict, or give a fixed threshold (--option threshold=0.1)"
            )
        if options.index == "hsv" and self._scale is None:
            raise BackendError(
                "spectral backend: hsv needs the full-brightness value; call begin_raster(source) "
                "first or give --option scale=255"
            )
        self._min_size = _pixels_without_raster(options.min_size, "min_size")
        self._fill_holes = _pixels_without_raster(options.fill_holes, "fill_holes")
        self.threshold = float(options.threshold)
        return self.threshold

    def _index_params(self) -> dict[str, Any]:
        options = self.options
        if options.index != "hsv":
            return {}
        return {
            "hue": options.hue,
            "saturation": options.saturation,
            "value": options.value,
            "scale": self._scale,
        }


def _check_bands(index: str, band_names: tuple[str, ...] | list[str], source: str) -> None:
    """Raise BandError in one line when the raster lacks a band ``index`` needs."""
    from geoseg.errors import BandError

    missing = [name for name in INDEX_BANDS[index] if name not in band_names]
    if not missing:
        return
    usable = [name for name, needed in INDEX_BANDS.items() if set(needed) <= set(band_names)]
    fix = f"use --option index={usable[0]}" if usable else "name the bands with --bands"
    if usable and len(usable) > 1:
        fix += f" (or {', '.join(usable[1:])})"
    if usable:
        fix += ", or name the bands with --bands (e.g. --bands naip)"
    raise BandError(
        f"{source}: the spectral backend's index {index} needs band {missing[0]!r} but the "
        f"bands are {', '.join(band_names)}; {fix}"
    )


def _pixels_without_raster(value: int | str, name: str) -> int:
    area = _parse_area(value, name)
    if area.unit != "px":
        raise BackendError(
            f"spectral backend: {name}={area} is in square metres, which needs the raster's "
            f"pixel size; call begin_raster(source) first or give {name} in pixels"
        )
    return int(np.ceil(area.value))
