"""The water method: which index rule a raster gets, fixed once per raster, applied per pixel.

``fit_water_rule`` picks the rule from the bands a raster has and estimates what it needs
(a threshold) once, from windows sampled over the whole raster; ``WaterRule.evidence``
then applies it pixel by pixel, so chips with overlap give exactly the one-piece mask.

The rules (sources in ``plugins/geoseg-spectral/README.md``):

- ``multi`` (the default with green, nir and swir1, e.g. Sentinel-2, Landsat): a pixel is
  water when MNDWI > 0 (Xu 2006), MNDWI exceeds NDVI or EVI and EVI < 0.1 (the open-water
  rule of Zou et al. 2017, 2018), and, where reflectance is known, SWIR2 < 0.1 (water
  absorbs almost all shortwave infrared) and the pixel is not cloud (bright in every
  visible band, or cirrus in Sentinel-2 L1C's B10). No threshold is fitted to the scene.
- ``ndwi`` (the default without SWIR, e.g. NAIP, RGB+NIR orthoimagery), ``mndwi``,
  ``ndvi``: one normalised difference above a threshold: Otsu's, where the raster's
  histogram is bimodal (Ashman's D > 2 for a two-Gaussian fit), else the physical
  boundary 0 (McFeeters 1996; Xu 2006), so a raster with little or no water does not get
  a threshold in the middle of its land.
- ``hsv`` (the default for RGB only): a 0..1 score of blue-to-cyan pixels, above 0.5.

Ratios do not depend on the scale of digital numbers, but they do depend on an offset, and
reflectance tests need reflectance: ``Reflectance`` converts digital numbers with the
raster's own scale/offset metadata, Sentinel-2's offset tags, or the dtype's convention.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import BandError, OptionError
from geoseg.indices import INDEX_RANGES, INDICES, check_bands, hsv_score, normalized_difference

if TYPE_CHECKING:
    from geoseg.raster import RasterSource

__all__ = [
    "choose_method",
    "fit_water_rule",
    "WaterRule",
    "WaterEvidence",
    "Reflectance",
]

log = logging.getLogger(__name__)

#: Rules a user can ask for; ``auto`` picks one from the raster's bands.
METHODS = ("auto", "multi", *INDICES)

#: Bands the multi-index rule reads when the raster has them; it needs the first three.
MULTI_BANDS = ("green", "nir", "swir1", "red", "blue", "swir2", "cirrus")
MULTI_REQUIRED = ("green", "nir", "swir1")

#: The threshold a single index falls back to when its histogram is not bimodal.
PHYSICAL_THRESHOLDS = {"ndwi": 0.0, "mndwi": 0.0, "ndvi": 0.0, "hsv": 0.5}

#: Ashman's D above which two Gaussian modes count as separate (Ashman et al. 1994).
BIMODAL_D = 2.0
#: The smaller mode must hold at least this share of the valid pixels to count.
MIN_MODE_SHARE = 0.005

#: Multi-index rule constants, from the cited papers (see the module docstring).
EVI_MAX = 0.1  # Zou et al.: open water has EVI < 0.1
SWIR2_MAX = 0.1  # reflectance; water absorbs nearly all light at 2.2 um
CLOUD_VISIBLE_MIN = 0.2  # reflectance in blue, green and red; water is far darker
CIRRUS_MIN = 0.012  # Sentinel-2 B10 TOA reflectance; Sen2Cor's thin-cirrus threshold
#: Margins of the confident masks that prompts draw points from.
CONFIDENT_MNDWI = 0.3
CONFIDENT_INDEX_MARGIN = 0.1
CONFIDENT_HSV = (0.1, 0.9)

#: Band names of sensors that store reflectance x 10000 in integers.
_REFLECTANCE_SCALE = 1e-4


def choose_method(band_names: Sequence[str], *, single: bool = False) -> str:
    """The rule ``auto`` means for bands named ``band_names``: multi, ndwi or hsv.

    With ``single`` (a threshold was given), the one index to threshold: mndwi with
    SWIR, ndwi with green and nir, else hsv.
    """
    names = set(band_names)
    if names.issuperset(MULTI_REQUIRED):
        return "mndwi" if single else "multi"
    if names.issuperset(INDICES["ndwi"]):
        return "ndwi"
    if names.issuperset(INDICES["hsv"]):
        return "hsv"
    raise BandError(
        f"no water method fits bands {', '.join(band_names)}: the multi-index rule needs "
        f"green, nir and swir1, ndwi green and nir, hsv red, green and blue; name the bands "
        f"with --bands (e.g. --bands sentinel2, --bands naip)"
    )


def describe_methods() -> str:
    """What ``auto`` does for each band set, for help texts."""
    return (
        "auto picks from the bands: with green, nir and swir1 (Sentinel-2, Landsat) the "
        "multi-index rule (MNDWI > 0, MNDWI > NDVI or EVI, EVI < 0.1, SWIR2 < 0.1, no "
        "cloud); with green and nir but no SWIR (NAIP) NDWI above Otsu's threshold when the "
        "histogram is bimodal, else above 0; with red, green and blue only the HSV rule"
    )


@dataclass(frozen=True)
class Reflectance:
    """Digital numbers to reflectance: ``value * scale + offset`` per band name.

    ``known`` is False when the raster gives no way to tell (uint8 imagery without scale
    metadata): ratios still work, tests on reflectance values are skipped.
    """

    scale: Mapping[str, float] = field(default_factory=dict)
    offset: Mapping[str, float] = field(default_factory=dict)
    known: bool = False

    def apply(self, data: np.ndarray, name: str) -> np.ndarray:
        """Band ``name`` of ``data`` in reflectance (float32)."""
        values = data.astype(np.float32, copy=False)
        scale = np.float32(self.scale.get(name, 1.0))
        offset = np.float32(self.offset.get(name, 0.0))
        if scale == 1 and offset == 0:
            return values
        return values * scale + offset


def raster_reflectance(
    source: RasterSource, *, scale: float | None = None, offset: float | None = None
) -> Reflectance:
    """How to read reflectance from ``source``.

    In order: ``scale``/``offset`` given (e.g. Landsat Collection 2 L2: 0.0000275, -0.2;
    Sentinel-2 L2A from baseline 04.00: 0.0001, -0.1); the raster's own scale/offset
    metadata; Sentinel-2's ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` tags with reflectance x
    10000; 16- and 32-bit integers as reflectance x 10000 (Sentinel-2, Landsat SR, HLS);
    floats as reflectance; anything else (uint8) unknown.
    """
    names = source.band_names
    dataset = source.dataset
    if scale is not None or offset is not None:
        s = 1.0 if scale is None else float(scale)
        o = 0.0 if offset is None else float(offset)
        return Reflectance(dict.fromkeys(names, s), dict.fromkeys(names, o), True)
    scales = tuple(getattr(dataset, "scales", ()) or ())
    offsets = tuple(getattr(dataset, "offsets", ()) or ())
    if any(s not in (None, 1.0) for s in scales) or any(o not in (None, 0.0) for o in offsets):
        return Reflectance(
            {n: float(s or 1.0) for n, s in zip(names, scales, strict=False)},
            {n: float(o or 0.0) for n, o in zip(names, offsets, strict=False)},
            True,
        )
    dtype = np.dtype(source.dtype)
    if dtype.kind in "iu" and dtype.itemsize >= 2:
        add = _sentinel2_offset(dataset)
        return Reflectance(
            dict.fromkeys(names, _REFLECTANCE_SCALE),
            dict.fromkeys(names, add * _REFLECTANCE_SCALE),
            True,
        )
    if dtype.kind == "f":
        return Reflectance(known=True)
    return Reflectance(known=False)


def _sentinel2_offset(dataset: Any) -> float:
    """Sentinel-2's reflectance offset in digital numbers (-1000 from baseline 04.00), or 0."""
    try:
        tags = dataset.tags()
    except (AttributeError, ValueError):
        return 0.0
    for key, value in tags.items():
        if key.upper().startswith(("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")):
            try:
                return float(value)
            except ValueError:
                continue
    return 0.0


@dataclass
class WaterEvidence:
    """What a rule says of each pixel (H, W): all False where the source is invalid.

    ``score`` is > 0 exactly where ``water`` is True (index units; NaN where invalid), for
    soft probabilities. ``confident`` is water that every test passes with a margin,
    ``dry`` land that is clearly not water: prompts draw points only from these.
    """

    score: np.ndarray
    water: np.ndarray
    confident: np.ndarray
    dry: np.ndarray


@dataclass(frozen=True)
class WaterRule:
    """A water method fixed for one raster: ``evidence`` applies it to any block of pixels."""

    method: str
    threshold: float | None = None
    how: str = "fixed"
    reflectance: Reflectance = field(default_factory=Reflectance)
    band_names: tuple[str, ...] = ()
    index_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bands(self) -> tuple[str, ...]:
        """The bands ``evidence`` reads, in this order."""
        if self.method == "multi":
            return tuple(name for name in MULTI_BANDS if name in self.band_names)
        return INDICES[self.method]

    def describe(self) -> str:
        """One line for logs and messages, e.g. ``ndwi > 0.1660 (otsu, bimodal)``."""
        if self.method == "multi":
            tests = ["MNDWI > 0"]
            names = set(self.bands)
            if "red" in names:
                tests.append("MNDWI > NDVI" + (" or EVI, EVI < 0.1" if "blue" in names else ""))
            if self.reflectance.known:
                if "swir2" in names:
                    tests.append("SWIR2 < 0.1")
                if "blue" in names and "red" in names:
                    tests.append("not cloud")
            return "multi-index water rule (" + ", ".join(tests) + ")"
        return f"{self.method} > {self.threshold:.4f} ({self.how})"

    def evidence(
        self, data: np.ndarray, band_names: Sequence[str], valid: np.ndarray | None = None
    ) -> WaterEvidence:
        """The rule over pixels ``data`` (bands, H, W) whose bands are ``band_names``."""
        band_names = list(band_names)
        if data.ndim != 3 or data.shape[0] != len(band_names):
            raise ValueError(f"data has shape {data.shape} but {len(band_names)} band names")
        missing = [name for name in self.bands if name not in band_names]
        if missing:
            raise BandError(
                f"the {self.method} water rule needs band {missing[0]!r} but the bands are "
                f"{', '.join(band_names)}"
            )
        valid = np.ones(data.shape[1:], bool) if valid is None else np.asarray(valid, dtype=bool)
        bands = {name: data[band_names.index(name)] for name in self.bands}
        evidence = self._multi(bands) if self.method == "multi" else self._single(bands)
        finite = np.isfinite(evidence.score) & valid
        evidence.score[~finite] = np.nan
        for mask in (evidence.water, evidence.confident, evidence.dry):
            mask &= finite
        return evidence

    def values(self, data: np.ndarray, band_names: Sequence[str], valid=None) -> np.ndarray:
        """The single index this rule thresholds (not for ``multi``)."""
        if self.method == "multi":
            raise OptionError("the multi-index rule has no single index to threshold")
        bands = {name: data[list(band_names).index(name)] for name in self.bands}
        values = self._index(bands)
        if valid is not None:
            values[~np.asarray(valid, dtype=bool)] = np.nan
        return values

    def _index(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.method == "hsv":
            rgb = np.stack([bands[n] for n in INDICES["hsv"]])
            score = hsv_score(rgb, **self.index_params)
            if rgb.dtype.kind == "f":
                score[np.isnan(rgb).any(axis=0)] = np.nan
            return score
        a, b = (self.reflectance.apply(bands[n], n) for n in INDICES[self.method])
        return normalized_difference(a, b)

    def _single(self, bands: Mapping[str, np.ndarray]) -> WaterEvidence:
        values = self._index(bands)
        with np.errstate(invalid="ignore"):
            score = (values - np.float32(self.threshold)).astype(np.float32)
            water = score > 0
            if self.method == "hsv":
                low, high = CONFIDENT_HSV
                confident, dry = values > high, values < low
            else:
                confident = score > CONFIDENT_INDEX_MARGIN
                dry = score < -CONFIDENT_INDEX_MARGIN
        return WaterEvidence(score, water, confident, dry)

    def _multi(self, bands: Mapping[str, np.ndarray]) -> WaterEvidence:
        r = {name: self.reflectance.apply(value, name) for name, value in bands.items()}
        known = self.reflectance.known
        mndwi = normalized_difference(r["green"], r["swir1"])
        ndwi = normalized_difference(r["green"], r["nir"])
        margins = [mndwi]
        not_cloud = np.ones(mndwi.shape, bool)
        vegetation = np.full(mndwi.shape, -np.inf, np.float32)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if "red" in r:
                ndvi = normalized_difference(r["nir"], r["red"])
                vegetation = ndvi
                if "blue" in r:
                    evi = (
                        2.5
                        * (r["nir"] - r["red"])
                        / (r["nir"] + 6.0 * r["red"] - 7.5 * r["blue"] + 1.0)
                    )
                    # Water when MNDWI beats either vegetation index, and EVI stays low.
                    vegetation = np.fmin(ndvi, evi)
                    margins.append(np.float32(EVI_MAX) - evi)
                margins.append(mndwi - vegetation)
            if known and "swir2" in r:
                margins.append((np.float32(SWIR2_MAX) - r["swir2"]) * 5)
            if known and {"blue", "red"} <= set(r):
                visible = np.fmin(np.fmin(r["blue"], r["green"]), r["red"])
                not_cloud &= ~(visible > CLOUD_VISIBLE_MIN)
            if known and "cirrus" in r:
                not_cloud &= ~(r["cirrus"] > CIRRUS_MIN)
            score = margins[0]
            for margin in margins[1:]:
                score = np.minimum(score, margin)
            score = np.where(not_cloud, score, np.float32(-1.0)).astype(np.float32)
            water = score > 0
            # Confident: both classic water indices agree, MNDWI with a margin.
            confident = water & (mndwi > CONFIDENT_MNDWI) & (ndwi > 0)
            dry = ~water & not_cloud & (mndwi < 0) & (ndwi < 0)
        return WaterEvidence(score, water, confident, dry)


def fit_water_rule(
    source: RasterSource,
    method: str = "auto",
    threshold: str | float = "auto",
    *,
    index_params: Mapping[str, Any] | None = None,
    scale: float | None = None,
    offset: float | None = None,
    max_windows: int = 256,
    window_size: int = 512,
    seed: int = 0,
) -> WaterRule:
    """The rule ``method`` for ``source``, with its threshold estimated once for the raster.

    ``threshold``: ``auto`` (Otsu's where the index's histogram is bimodal, else the
    index's physical threshold), ``otsu`` (always Otsu's) or a value; the multi-index rule
    takes none, so with ``method="auto"`` a threshold picks a single index instead. Histograms come from up to ``max_windows`` windows sampled over the raster.
    """
    from geoseg.masks import bimodal_threshold, otsu_threshold, parse_threshold

    method = str(method).lower()
    if method not in METHODS:
        raise OptionError(f"unknown water method {method!r}; use one of {', '.join(METHODS)}")
    threshold = parse_threshold(threshold)
    if method == "auto":
        method = choose_method(source.band_names, single=threshold != "auto")
    reflectance = raster_reflectance(source, scale=scale, offset=offset)
    params = dict(index_params or {})
    if method == "multi":
        missing = [name for name in MULTI_REQUIRED if name not in source.band_names]
        if missing:
            raise BandError(
                f"{source.path}: the multi-index water rule needs band {missing[0]!r} but the "
                f"bands are {', '.join(source.band_names)}; name the bands with --bands"
            )
        if threshold != "auto":
            raise OptionError(
                "the multi-index water rule takes no threshold; give index=ndwi or mndwi "
                "with a threshold, or leave the threshold out"
            )
        rule = WaterRule("multi", None, "fixed", reflectance, tuple(source.band_names), params)
        log.info("%s: %s", source.path, rule.describe())
        return rule
    check_bands(method, source.band_names, source=str(source.path))
    rule = WaterRule(method, 0.0, "fixed", reflectance, tuple(source.band_names), params)
    if threshold not in ("auto", "otsu"):
        low, high = INDEX_RANGES[method]
        if not low <= threshold <= high:
            raise OptionError(
                f"threshold {threshold:g} is outside {method}'s range [{low:g}, {high:g}]"
            )
        rule = _replace(rule, float(threshold), "given")
    else:
        counts, centres = rule_histogram(
            source, rule, max_windows=max_windows, window_size=window_size, seed=seed
        )
        if counts.sum() == 0:
            from geoseg.errors import InputFileError

            raise InputFileError(
                f"{source.path}: no valid pixels to compute a threshold of {method}; check "
                f"the nodata value and the band mapping, or give --threshold VALUE"
            )
        if threshold == "otsu":
            if np.count_nonzero(counts) < 2:
                raise OptionError(
                    f"{source.path}: {method} is constant over the raster, so Otsu has "
                    f"nothing to separate; give --threshold VALUE"
                )
            rule = _replace(rule, otsu_threshold(counts, centres), "otsu")
        else:
            value = bimodal_threshold(counts, centres, upper_above=PHYSICAL_THRESHOLDS[method])
            if value is None:
                rule = _replace(rule, PHYSICAL_THRESHOLDS[method], "fixed, not bimodal")
            else:
                rule = _replace(rule, value, "otsu, bimodal")
    log.info("%s: %s", source.path, rule.describe())
    return rule


def _replace(rule: WaterRule, threshold: float, how: str) -> WaterRule:
    from dataclasses import replace

    return replace(rule, threshold=float(threshold), how=how)


def rule_histogram(
    source: RasterSource,
    rule: WaterRule,
    *,
    max_windows: int = 256,
    window_size: int = 512,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin centres of a single-index rule's index over sampled windows."""
    from geoseg.masks import HISTOGRAM_BINS, sampled_windows

    low, high = INDEX_RANGES[rule.method]
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    for window in sampled_windows(source, max_windows, window_size, seed):
        data, valid = source.read(window, rule.bands)
        values = rule.values(data, rule.bands, valid)
        values = values[np.isfinite(values)]
        counts += np.histogram(np.clip(values, low, high), bins=edges)[0]
    return counts, (edges[:-1] + edges[1:]) / 2
