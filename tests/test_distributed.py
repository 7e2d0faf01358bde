"""Predict and tile on a dask LocalCluster of 2 processes: the same outputs as one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_raster

pytest.importorskip("distributed")

SPECTRAL = "spectral"


def water_scene(path: Path, width: int, height: int, seed: int) -> Path:
    """A 4-band NAIP-like uint16 raster with smooth lakes (green above nir) and a nodata corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(height // 16 + 2, width // 16 + 2))
    field = np.kron(coarse, np.ones((16, 16)))[:height, :width]
    field += rng.normal(scale=0.2, size=field.shape)
    nir = (2000 - 900 * field).clip(1, 4000)
    green = np.full_like(nir, 1500)
    data = np.stack([green * 0.9, green, green * 0.8, nir]).astype(np.uint16)
    data[:, :12, :20] = 0
    transform = Affine(0.6, 0, 350000 + seed, 0, -0.6, 4500000)
    return write_raster(
        path,
        data,
        crs="EPSG:26915",
        transform=transform,
        nodata=0,
        descriptions=["red", "green", "blue", "nir"],
    )


@pytest.fixture(scope="module")
def client():
    from geoseg.distributed import cluster_client

    with cluster_client(workers=2) as client:
        yield client


def single_process(source: Path, out: Path, options=(), **kwargs) -> Path:
    from geoseg.plugins import create_backend
    from geoseg.predict import predict_raster

    backend = create_backend(SPECTRAL, options)
    backend.load(None, "cpu")
    return predict_raster(backend, source, out, **kwargs)


def assert_same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as left, rasterio.open(b) as right:
        assert left.crs == right.crs
        assert left.transform == right.transform
        assert (left.width, left.height, left.dtypes) == (right.width, right.height, right.dtypes)
        assert left.tags() == right.tags()
        assert np.array_equal(left.read(), right.read(), equal_nan=True)
        if left.count == 1:
            assert left.colormap(1) == right.colormap(1)


def test_many_rasters_match_one_process(client, tmp_path):
    from geoseg.distributed import BackendSpec, PredictOptions, predict_on_cluster
    from geoseg.predict import plan_outputs

    folder = tmp_path / "scenes"
    folder.mkdir()
    sources = [water_scene(folder / f"s{i}.tif", 150 + 40 * i, 130, seed=i) for i in range(3)]
    jobs = plan_outputs(sources, tmp_path / "masks", probabilities=True, single_file=False)
    totals, chips = [], []
    report = predict_on_cluster(
        client,
        jobs,
        BackendSpec(SPECTRAL, ("softness=0.05",)),
        PredictOptions(size=64, overlap=16),
        on_start=totals.append,
        progress=chips.append,
    )
    assert not report.failed and len(report.done) == 3 and not report.blocks
    # One bar for the whole job: every chip of every raster counted once.
    assert sum(chips) == totals[0] == sum(len(single_grid(s)) for s in sources)
    for job in jobs:
        expected = tmp_path / "single" / job.mask.name
        single_process(
            job.source,
            expected,
            ("softness=0.05",),
            size=64,
            overlap=16,
            probabilities_path=expected.with_name("p.tif"),
        )
        assert_same_raster(job.mask, expected)
        assert_same_raster(job.probabilities, expected.with_name("p.tif"))
        assert job.style.is_file()


def single_grid(source: Path):
    from geoseg.plugins import create_backend
    from geoseg.predict import prediction_grid

    return prediction_grid(create_backend(SPECTRAL), source, size=64, overlap=16)


@pytest.mark.parametrize("overlap", [16, 40])  # 40: wider than a step, two margin rows
def test_one_raster_in_blocks_matches_one_process(client, tmp_path, overlap):
    from geoseg.distributed import BackendSpec, PredictOptions, predict_on_cluster
    from geoseg.predict import plan_outputs

    source = water_scene(tmp_path / "big.tif", 230, 300, seed=7)
    jobs = plan_outputs([source], tmp_path / "mask.tif", probabilities=True)
    report = predict_on_cluster(
        client,
        jobs,
        BackendSpec(SPECTRAL, ("softness=0.05",)),
        PredictOptions(size=64, overlap=overlap),
        block_rows=2,
    )
    assert not report.failed and report.blocks[source] >= 3
    expected = single_process(
        source,
        tmp_path / "single.tif",
        ("softness=0.05",),
        size=64,
        overlap=overlap,
        probabilities_path=tmp_path / "single_p.tif",
    )
    assert_same_raster(jobs[0].mask, expected)
    assert_same_raster(jobs[0].probabilities, tmp_path / "single_p.tif")
    with rasterio.open(expected) as mask:
        assert (mask.read(1) == 1).any() and (mask.read(1) == 0).any()
    # Part files are gone; only the outputs remain.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_one_raster_on_a_scheduler_is_split_and_identical(client, invoke, tmp_path):
    source = water_scene(tmp_path / "scene.tif", 200, 330, seed=3)
    out = tmp_path / "mask.tif"
    # One raster, two workers: cut into blocks of chip rows.
    result = invoke(
        "predict",
        source,
        "-o",
        out,
        "--backend",
        SPECTRAL,
        "--size",
        "64",
        "--scheduler",
        client.scheduler.address,
        "--vector",
        "-q",
    )
    assert result.output.splitlines()[-2:] == [
        f"mask: {out}",
        f"polygons: {out.with_suffix('.gpkg')}",
    ]
    expected = single_process(source, tmp_path / "single.tif", size=64)
    assert_same_raster(out, expected)
    assert out.with_suffix(".gpkg").is_file() and out.with_suffix(".qml").is_file()


def test_corrupt_raster_is_reported_and_rerun_completes_only_what_is_missing(
    client, invoke, tmp_path
):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(3):
        water_scene(folder / f"s{i}.tif", 120, 100, seed=i)
    (folder / "broken.tif").write_bytes(b"not a GeoTIFF")
    out = tmp_path / "masks"
    args = (
        "predict",
        folder,
        "-o",
        out,
        "--backend",
        SPECTRAL,
        "--size",
        "64",
        "--scheduler",
        client.scheduler.address,
        "-q",
    )
    result = invoke(*args, expect=2)
    assert "3 done, 1 failed, 0 already complete" in result.output
    assert f"error: {folder / 'broken.tif'}: not a raster geoseg can read" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.glob("*.tif")) == ["s0.tif", "s1.tif", "s2.tif"]

    (folder / "broken.tif").unlink()
    (out / "s1.tif").unlink()
    kept = {name: (out / name).stat().st_mtime_ns for name in ("s0.tif", "s2.tif")}
    result = invoke(*args)
    assert "1 done, 0 failed, 2 already complete" in result.output
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert_same_raster(
        out / "s1.tif", single_process(folder / "s1.tif", tmp_path / "s1.tif", size=64)
    )


def test_each_worker_loads_the_model_once(client, tmp_path):
    from geoseg.distributed import BackendSpec, PredictOptions, backend_loads, predict_on_cluster
    from geoseg.predict import plan_outputs

    sources = [water_scene(tmp_path / f"s{i}.tif", 100, 100, seed=i) for i in range(6)]
    # Options no other test uses: a model of its own in the per-process cache.
    spec = BackendSpec(SPECTRAL, ("max_windows=77",))
    jobs = plan_outputs(sources, tmp_path / "masks", single_file=False)
    report = predict_on_cluster(client, jobs, spec, PredictOptions(size=64))
    assert len(report.done) == 6
    loads = [counts.get(spec, 0) for counts in client.run(backend_loads).values()]
    # 12 tasks (a plan and a prediction per raster) over 2 workers, one load per worker.
    assert 1 <= sum(loads) <= 2 and max(loads) == 1


def test_tiling_on_the_cluster_gives_the_same_dataset(client, invoke, tmp_path):
    import pyogrio

    sources = [water_scene(tmp_path / f"s{i}.tif", 150, 120, seed=i) for i in range(3)]
    labels = np.zeros((120, 150), np.uint8)
    labels[:, 70:] = 1
    label_path = write_raster(
        tmp_path / "labels.tif",
        labels,
        crs="EPSG:26915",
        transform=Affine(0.6, 0, 350000, 0, -0.6, 4500000),
    )
    common = ("--size", "48", "--overlap", "8", "--labels", label_path, "--min-valid", "0.1", "-q")
    invoke("tile", *sources, "-o", tmp_path / "one", *common)
    invoke(
        "tile",
        *sources,
        "-o",
        tmp_path / "cluster",
        *common,
        "--scheduler",
        client.scheduler.address,
    )
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    assert json.loads((one / "dataset.json").read_text()) == json.loads(
        (cluster / "dataset.json").read_text()
    )
    assert pyogrio.read_dataframe(one / "tiles.gpkg", layer="tiles").equals(
        pyogrio.read_dataframe(cluster / "tiles.gpkg", layer="tiles")
    )
    for folder in ("images", "labels"):
        names = sorted(p.name for p in (one / folder).iterdir())
        assert names and names == sorted(p.name for p in (cluster / folder).iterdir())
        for name in names:
            assert (one / folder / name).read_bytes() == (cluster / folder / name).read_bytes()


def test_relative_paths_reach_workers_that_run_elsewhere(client, invoke, tmp_path, monkeypatch):
    """Workers of an external cluster have their own working directory: paths go absolute."""
    import os

    monkeypatch.chdir(tmp_path)
    worker_dirs = set(client.run(os.getcwd).values())
    assert str(tmp_path) not in worker_dirs  # the cluster was started in another folder
    Path("scenes").mkdir()
    for i in range(2):
        water_scene(Path("scenes") / f"s{i}.tif", 100, 90, seed=i)
    labels = np.zeros((90, 100), np.uint8)
    labels[:, 50:] = 1
    write_raster(
        Path("labels.tif"),
        labels,
        crs="EPSG:26915",
        transform=Affine(0.6, 0, 350000, 0, -0.6, 4500000),
    )
    address = ("--scheduler", client.scheduler.address, "-q")
    result = invoke(
        "predict",
        "scenes",
        "-o",
        "masks",
        "--backend",
        SPECTRAL,
        "--size",
        "64",
        "--vector",
        *address,
    )
    assert "2 done, 0 failed, 0 already complete" in result.output
    assert f"mask: {tmp_path / 'masks' / 's0.tif'}" in result.output
    assert sorted(p.name for p in Path("masks").glob("*.gpkg")) == ["s0.gpkg", "s1.gpkg"]
    invoke(
        "tile",
        "scenes/s0.tif",
        "scenes/s1.tif",
        "-o",
        "chips",
        "--size",
        "48",
        "--overlap",
        "8",
        "--labels",
        "labels.tif",
        *address,
    )
    info = json.loads(Path("chips/dataset.json").read_text())
    assert info["counts"]["chips"] > 0 and info["labels"] == str(tmp_path / "labels.tif")
    assert len(list(Path("chips/labels").iterdir())) == info["counts"]["chips"]
    for folder in worker_dirs:  # nothing went to the workers' own folders
        assert not (Path(folder) / "masks").exists() and not (Path(folder) / "chips").exists()


def test_workers_that_do_not_see_the_files_are_one_line(client, tmp_path):
    from geoseg.distributed import check_worker_access
    from geoseg.errors import OptionError

    check_worker_access(client, [tmp_path], [tmp_path / "new" / "masks"])  # fine: no error
    with pytest.raises(OptionError, match=r"workers do not see .*gone\.tif \(and 1 more\); "):
        check_worker_access(client, [tmp_path / "gone.tif", tmp_path / "also.tif"], [tmp_path])
    assert not list(tmp_path.glob(".geoseg-probe-*"))


def test_scheduler_that_does_not_exist_is_one_line(invoke, tmp_path):
    source = water_scene(tmp_path / "scene.tif", 64, 64, seed=1)
    result = invoke(
        "predict",
        source,
        "-o",
        tmp_path / "m.tif",
        "--backend",
        SPECTRAL,
        "--scheduler",
        str(tmp_path / "nowhere.json"),
        expect=2,
    )
    assert "--scheduler" in result.output and "scheduler file" in result.output
    assert not (tmp_path / "m.tif").exists()


def test_train_prints_model_saved_only_on_the_main_process(
    invoke, fake_backend, register_backend, make_raster, tmp_path, monkeypatch
):
    """Under accelerate launch every rank runs the command; only rank 0 reports the model."""

    class Trainer(fake_backend):
        name = "fake-ddp-trainer"

        @classmethod
        def capabilities(cls):
            from geoseg.backend import Capabilities

            return Capabilities(binary=True, classes=("background", "water"), trains=True)

        def train(self, dataset, settings) -> Path:
            settings.output_dir.mkdir(parents=True, exist_ok=True)
            return settings.output_dir

    register_backend(Trainer)
    image = make_raster("image.tif", bands=4)
    label_path = make_raster(
        "labels.tif", bands=1, dtype="uint8", data=np.ones((1, 64, 64), np.uint8)
    )
    invoke(
        "tile",
        image,
        "-o",
        tmp_path / "chips",
        "--bands",
        "naip",
        "--size",
        "32",
        "--overlap",
        "0",
        "--labels",
        label_path,
        "-q",
    )
    args = ("train", tmp_path / "chips", "--backend", "fake-ddp-trainer", "-q")
    monkeypatch.setenv("RANK", "1")
    assert invoke(*args, "-o", tmp_path / "m1").output == ""
    monkeypatch.setenv("RANK", "0")
    assert invoke(*args, "-o", tmp_path / "m0").output == f"model saved to {tmp_path / 'm0'}\n"
