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


# Prompts over rasters: one threshold per raster, georeferenced features, prompts files --------


def meander_raster(make_raster, *, nodata_block: bool = False):
    """A 4-band uint16 raster (red, green, blue, nir named in the file) with a water meander.

    Returns the path and the true water mask. Water: green 1200, nir 300 (ndwi ~ 0.6);
    land: green 500, nir 2500 (ndwi ~ -0.67); noise on top.
    """
    water = meander(150, 200, 8.0)
    pond = np.zeros_like(water)
    pond[10:40, 150:185] = True
    water |= pond
    rng = np.random.default_rng(3)
    green = np.where(water, 1200, 500) + rng.normal(0, 40, water.shape)
    nir = np.where(water, 300, 2500) + rng.normal(0, 40, water.shape)
    red = np.full(water.shape, 700.0)
    blue = np.where(water, 900, 400).astype(float)
    data = np.clip(np.stack([red, green, blue, nir]), 1, 65535).astype(np.uint16)
    if nodata_block:
        data[:, 120:, :30] = 0
        water = water.copy()
        water[120:, :30] = False
    path = make_raster(
        "meander.tif", data=data, nodata=0, descriptions=["red", "green", "blue", "nir"]
    )
    return path, water


def _pixel_of(source, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = ~source.transform @ (xy[:, 0], xy[:, 1])
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


def test_auto_prompts_follow_the_meander_with_one_threshold(make_raster):
    from geoseg.prompts import auto_prompts, prompt_features
    from geoseg.raster import open_raster
    from geoseg.windows import tile_grid

    path, water = meander_raster(make_raster, nodata_block=True)
    settings = PromptSettings(
        points=3, negative=2, erode=3, perturb=0, min_size=50, negative_buffer=4
    )
    with open_raster(path) as source:
        auto = auto_prompts(source, settings)
        assert -0.5 < auto.threshold < 0.5
        whole, valid = auto.coarse_mask(source.dataset.window(*source.bounds))
        assert (whole == water).mean() > 0.999
        assert not whole[~valid].any()
        grid = tile_grid(source, 64, 8)
        for tile in grid:
            # The chip's mask is the raster's mask: no per-chip threshold.
            chip_mask, _ = auto.coarse_mask(tile.window)
            r0, c0 = int(tile.window.row_off), int(tile.window.col_off)
            inside = chip_mask[: source.height - r0, : source.width - c0]
            assert np.array_equal(inside, whole[r0 : r0 + 64, c0 : c0 + 64])
            found = auto.chip_prompts(tile)
            # Boxes contain their components (chip pixel coordinates).
            from skimage.measure import label

            components = label(chip_mask, connectivity=2)
            for box, component in zip(found.prompts.boxes, found.box_components, strict=True):
                rows, cols = np.nonzero(components == component)
                assert box[0] <= cols.min() and box[2] >= cols.max() + 1
                assert box[1] <= rows.min() and box[3] >= rows.max() + 1
        features = prompt_features(source, settings, size=64, overlap=8, prompts=auto)
        assert features.chips == len(grid) == 12

    points = features.points
    assert points.crs == source.crs
    xy = np.stack([points.geometry.x, points.geometry.y], axis=1)
    rows, cols = _pixel_of(source, xy)
    positive = points["label"].to_numpy() == 1
    assert positive.sum() >= 12 and (~positive).sum() == 2 * 12
    assert erode_mask(water, 3)[rows[positive], cols[positive]].all()
    # Negatives: outside the grown water, on valid pixels inside the raster.
    negative_rows, negative_cols = rows[~positive], cols[~positive]
    on_raster = (negative_rows < 150) & (negative_cols < 200)
    assert on_raster.all()
    assert not dilate_mask(water, 4)[negative_rows, negative_cols].any()
    assert not ((negative_rows >= 120) & (negative_cols < 30)).any()
    # Points sit at pixel centres: map coordinates go back to exactly their pixels.
    assert np.allclose((~source.transform @ (xy[:, 0], xy[:, 1]))[0] % 1, 0.5)
    assert set(points["chip"]) <= {f"r{r:03d}_c{c:03d}" for r in range(3) for c in range(4)}
    assert (points.loc[positive, "component"] > 0).all()
    assert (points.loc[~positive, "component"] == 0).all()


def test_same_seed_same_features_other_seed_other_points(make_raster):
    from geoseg.prompts import prompt_features
    from geoseg.raster import open_raster

    path, _ = meander_raster(make_raster)
    with open_raster(path) as source:
        runs = [
            prompt_features(source, PromptSettings(seed=seed, negative=2), size=64, overlap=8)
            for seed in (5, 5, 6)
        ]
    a, b, c = (run.points.geometry.get_coordinates().to_numpy() for run in runs)
    assert np.array_equal(a, b)
    assert runs[0].boxes.geometry.equals(runs[1].boxes.geometry)
    assert not np.array_equal(a, c)


def test_prompts_file_round_trip_onto_a_reprojected_raster(make_raster, tmp_path):
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject, transform

    from geoseg.prompts import file_prompts, prompt_features, read_prompts, write_prompts
    from geoseg.raster import open_raster
    from geoseg.windows import tile_grid

    path, _ = meander_raster(make_raster)
    with open_raster(path) as source:
        features = prompt_features(source, PromptSettings(negative=3), size=64, overlap=8)
    for name in ("prompts.gpkg", "prompts.geojson"):
        write_prompts(tmp_path / name, features)
    back = read_prompts(tmp_path / "prompts.gpkg")
    assert back.crs == features.crs and len(back.points) == len(features.points)
    assert back.points["label"].tolist() == features.points["label"].tolist()
    assert len(back.boxes) == len(features.boxes)

    # A copy of the raster in Web Mercator with a different pixel size.
    warped = tmp_path / "warped.tif"
    with rasterio.open(path) as src:
        dst_transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds, resolution=13.0
        )
        profile = src.profile | dict(
            crs="EPSG:3857", transform=dst_transform, width=width, height=height
        )
        with rasterio.open(warped, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.nearest,
                )

    original = features.points.geometry.get_coordinates().to_numpy()
    for name in ("prompts.gpkg", "prompts.geojson"):
        with open_raster(warped) as target:
            source_prompts = file_prompts(tmp_path / name, target)
            landed = []
            for tile in tile_grid(target, 64, 0):
                chip = source_prompts.for_tile(tile)
                assert ((chip.points >= 0) & (chip.points < 64)).all()
                x, y = tile.transform @ (chip.points[:, 0].astype(float), chip.points[:, 1])
                landed.append(np.stack([x, y, chip.labels], axis=1))
                for box in chip.boxes:
                    assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 64
            landed = np.concatenate(landed)
        # Back in the source CRS, every point lands within half a source pixel (5 m) of
        # where it was written, and every written point landed on some chip.
        xs, ys = transform("EPSG:3857", features.crs, landed[:, 0], landed[:, 1])
        gaps = np.hypot(xs - original[:, None, 0], ys - original[:, None, 1])
        assert gaps.min(axis=0).max() < 5.0
        assert gaps.min(axis=1).max() < 5.0
        nearest = gaps.argmin(axis=0)
        assert np.array_equal(landed[:, 2], features.points["label"].to_numpy()[nearest])


def test_hand_drawn_prompts_in_another_crs_without_labels_or_chip_ids(make_raster, tmp_path):
    import geopandas as gpd
    import shapely

    from geoseg.errors import InputFileError
    from geoseg.prompts import file_prompts
    from geoseg.raster import open_raster
    from geoseg.windows import tile_grid

    path, _ = meander_raster(make_raster)
    with open_raster(path) as source:
        t = source.transform
        centre = t @ (100.5, 75.5)  # pixel (row 75, col 100)
        other = t @ (10.5, 20.5)
        drawn = gpd.GeoDataFrame(
            geometry=[
                shapely.MultiPoint([centre, other]),
                shapely.box(*(t @ (90, 80)), *(t @ (110, 70))),
            ],
            crs=source.crs,
        ).to_crs("EPSG:4326")
        drawn.to_file(tmp_path / "drawn.geojson", driver="GeoJSON")
        labelled = gpd.GeoDataFrame(
            {"label": ["negative"]}, geometry=[shapely.Point(other)], crs=source.crs
        ).to_crs("EPSG:3857")
        labelled.to_file(tmp_path / "labelled.gpkg", layer="my edits")

        prompts = file_prompts(tmp_path / "drawn.geojson", source)
        grid = tile_grid(source, 64, 0)
        chip = prompts.for_tile(grid.tile(1, 1))  # rows 64..127, cols 64..127
        assert chip.labels.tolist() == [1]
        assert np.allclose(chip.points, [[100.5 - 64, 75.5 - 64]], atol=1e-6)
        assert np.allclose(chip.boxes, [[90 - 64, 70 - 64, 110 - 64, 80 - 64]], atol=1e-3)
        negative = file_prompts(tmp_path / "labelled.gpkg", source).for_tile(grid.tile(0, 0))
        assert negative.labels.tolist() == [0] and len(negative.boxes) == 0

    empty = gpd.GeoDataFrame({"name": []}, geometry=gpd.GeoSeries([], crs="EPSG:4326"))
    empty.to_file(tmp_path / "empty.gpkg")
    with open_raster(path) as source, pytest.raises(InputFileError, match="no point or polygon"):
        file_prompts(tmp_path / "empty.gpkg", source)


def test_preview_reads_a_bounded_overview_with_its_own_transform(make_raster):
    from geoseg.preview import composite_bands, read_overview
    from geoseg.raster import open_raster

    path = make_raster(bands=3, width=300, height=200, dtype="uint16")
    with open_raster(path, "rgb") as source:
        view = read_overview(source, ["red", "green", "blue"], max_size=100)
        assert view.shape == (67, 100) and view.data.shape == (3, 67, 100)
        # Overview pixel (0, 0) covers 3 x 3 source pixels from the raster origin.
        assert view.transform.c == source.transform.c and view.transform.f == source.transform.f
        assert view.transform.a == pytest.approx(source.transform.a * 3)
        col, row = view.to_pixels(*(source.transform @ (150, 100)))
        assert col == pytest.approx(50) and row == pytest.approx(33.5, abs=0.05)
    assert composite_bands(["red", "green", "blue", "nir"])[1] == "true colour"
    assert composite_bands(["swir1", "nir", "red", "green"])[0] == ("swir1", "nir", "red")


def test_boxes_stop_at_the_raster_edge_and_the_prompts_file_carries_qgis_styles(
    make_raster, tmp_path
):
    """Edge chips are padded past the raster; a perturbed box must not follow them."""
    from geoseg.prompts import prompt_features, write_prompts
    from geoseg.raster import open_raster
    from geoseg.styles import read_gpkg_styles

    data = np.full((4, 100, 90), 500, np.uint16)
    data[3] = 2500  # land: nir high
    data[1, 60:, 70:], data[3, 60:, 70:] = 1200, 300  # water in the bottom-right corner
    path = make_raster(
        "corner.tif", data=data, nodata=0, descriptions=["red", "green", "blue", "nir"]
    )
    settings = PromptSettings(points=1, perturb=8, min_size=10, threshold=0.0)
    with open_raster(path) as source:
        features = prompt_features(source, settings, size=64, overlap=8)
        left, bottom, right, top = source.bounds
    x0, y0, x1, y1 = features.boxes.total_bounds
    assert len(features.boxes) >= 1
    assert left <= x0 and bottom <= y0 and x1 <= right and y1 <= top
    styles = {s.layer: s for s in read_gpkg_styles(write_prompts(tmp_path / "p.gpkg", features))}
    assert set(styles) == {"points", "boxes"} and all(s.default for s in styles.values())
    assert 'attr="label"' in styles["points"].qml and "singleSymbol" in styles["boxes"].qml
