"""The spectral backend's defaults judged on hand-labelled Sentinel-2 chips, through the CLI."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geoseg.cli import cli

FLOODS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "sen1floods11"
CHIPS = ("India_900498", "Spain_7370579", "USA_430764")

pytestmark = pytest.mark.skipif(
    not (FLOODS / "s2").is_dir(), reason="../shared/data/sen1floods11 not present"
)


def image(chip: str) -> Path:
    return FLOODS / "s2" / f"{chip}_S2Hand.tif"


def labels(chip: str) -> np.ndarray:
    with rasterio.open(FLOODS / "labels" / f"{chip}_LabelHand.tif") as src:
        return src.read(1)


def geoseg(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def predicted_water(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1) == 1


def counts(water: np.ndarray, label: np.ndarray) -> np.ndarray:
    labelled, truth = label >= 0, label == 1
    water = water & labelled
    return np.array([(water & truth).sum(), (water & ~truth).sum(), (~water & truth).sum()])


def iou(tp_fp_fn: np.ndarray) -> float:
    return tp_fp_fn[0] / tp_fp_fn.sum()


@pytest.fixture(scope="module")
def default_masks(tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    for chip in CHIPS:
        geoseg(
            "predict",
            image(chip),
            "-o",
            out / f"{chip}.tif",
            "--backend",
            "spectral",
            "--bands",
            "sentinel2",
            "-q",
        )
    return out


def test_defaults_reach_the_target_iou_on_hand_labelled_floods(default_masks):
    per_chip = {
        chip: counts(predicted_water(default_masks / f"{chip}.tif"), labels(chip)) for chip in CHIPS
    }
    pooled = iou(sum(per_chip.values()))
    assert pooled >= 0.88
    for chip, row in per_chip.items():
        with rasterio.open(image(chip)) as src:
            b = src.read().astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            ndwi = (b[2] - b[7]) / (b[2] + b[7])
            mndwi = (b[2] - b[11]) / (b[2] + b[11])
        best_simple = max(iou(counts(index > 0, labels(chip))) for index in (ndwi, mndwi))
        assert iou(row) >= best_simple - 0.05, chip


def test_the_mask_keeps_the_chips_georeferencing_and_nodata(default_masks):
    with (
        rasterio.open(image("Spain_7370579")) as src,
        rasterio.open(default_masks / "Spain_7370579.tif") as mask,
    ):
        assert mask.crs == src.crs
        assert mask.transform.almost_equals(src.transform, precision=1e-12)
        assert (mask.width, mask.height) == (src.width, src.height)
        assert mask.nodata == 255
        assert mask.xy(100, 200) == pytest.approx(src.xy(100, 200), abs=1e-12)


def test_small_chips_with_overlap_give_the_one_piece_mask(default_masks, tmp_path):
    chip = "India_900498"
    geoseg(
        "predict",
        image(chip),
        "-o",
        tmp_path / "small.tif",
        "--backend",
        "spectral",
        "--bands",
        "sentinel2",
        "--size",
        "96",
        "--overlap",
        "16",
        "-q",
    )
    with (
        rasterio.open(tmp_path / "small.tif") as small,
        rasterio.open(default_masks / f"{chip}.tif") as whole,
    ):
        np.testing.assert_array_equal(small.read(1), whole.read(1))


def test_prompts_sit_on_labelled_water_and_dry_land(tmp_path):
    on_water = positives = on_dry = negatives = 0
    for chip in CHIPS:
        out = tmp_path / f"{chip}.gpkg"
        geoseg("prompts", image(chip), "-o", out, "--bands", "sentinel2", "--negative", "3", "-q")
        points = gpd.read_file(out, layer="points")
        with rasterio.open(FLOODS / "labels" / f"{chip}_LabelHand.tif") as src:
            points = points.to_crs(src.crs)
            xy = zip(points.geometry.x, points.geometry.y, strict=True)
            values = np.array([v[0] for v in src.sample(xy)])
        positive = points["label"].to_numpy() == 1
        labelled = values >= 0
        on_water += int((positive & labelled & (values == 1)).sum())
        positives += int((positive & labelled).sum())
        on_dry += int((~positive & labelled & (values == 0)).sum())
        negatives += int((~positive & labelled).sum())
    assert positives >= 30 and negatives >= 6
    assert on_water / positives >= 0.95
    assert on_dry / negatives >= 0.95
