"""Batches of sources: one bad raster never stops the others, in one process as on a cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

SPECTRAL = ("--backend", "spectral", "--bands", "naip", "--size", "64", "-q")


def truncated_copy(path: Path, keep: int = 10 * 1024) -> Path:
    """``path`` cut to its first ``keep`` bytes, as an interrupted download leaves it."""
    data = path.read_bytes()
    assert len(data) > keep
    path.write_bytes(data[:keep])
    return path


def damaged_block(path: Path) -> Path:
    """``path`` with bytes near its end overwritten: it opens, its last blocks do not read."""
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(int(size * 0.8))
        file.write(b"\x00\xff" * 200)
    return path


@pytest.fixture
def scenes(tmp_path, make_raster):
    """a.tif, b.tif (made bad by the test) and c.tif in a folder: 4-band uint16 96x96."""
    (tmp_path / "scenes").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b", "c"):
        data = rng.integers(1, 4000, size=(4, 96, 96)).astype("uint16")
        paths.append(
            make_raster(
                f"scenes/{name}.tif",
                data=data,
                tiled=True,
                blockxsize=32,
                blockysize=32,
                compress="deflate",
            )
        )
    return paths


def lines(text: str, *replace: tuple[object, str]) -> list[str]:
    """Sorted lines of ``text`` (order may differ between workers), dask's banner left out."""
    for old, new in replace:
        text = text.replace(str(old), new)
    return sorted(line for line in text.splitlines() if not line.startswith("dask cluster"))


@pytest.mark.parametrize("bad", ["truncated", "damaged block"])
def test_predict_goes_on_past_a_bad_raster_with_and_without_workers(scenes, invoke, tmp_path, bad):
    pytest.importorskip("distributed")
    a, b, c = scenes
    truncated_copy(b) if bad == "truncated" else damaged_block(b)
    folder = a.parent
    results = {}
    for mode, extra in (("one", ()), ("cluster", ("--workers", "2"))):
        out = tmp_path / mode
        results[mode] = invoke("predict", folder, "-o", out, *SPECTRAL, *extra, expect=2)
        result = results[mode]
        assert "2 done, 1 failed, 0 already complete" in result.stdout
        errors = [line for line in result.stderr.splitlines() if line.startswith("geoseg:")]
        assert len(errors) == 1 and errors[0].startswith(f"geoseg: error: {b}: ")
        assert "Traceback" not in result.output
        assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "c.tif"]
        assert not list(out.glob(".*part*"))
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    assert lines(results["one"].stdout, (one, "OUT")) == lines(
        results["cluster"].stdout, (cluster, "OUT")
    )
    assert lines(results["one"].stderr) == lines(results["cluster"].stderr)
    for name in ("a.tif", "c.tif"):
        with rasterio.open(one / name) as left, rasterio.open(cluster / name) as right:
            assert np.array_equal(left.read(), right.read()) and left.crs == right.crs

    # A re-run redoes only the failed source; once it is fixed, everything is complete.
    b.write_bytes(a.read_bytes())
    again = invoke("predict", folder, "-o", one, *SPECTRAL)
    assert "1 done, 0 failed, 2 already complete" in again.stdout


def test_tile_goes_on_past_a_bad_raster_with_and_without_workers(scenes, invoke, tmp_path):
    pytest.importorskip("distributed")
    import pyogrio

    a, b, c = scenes
    truncated_copy(b)
    args = ("--bands", "naip", "--size", "32", "--overlap", "0", "-q")
    for mode, extra in (("one", ()), ("cluster", ("--workers", "2"))):
        out = tmp_path / mode
        result = invoke("tile", a, b, c, "-o", out, *args, *extra, expect=2)
        assert "2 done, 1 failed" in result.stdout
        errors = [line for line in result.stderr.splitlines() if line.startswith("geoseg:")]
        assert len(errors) == 1 and errors[0].startswith(f"geoseg: error: {b}: ")
        assert "Traceback" not in result.output
        info = json.loads((out / "dataset.json").read_text())
        assert [s["path"] for s in info["sources"]] == [str(a), str(c)]
        assert info["counts"]["chips"] == 18
        assert {Path(p).name.split("_")[0] for p in os.listdir(out / "images")} == {"a", "c"}
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    assert pyogrio.read_dataframe(one / "tiles.gpkg").equals(
        pyogrio.read_dataframe(cluster / "tiles.gpkg")
    )


def test_every_source_bad_writes_no_dataset(scenes, invoke, tmp_path):
    for path in scenes:
        truncated_copy(path)
    out = tmp_path / "chips"
    result = invoke("tile", *scenes, "-o", out, "--bands", "naip", "-q", expect=2)
    assert "0 done, 3 failed" in result.stdout
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 3
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "tile"])
def test_fail_fast_stops_at_the_bad_raster(scenes, invoke, tmp_path, command):
    a, b, c = scenes
    truncated_copy(b)
    out = tmp_path / "out"
    args = SPECTRAL if command == "predict" else ("--bands", "naip", "--overlap", "0", "-q")
    result = invoke(command, a, b, c, "-o", out, *args, "--fail-fast", expect=2)
    assert result.output.strip().splitlines() == [
        line for line in result.output.strip().splitlines() if line.startswith("geoseg: error:")
    ]
    assert str(b) in result.output and "done" not in result.output
    # Every source is checked before any work: the bad one stops the run before c.
    assert not (out / "c.tif").exists() and not (out / "dataset.json").exists()


@pytest.mark.parametrize(
    "command, extra", [("predict", ()), ("tile", ()), ("predict", ("--workers", "2"))]
)
def test_an_option_error_stops_the_batch_in_one_line(scenes, invoke, tmp_path, command, extra):
    """An error every source would repeat concerns the command, not a source: one line,
    whichever source reports it first, and no line for a bad source checked before it."""
    if extra:
        pytest.importorskip("distributed")
    truncated_copy(scenes[0])
    out = tmp_path / "out"
    args = ("--backend", "spectral") if command == "predict" else ()
    result = invoke(
        command,
        *scenes,
        "-o",
        out,
        *args,
        "--bands",
        "naip",
        "--size",
        "32",
        "--overlap",
        "40",
        "-q",
        *extra,
        expect=2,
    )
    assert lines(result.output) == [
        "geoseg: error: overlap (40 px) must be at least 0 and smaller than the chip size (32 px)"
    ]
    assert not out.exists()


def test_an_internal_error_keeps_its_traceback_and_the_others_finish(
    make_raster, fake_backend, register_backend, invoke, tmp_path
):
    class Flaky(fake_backend):
        """Breaks, as a bug would, on the raster named b."""

        name = "flaky"

        def begin_raster(self, source) -> None:
            if Path(source.path).stem == "b":
                raise ZeroDivisionError("a bug in the backend")

    register_backend(Flaky)
    (tmp_path / "scenes").mkdir()
    for name in ("a", "b", "c"):
        make_raster(f"scenes/{name}.tif", bands=1)
    out = tmp_path / "masks"
    result = invoke("predict", tmp_path / "scenes", "-o", out, "--backend", "flaky", "-q", expect=1)
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug in the backend" in (
        result.stderr
    )
    assert f"geoseg: error: {tmp_path / 'scenes' / 'b.tif'}: ZeroDivisionError" in result.stderr
    assert "2 done, 1 failed, 0 already complete" in result.stdout
    assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "c.tif"]
