"""The spectral backend: a binary water mask from the water method fixed once per raster.

By default the method follows the bands (``geoseg.water``): the multi-index rule with
SWIR, NDWI without it, the HSV rule for RGB only; an explicit index and threshold can be
given instead. Pointwise by default: each pixel's probability depends on that pixel alone, so a mask
predicted chip by chip with overlap equals the mask predicted in one piece. The cleanup
options (``min_size``, ``fill_holes``, ``opening``, ``closing``) look at neighbourhoods
within one chip and so can differ along chip seams; use ``geoseg vectorize --min-area``
on the result for seam-free size filtering instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geoseg.backend import Backend, Capabilities, ChipBatch
from geoseg.classes import ClassInfo, ClassMap
from geoseg.config import option
from geoseg.errors import BackendError

if TYPE_CHECKING:
    from geoseg.raster import RasterSource

#: Band names each index reads (mirrors geoseg.indices.INDICES without importing xarray
#: when geoseg only lists backends).
INDEX_BANDS: dict[str, tuple[str, ...]] = {
    "auto": (),
    "multi": ("green", "nir", "swir1"),
    "ndwi": ("green", "nir"),
    "mndwi": ("green", "swir1"),
    "ndvi": ("nir", "red"),
    "hsv": ("red", "green", "blue"),
}
#: Values an index can take; a fixed threshold must lie inside.
INDEX_RANGES: dict[str, tuple[float, float]] = {
    "auto": (-1.0, 1.0),
    "multi": (-1.0, 1.0),
    "ndwi": (-1.0, 1.0),
    "mndwi": (-1.0, 1.0),
    "ndvi": (-1.0, 1.0),
    "hsv": (0.0, 1.0),
}
CLASS_COLORS = {"water": "#1f78b4", "vegetation": "#33a02c"}


@dataclass(frozen=True)
class SpectralOptions:
    """Options of the spectral backend (``--option key=value``).

    ``index``: ``auto`` picks the method from the bands (with green, nir and swir1 the
    multi-index rule: MNDWI > 0, MNDWI > NDVI or EVI, EVI < 0.1, SWIR2 < 0.1, no cloud;
    without SWIR NDWI; RGB only the HSV rule); ``multi``, ``ndwi``, ``mndwi``, ``ndvi`` or
    ``hsv`` choose one. ``threshold`` (single indices only): ``auto`` (Otsu's where the
    raster's histogram is bimodal, else 0, or 0.5 for hsv), ``otsu`` or an index value;
    pixels above it belong to the class. With index=auto, a threshold other than auto
    thresholds one index: mndwi with SWIR, ndwi without, hsv for RGB only. ``reflectance_scale`` / ``reflectance_offset``:
    digital number to reflectance (default: the raster's metadata, x 10000 for 16-bit
    integers), e.g. 0.0001 and -0.1 for Sentinel-2 L2A from baseline 04.00.
    ``class_name``: the class name in the output (default: vegetation for ndvi, water
    otherwise). ``softness``: 0 gives hard 0/1 probabilities; a positive value gives
    sigmoid(margin / softness). ``min_size`` / ``fill_holes``: pixels, or square metres
    with an ``m2`` suffix; with ``opening`` / ``closing`` (disk radii in pixels) they clean
    each chip and are not seam-free. ``hue`` (degrees), ``saturation`` and ``value``
    (0..1) are the hsv rule's ranges; ``scale`` is the digital number of full brightness
    for hsv (default: the integer dtype's maximum). ``max_windows``: windows sampled for
    the threshold's histogram.
    """

    index: Literal["auto", "multi", "ndwi", "mndwi", "ndvi", "hsv"] = option(
        "auto",
        help="The method: auto picks it from the bands (multi with green, nir and swir1; "
        "ndwi with green and nir; hsv with red, green and blue only), or multi, ndwi, "
        "mndwi, ndvi or hsv.",
    )
    threshold: Literal["auto", "otsu"] | float = option(
        "auto",
        help="Single indices only: auto (Otsu's where the raster's histogram is bimodal, "
        "else 0, or 0.5 for hsv), otsu, or an index value; pixels above it are the class.",
    )
    reflectance_scale: float | None = option(
        None,
        help="Digital number to reflectance: value * scale + offset (default: the raster's "
        "metadata, x 10000 for 16-bit integers); e.g. 0.0000275 for Landsat C2 L2.",
    )
    reflectance_offset: float | None = option(
        None,
        help="Added after the scale, in reflectance: -0.1 for Sentinel-2 L2A from baseline "
        "04.00, -0.2 for Landsat C2 L2.",
    )
    class_name: str | None = option(
        None, help="The class name in the output (default: vegetation for ndvi, water)."
    )
    softness: float = option(
        0.0, help="0: hard 0/1 probabilities; > 0: sigmoid(margin / softness)."
    )
    min_size: int | str = option(
        0, help="Remove components smaller than this: pixels, or m2 (e.g. 5000m2). Per chip."
    )
    fill_holes: int | str = option(
        0, help="Fill holes smaller than this: pixels, or m2. Per chip, not seam-free."
    )
    opening: int = option(0, help="Morphological opening, disk radius in pixels. Per chip.")
    closing: int = option(0, help="Morphological closing, disk radius in pixels. Per chip.")
    hue: tuple[float, float] = option((170.0, 260.0), help="hsv: hue range in degrees.")
    saturation: tuple[float, float] = option((0.08, 1.0), help="hsv: saturation range, 0..1.")
    value: tuple[float, float] = option((0.02, 1.0), help="hsv: value range, 0..1.")
    scale: float | None = option(
        None, help="hsv: digital number of full brightness (default: the dtype's maximum)."
    )
    max_windows: int = option(256, help="Windows sampled for the threshold's histogram.")

    def __post_init__(self) -> None:
        if self.index not in INDEX_BANDS:
            raise ValueError(f"index must be one of {', '.join(INDEX_BANDS)}, got {self.index!r}")
        if self.threshold not in ("auto", "otsu"):
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
                raise ValueError(
                    f"threshold must be 'auto', 'otsu' or a number, got {self.threshold!r}"
                )
            if self.index == "multi":
                raise ValueError(
                    "threshold applies to a single index, not to index=multi; give "
                    "index=ndwi (or mndwi, ndvi, hsv), or leave threshold out"
                )
            low, high = INDEX_RANGES[self.index]
            if not low <= self.threshold <= high:
                index = "the normalised differences'" if self.index == "auto" else self.index + "'s"
                raise ValueError(
                    f"threshold {self.threshold:g} is outside {index} range "
                    f"[{low:g}, {high:g}]; give a value inside it, 'auto' or 'otsu'"
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
        if self.reflectance_scale is not None and not self.reflectance_scale > 0:
            raise ValueError(f"reflectance_scale must be > 0, got {self.reflectance_scale}")
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
    from geoseg.windows import Area

    try:
        return Area.parse(value, what=name)
    except OptionError as exc:
        raise ValueError(str(exc)) from None


class SpectralBackend(Backend):
    """Water (or vegetation) from the water method fixed once per raster (geoseg.water).

    By default (index=auto) the method follows the bands the raster has:
    - green, nir and swir1 (Sentinel-2, Landsat): water where MNDWI > 0, MNDWI > NDVI or
      MNDWI > EVI, EVI < 0.1 (Zou et al. 2017, 2018), SWIR2 < 0.1 and not cloud (bright
      in every visible band, or cirrus in B10); no threshold is fitted to the scene.
    - green and nir, no SWIR (NAIP, RGB+NIR orthoimagery): NDWI above Otsu's threshold
      where the raster's NDWI histogram is bimodal (Ashman's D > 2), else above 0.
    - red, green and blue only: the HSV rule (blue-to-cyan pixels), score above 0.5.
    Digital numbers: 16-bit integers are read as reflectance x 10000 (Sentinel-2's
    offset tags applied), the raster's scale/offset metadata wins, reflectance_scale /
    reflectance_offset override both. Sources: plugins/geoseg-spectral/README.md.
    """

    name = "spectral"
    description = (
        "Water masks with no weights: the multi-index rule with SWIR, NDWI without, HSV "
        "for RGB; or one index (ndwi, mndwi, ndvi, hsv) and a threshold"
    )
    Options = SpectralOptions

    def __init__(self, options: SpectralOptions | None = None) -> None:
        super().__init__(options)
        self.rule = None
        self.threshold: float | None = None
        self._min_size = 0
        self._fill_holes = 0
        self._scale: float | None = self.options.scale

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Binary, no prompts, no training; bands of the default index (auto: all)."""
        return cls._capabilities(SpectralOptions())

    def loaded_capabilities(self) -> Capabilities:
        """As ``capabilities()``, with the bands of this instance's index and target."""
        return self._capabilities(self.options)

    @staticmethod
    def _capabilities(options: SpectralOptions) -> Capabilities:
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
        """Check the bands and fix the method and its threshold for the whole raster."""
        from geoseg.masks import area_pixels
        from geoseg.water import fit_water_rule

        options = self.options
        if options.index not in ("auto", "multi"):
            _check_bands(options.index, source.band_names, str(source.path))
        if options.scale is None:
            dtype = np.dtype(source.dtype)
            self._scale = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        self.rule = fit_water_rule(
            source,
            options.index,
            options.threshold,
            index_params=self._index_params(),
            scale=options.reflectance_scale,
            offset=options.reflectance_offset,
            max_windows=options.max_windows,
        )
        if self.rule.method == "hsv" and not self._index_params():
            self.rule = _with_params(self.rule, self._hsv_params())
        self.threshold = self.rule.threshold
        self._min_size = area_pixels(options.min_size, source, what="min_size")
        self._fill_holes = area_pixels(options.fill_holes, source, what="fill_holes")

    def predict(self, batch: ChipBatch) -> np.ndarray:
        """Probabilities (N, 2, H, W) float32 of [background, class]; invalid pixels background."""
        from geoseg.masks import clean_mask

        options = self.options
        source = str(batch.source) if batch.source is not None else "the raster"
        rule = self._current_rule(batch.band_names)
        _check_rule_bands(rule, batch.band_names, source)
        n, _, height, width = batch.images.shape
        result = np.empty((n, 2, height, width), np.float32)
        for i in range(n):
            valid = np.asarray(batch.valid[i], dtype=bool)
            evidence = rule.evidence(batch.images[i], batch.band_names, valid)
            above = evidence.water
            with np.errstate(invalid="ignore", over="ignore"):
                if options.softness > 0:
                    target = 1.0 / (1.0 + np.exp(-evidence.score / options.softness))
                    target = np.where(np.isfinite(evidence.score), target, 0.0)
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

    def _current_rule(self, band_names: tuple[str, ...]):
        """The rule of begin_raster, or one made from fixed options without a raster."""
        from geoseg.water import Reflectance, WaterRule, choose_method

        if self.rule is not None:
            return self.rule
        options = self.options
        if options.threshold in ("auto", "otsu") and options.index != "multi":
            raise BackendError(
                f"spectral backend: threshold={options.threshold} is computed per raster in "
                f"begin_raster(source); call it before predict, or give index=ndwi and a "
                f"fixed threshold (--option threshold=0.1)"
            )
        if options.index == "hsv" and self._scale is None:
            raise BackendError(
                "spectral backend: hsv needs the full-brightness value; call begin_raster(source) "
                "first or give --option scale=255"
            )
        self._min_size = _pixels_without_raster(options.min_size, "min_size")
        self._fill_holes = _pixels_without_raster(options.fill_holes, "fill_holes")
        method = options.index
        if method == "auto":
            method = choose_method(band_names, single=options.threshold != "auto")
        known = options.reflectance_scale is not None
        scale = options.reflectance_scale or 1.0
        offset = options.reflectance_offset or 0.0
        reflectance = Reflectance(
            dict.fromkeys(band_names, scale), dict.fromkeys(band_names, offset), known
        )
        threshold = None if method == "multi" else float(options.threshold)
        self.rule = WaterRule(
            method, threshold, "given", reflectance, tuple(band_names), self._index_params()
        )
        self.threshold = threshold
        return self.rule

    def _index_params(self) -> dict[str, Any]:
        if self.options.index != "hsv":
            return {}
        return self._hsv_params()

    def _hsv_params(self) -> dict[str, Any]:
        options = self.options
        return {
            "hue": options.hue,
            "saturation": options.saturation,
            "value": options.value,
            "scale": self._scale,
        }


def _with_params(rule, params: dict[str, Any]):
    from dataclasses import replace

    return replace(rule, index_params=params)


def _check_rule_bands(rule, band_names: tuple[str, ...] | list[str], source: str) -> None:
    """Raise BandError in one line when a chip lacks a band the rule reads."""
    from geoseg.errors import BandError

    if rule.method != "multi":
        _check_bands(rule.method, band_names, source)
        return
    missing = [name for name in rule.bands if name not in band_names]
    if missing:
        raise BandError(
            f"{source}: the multi-index water rule needs band {missing[0]!r} but the bands "
            f"are {', '.join(band_names)}; name the bands with --bands"
        )


def _check_bands(index: str, band_names: tuple[str, ...] | list[str], source: str) -> None:
    """Raise BandError in one line when the raster lacks a band ``index`` needs."""
    from geoseg.errors import BandError

    missing = [name for name in INDEX_BANDS[index] if name not in band_names]
    if not missing:
        return
    usable = [
        name
        for name, needed in INDEX_BANDS.items()
        if name != "auto" and set(needed) <= set(band_names)
    ]
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
