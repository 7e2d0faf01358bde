"""Coarse water masks: an index threshold for the whole raster, then morphological cleanup.

The threshold is computed once per raster (Otsu on a histogram of valid pixels gathered
window by window over the whole raster), because per-tile thresholds disagree across tile
edges. Cleanup removes small components, fills small holes and optionally opens or
closes the mask. Nodata pixels are never water.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from geoseg.errors import OptionError
from geoseg.indices import check_bands, required_bands
from geoseg.windows import BLOCK, Area, block_windows

if TYPE_CHECKING:
    from geoseg.raster import RasterSource

__all__ = [
    "area_pixels",
    "clean_mask",
]

log = logging.getLogger(__name__)

#: Histogram bins over the index range; 0.001 wide for normalised differences.
HISTOGRAM_BINS = 2000


def area_pixels(value: str | int | float | Area, source: Any, *, what: str = "--min-size") -> int:
    """Pixels of an area (pixels or m2) on the grid of ``source`` (anything with res, crs)."""
    xres, yres = source.res
    return Area.parse(value, what=what).to_pixels(abs(xres * yres), source.crs, what=what)


def parse_threshold(threshold: str | float) -> str | float:
    """``"auto"``, ``"otsu"`` or a float, from a command-line value."""
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return float(threshold)
    text = str(threshold).strip().lower()
    if text in ("auto", "otsu"):
        return text
    try:
        return float(text)
    except ValueError:
        raise OptionError(
            f"--threshold {threshold!r} must be 'auto', 'otsu' or a number such as 0.1"
        ) from None


def sampled_windows(
    source: RasterSource, max_windows: int = 256, window_size: int = BLOCK, seed: int = 0
) -> list[Window]:
    """Windows covering ``source``, or a seeded random ``max_windows`` of them spread over it."""
    windows = list(block_windows(source.width, source.height, window_size))
    if len(windows) > max_windows:
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(len(windows), size=max_windows, replace=False))
        windows = [windows[i] for i in picked]
    return windows


def index_histogram(
    source: RasterSource,
    index: str,
    *,
    max_windows: int = 256,
    window_size: int = 512,
    seed: int = 0,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin centres of the index over valid pixels, gathered window by window.

    Rasters with more than ``max_windows`` windows are sampled: a seeded random subset of
    that many windows spread over the whole raster.
    """
    from geoseg.water import WaterRule, raster_reflectance, rule_histogram

    index = index.lower()
    required_bands(index)
    check_bands(index, source.band_names, source=str(source.path))
    rule = WaterRule(
        index,
        0.0,
        reflectance=raster_reflectance(source),
        band_names=source.band_names,
        index_params=params,
    )
    return rule_histogram(source, rule, max_windows=max_windows, window_size=window_size, seed=seed)


def raster_threshold(
    source: RasterSource, index: str, threshold: str | float = "otsu", **params: Any
) -> float:
    """The index threshold for the whole raster: ``threshold`` itself, Otsu's or ``auto``.

    ``auto`` is Otsu's where the histogram is bimodal, else the index's physical
    threshold (see ``geoseg.water.fit_water_rule``, which this wraps). Histograms come
    from valid pixels over the whole raster (``max_windows``, ``window_size`` and ``seed``
    choose the windows; other ``params`` go to the index).
    """
    from geoseg.water import fit_water_rule

    required_bands(index)
    sampling = {k: params.pop(k) for k in ("max_windows", "window_size", "seed") if k in params}
    rule = fit_water_rule(source, index, threshold, index_params=params, **sampling)
    return rule.threshold


def otsu_threshold(counts: np.ndarray, centres: np.ndarray) -> float:
    """Otsu's threshold of a histogram: values above it are the upper class.

    As ``skimage.filters.threshold_otsu(hist=...)``, except that when several thresholds
    separate the classes equally well (a gap of empty bins between two modes), the middle
    of that range is returned rather than its lower end, which would sit on one mode.
    """
    counts = np.asarray(counts, np.float64)
    centres = np.asarray(centres, np.float64)
    lower = np.cumsum(counts)
    upper = np.cumsum(counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        lower_mean = np.cumsum(counts * centres) / lower
        upper_mean = (np.cumsum((counts * centres)[::-1]) / upper[::-1])[::-1]
    between = lower[:-1] * upper[1:] * (lower_mean[:-1] - upper_mean[1:]) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    # The run of equally good thresholds that holds the first maximum.
    run_end = best[0]
    for i in best[1:]:
        if i != run_end + 1:
            break
        run_end = i
    if run_end == best[0]:
        return float(centres[best[0]])
    return float((centres[best[0]] + centres[run_end + 1]) / 2)


def two_gaussians(
    counts: np.ndarray, centres: np.ndarray, *, iterations: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and standard deviations of a two-Gaussian fit to a histogram.

    Expectation-maximisation on the binned counts, started from Otsu's split; the lower
    mode comes first.
    """
    counts = np.asarray(counts, np.float64)
    x = np.asarray(centres, np.float64)
    total = counts.sum()
    split = otsu_threshold(counts, x)
    below = x <= split
    weights = np.array([counts[below].sum(), counts[~below].sum()]) / total
    means = np.array(
        [
            np.average(x[below], weights=counts[below] + 1e-12),
            np.average(x[~below], weights=counts[~below] + 1e-12),
        ]
    )
    floor = max(float(np.diff(x[:2])[0]) if len(x) > 1 else 1e-3, 1e-6)
    stds = np.array(
        [
            np.sqrt(np.average((x[below] - means[0]) ** 2, weights=counts[below] + 1e-12)),
            np.sqrt(np.average((x[~below] - means[1]) ** 2, weights=counts[~below] + 1e-12)),
        ]
    )
    stds = np.maximum(stds, floor)
    for _ in range(iterations):
        density = weights[:, None] * np.exp(-0.5 * ((x - means[:, None]) / stds[:, None]) ** 2)
        density /= stds[:, None]
        resp = density / np.maximum(density.sum(axis=0), 1e-300)
        mass = (resp * counts).sum(axis=1)
        if (mass <= 0).any():
            break
        new_means = (resp * counts * x).sum(axis=1) / mass
        stds = np.maximum(
            np.sqrt((resp * counts * (x - new_means[:, None]) ** 2).sum(axis=1) / mass), floor
        )
        weights = mass / total
        converged = np.allclose(new_means, means, atol=floor / 10)
        means = new_means
        if converged:
            break
    order = np.argsort(means)
    return weights[order], means[order], stds[order]


def bimodal_threshold(
    counts: np.ndarray, centres: np.ndarray, *, upper_above: float | None = None
) -> float | None:
    """Otsu's threshold of a histogram when it has two separate modes, else None.

    Separate means Ashman's D > 2 (Ashman, Bird and Zepf 1994) for a two-Gaussian fit,
    each mode holding at least ``MIN_MODE_SHARE`` of the pixels and, with
    ``upper_above``, the upper mode's mean above that value (water's mode of a water index
    lies above 0). Otsu's threshold is kept only when it falls between the two modes, more
    than one standard deviation from each: it drifts into the larger mode when the other
    is small. A unimodal histogram (a raster with little or no water) gives None, where
    Otsu would split its one mode in the middle of the land.
    """
    from geoseg.water import BIMODAL_D, MIN_MODE_SHARE

    counts = np.asarray(counts, np.float64)
    if np.count_nonzero(counts) < 2:
        return None
    weights, means, stds = two_gaussians(counts, centres)
    separation = math.sqrt(2.0) * abs(means[1] - means[0]) / math.sqrt(stds[0] ** 2 + stds[1] ** 2)
    threshold = otsu_threshold(counts, centres)
    log.debug(
        "two modes at %.3f and %.3f (weights %.3f, %.3f), Ashman's D %.2f, Otsu %.4f",
        means[0],
        means[1],
        weights[0],
        weights[1],
        separation,
        threshold,
    )
    if separation <= BIMODAL_D or weights.min() < MIN_MODE_SHARE:
        return None
    if upper_above is not None and not means[1] > upper_above:
        return None
    if not means[0] + stds[0] < threshold < means[1] - stds[1]:
        return None
    return threshold


def threshold_mask(
    values: np.ndarray, threshold: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Pixels whose index exceeds ``threshold`` (bool); NaN and invalid pixels are False."""
    with np.errstate(invalid="ignore"):
        mask = np.asarray(values) > threshold
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    return mask


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without 8-connected components of fewer than ``min_size`` pixels."""
    from skimage.measure import label

    if min_size <= 1 or not mask.any():
        return mask
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    """``mask`` with 4-connected holes of fewer than ``max_hole`` pixels filled.

    A hole is background not connected to the array border.
    """
    from skimage.measure import label

    if max_hole <= 1 or mask.all():
        return mask
    labels = label(~mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_hole
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def clean_mask(
    mask: np.ndarray,
    *,
    min_size: int = 0,
    fill_holes: int = 0,
    opening: int = 0,
    closing: int = 0,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Clean a coarse mask (H, W) bool; sizes in pixels, ``opening``/``closing`` disk radii.

    In this order: opening, closing, remove 8-connected components smaller than
    ``min_size``, fill holes smaller than ``fill_holes``, then clear invalid pixels.
    """
    from skimage.morphology import closing as grey_closing
    from skimage.morphology import disk
    from skimage.morphology import opening as grey_opening

    mask = np.asarray(mask, dtype=bool)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        mask = mask & valid
    for name, value in (
        ("min_size", min_size),
        ("fill_holes", fill_holes),
        ("opening", opening),
        ("closing", closing),
    ):
        if value < 0:
            raise OptionError(f"{name} must not be negative, got {value}")
    if opening > 0:
        mask = grey_opening(mask, disk(int(opening))).astype(bool)
    if closing > 0:
        mask = grey_closing(mask, disk(int(closing))).astype(bool)
    mask = _remove_small(mask, int(min_size))
    mask = _fill_small_holes(mask, int(fill_holes))
    if valid is not None:
        mask &= valid
    return mask


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of each mask pixel to the nearest non-mask pixel.

    The array border does not count as non-mask: water runs on past a chip edge.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    return distance_transform_edt(mask).astype(np.float32)


def erode_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``mask`` farther than ``radius`` pixels from any non-mask pixel."""
    if radius <= 0:
        return np.asarray(mask, dtype=bool).copy()
    return interior_distance(mask) > radius


def dilate_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels (Euclidean)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0 or not mask.any():
        return mask.copy()
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= radius
