"""Prompts: points and boxes drawn from water masks, per chip and as georeferenced features."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import OptionError
from geoseg.masks import dilate_mask, erode_mask
from geoseg.prompts import PromptSettings, chip_rng, prompts_from_mask, spaced_sample


def meander(height: int = 120, width: int = 160, half_width: float = 7.0) -> np.ndarray:
    """A river band winding across the image from left to right, (H, W) bool."""
    rows, cols = np.mgrid[:height, :width]
    centre = height / 2 + height / 4 * np.sin(cols / width * 3 * np.pi)
    return np.abs(rows - centre) < half_width


def test_settings_validate_and_normalise():
    settings = PromptSettings(index="NDWI", threshold="0.2", min_size="500m2")
    assert settings.index == "ndwi" and settings.threshold == 0.2
    with pytest.raises(OptionError, match="unknown index"):
        PromptSettings(index="nbr")
    with pytest.raises(OptionError, match="points"):
        PromptSettings(points=-1)
    with pytest.raises(OptionError, match="per"):
        PromptSettings(per="tile")
    with pytest.raises(OptionError, match="--threshold"):
        PromptSettings(threshold="high")


def test_points_sit_inside_the_eroded_water_and_negatives_outside():
    river = meander()
    pond = np.zeros_like(river)
    pond[5:25, 120:150] = True
    mask = river | pond
    settings = PromptSettings(points=4, negative=6, erode=3, negative_buffer=5, perturb=0)
    prompts = prompts_from_mask(mask, settings, np.random.default_rng(0))

    cols, rows = np.floor(prompts.points).astype(int).T
    positive = prompts.labels == 1
    assert positive.sum() == 8  # 4 per component, 2 components
    assert np.allclose(prompts.points % 1, 0.5)  # pixel centres
    assert erode_mask(mask, 3)[rows[positive], cols[positive]].all()
    assert (prompts.labels == 0).sum() == 6
    assert not dilate_mask(mask, 5)[rows[~positive], cols[~positive]].any()
    # Spread out: no two positive points of a component closer than the minimum spacing.
    river_points = prompts.points[positive & river[rows, cols]]
    gaps = np.hypot(*(river_points[:, None] - river_points[None]).T)
    assert gaps[np.triu_indices(len(river_points), 1)].min() >= 10

    assert len(prompts.boxes) == 2
    for component in (river, pond):
        r, c = np.nonzero(component)
        assert any(
            b[0] <= c.min()
            and b[1] <= r.min()
            and b[2] >= c.max() + 1
            and b[3] >= r.max() + 1
            and b[2] - b[0] == c.max() + 1 - c.min()
            for b in prompts.boxes
        )


def test_boxes_are_perturbed_within_bounds_and_clipped_to_the_chip():
    mask = meander(64, 64, 6)
    settings = PromptSettings(points=0, perturb=5)
    for seed in range(10):
        (box,) = prompts_from_mask(mask, settings, np.random.default_rng(seed)).boxes
        r, c = np.nonzero(mask)
        exact = np.array([c.min(), r.min(), c.max() + 1, r.max() + 1])
        assert np.all(np.abs(box - exact) <= 5)
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 64 and box[3] <= 64
        assert box[2] > box[0] and box[3] > box[1]


def test_same_seed_same_prompts_and_chip_seeds_ignore_visit_order():
    mask = meander()
    settings = PromptSettings(points=5, negative=5, perturb=8)
    a = prompts_from_mask(mask, settings, chip_rng(7, 2, 3))
    b = prompts_from_mask(mask, settings, chip_rng(7, 2, 3))
    c = prompts_from_mask(mask, settings, chip_rng(7, 3, 2))
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.points, c.points)


def test_invalid_pixels_are_never_water_nor_sampled_and_thin_components_get_no_points():
    mask = meander()
    valid = np.ones_like(mask)
    valid[:, :80] = False
    settings = PromptSettings(points=3, negative=20, erode=2, perturb=0)
    prompts = prompts_from_mask(mask, settings, np.random.default_rng(1), valid)
    assert (prompts.points[:, 0] > 80).all()
    assert (prompts.boxes[:, 0] >= 80).all()
    thin = np.zeros((30, 30), bool)
    thin[10:13, :] = True  # 3 px wide: nothing is farther than 2 px from the bank
    thin_prompts = prompts_from_mask(thin, settings, np.random.default_rng(1))
    assert (thin_prompts.labels == 1).sum() == 0 and len(thin_prompts.boxes) == 1


def test_one_set_per_chip_and_empty_masks():
    mask = meander()
    pond = np.zeros_like(mask)
    pond[5:25, 120:150] = True
    chip = prompts_from_mask(
        mask | pond, PromptSettings(points=3, per="chip", perturb=0), np.random.default_rng(0)
    )
    assert (chip.labels == 1).sum() == 3 and len(chip.boxes) == 1
    empty = prompts_from_mask(
        np.zeros((16, 16), bool), PromptSettings(negative=2), np.random.default_rng(0)
    )
    assert empty.empty and (empty.labels == 0).sum() == 2


def test_spaced_sample_keeps_its_distance():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, (5000, 2))
    picked = spaced_sample(coords, 10, 20.0, rng)
    assert len(picked) == 10
    chosen = coords[picked]
    gaps = np.hypot(*(chosen[:, None] - chosen[None]).T)[np.triu_indices(10, 1)]
    assert gaps.min() >= 10  # at worst halved once
    assert len(spaced_sample(coords[:2], 5, 50.0, rng)) == 2
