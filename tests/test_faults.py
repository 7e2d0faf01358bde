"""Faults caused for real, in a subprocess running the CLI as a user would.

A full disk is a file size limit (``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a write past
it fails with EFBIG as it would with ENOSPC on a full disk; this works as root). Kills
are real signals sent while the command is writing. Every case ends with the promise:
exit 0 with correct output, or one line naming the file and the cause with exit 2, and
nothing incomplete under a final name; a re-run gives the uninterrupted run's outputs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from conftest import write_raster

BANDS = "red=1,green=2,blue=3,nir=4"
TRANSFORM = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5200000.0)


def scene(path: Path, size: int, *, noisy_from: int = 0) -> Path:
    """A 4-band uint8 scene with a round lake; rows from ``noisy_from`` hold noise (large
    when compressed), rows above it are flat (tiny when compressed)."""
    rows, cols = np.mgrid[0:size, 0:size]
    lake = (cols - size / 2) ** 2 + (rows - size / 3) ** 2 < (size / 4) ** 2
    noise = np.random.default_rng(0).integers(40, 120, (4, size, size), dtype=np.uint8)
    data = np.where(rows >= noisy_from, noise, np.uint8(80)).astype(np.uint8)
    data[1][lake] += 100  # green over water
    data[3][~lake] += 100  # nir over land
    return write_raster(
        path,
        data,
        transform=TRANSFORM,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )


def geoseg(*args, fsize: int | None = None, wait: bool = True, user: str | None = None):
    """Run ``geoseg ARGS`` in a subprocess; ``fsize``: largest file it may write (bytes)."""

    def limits() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    command = [sys.executable, "-m", "geoseg", *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limits
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def hidden(folder: Path) -> list[str]:
    """Temporary and lock files left in ``folder`` (and below)."""
    return sorted(p.name for p in folder.rglob(".*"))


def wait_for(condition, process, timeout: float = 60) -> None:
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"finished before the fault: {process.communicate()}")
        if time.monotonic() - start > timeout:
            process.kill()
            raise AssertionError("the command never reached the point of the fault")
        time.sleep(0.01)


def pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


def chip_set(folder: Path) -> dict:
    """Everything a chip set holds: every chip's pixels, footprints and dataset.json."""
    chips = {p.relative_to(folder).as_posix(): pixels(p) for p in sorted(folder.glob("*/*.tif"))}
    footprints = pyogrio.read_dataframe(folder / "tiles.gpkg", layer="tiles")
    info = json.loads((folder / "dataset.json").read_text())
    return {
        "chips": chips,
        "tiles": footprints.drop(columns="geometry").to_dict("list"),
        "bounds": footprints.geometry.bounds.to_numpy().tolist(),
        "info": info,
    }


def same_chip_set(a: dict, b: dict) -> bool:
    return (
        a["chips"].keys() == b["chips"].keys()
        and all(np.array_equal(a["chips"][k], b["chips"][k]) for k in a["chips"])
        and a["tiles"] == b["tiles"]
        and a["bounds"] == b["bounds"]
        and a["info"] == b["info"]
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Sources and the outputs of uninterrupted runs, made once for the module."""
    root = tmp_path_factory.mktemp("faults")
    big = scene(root / "big.tif", 1536)
    small = scene(root / "small.tif", 512, noisy_from=256)
    reference = root / "reference"
    assert (
        geoseg(
            "predict",
            big,
            "-o",
            reference / "mask.tif",
            "--backend",
            "spectral",
            "--bands",
            BANDS,
            "-q",
        ).returncode
        == 0
    )
    assert (
        geoseg(
            "tile", small, "-o", reference / "chips", "--size", 64, "--overlap", 0, "-q"
        ).returncode
        == 0
    )
    return {
        "big": big,
        "small": small,
        "mask": pixels(reference / "mask.tif"),
        "mask_bytes": (reference / "mask.tif").stat().st_size,
        "reference_mask": reference / "mask.tif",
        "chips": chip_set(reference / "chips"),
    }


def predict(data, out: Path, *args, **kwargs):
    return geoseg(
        "predict",
        data["big"],
        "-o",
        out,
        "--backend",
        "spectral",
        "--bands",
        BANDS,
        "-q",
        *args,
        **kwargs,
    )


def tile(data, out: Path, *args, **kwargs):
    return geoseg(
        "tile", data["small"], "-o", out, "--size", 64, "--overlap", 0, "-q", *args, **kwargs
    )


# A full disk ------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.05, 0.6])
def test_predict_on_a_full_disk_says_so_and_a_rerun_completes(data, tmp_path, fraction):
    out = tmp_path / "out" / "mask.tif"
    failed = predict(data, out, fsize=int(data["mask_bytes"] * fraction))
    assert failed.returncode == 2, failed.stderr
    (line,) = stderr_lines(failed)
    assert str(out) in line and "File too large" in line
    assert not out.exists() and hidden(out.parent) == []
    again = predict(data, out)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(pixels(out), data["mask"])


def test_tile_on_a_full_disk_leaves_only_complete_chips_and_a_rerun_completes(data, tmp_path):
    out = tmp_path / "chips"
    # Flat chips (the top half) fit under the limit, noisy ones do not.
    failed = tile(data, out, fsize=4096)
    assert failed.returncode == 2, failed.stderr
    (line,) = stderr_lines(failed)
    assert "File too large" in line and str(out / "images") in line
    written = sorted((out / "images").glob("*.tif"))
    assert 0 < len(written) < len(data["chips"]["chips"])
    for chip in written:  # every chip under its final name is complete
        assert np.array_equal(pixels(chip), data["chips"]["chips"][f"images/{chip.name}"])
    assert hidden(out) == []
    again = tile(data, out)
    assert again.returncode == 0, again.stderr
    assert f"{len(written)} already complete" in again.stdout
    assert same_chip_set(chip_set(out), data["chips"])


def test_vectorize_on_a_full_disk_says_so_leaves_nothing_and_a_rerun_completes(data, tmp_path):
    # The polygons stream into the GeoPackage (and a scratch file to sort them) window by
    # window: the limit cuts the write midway, where SQLite says only "disk I/O error".
    mask, out = data["reference_mask"], tmp_path / "out" / "water.gpkg"
    whole = geoseg("vectorize", mask, "-o", tmp_path / "whole.gpkg", "-q")
    assert whole.returncode == 0, whole.stderr
    size = (tmp_path / "whole.gpkg").stat().st_size
    failed = geoseg("vectorize", mask, "-o", out, "-q", fsize=size // 2)
    assert failed.returncode == 2, failed.stderr
    (line,) = stderr_lines(failed)
    assert str(out) in line and "File too large" in line
    assert not out.exists() and hidden(out.parent) == []
    again = geoseg("vectorize", mask, "-o", out, "-q")
    assert again.returncode == 0, again.stderr
    a = pyogrio.read_dataframe(out, layer="classes")
    b = pyogrio.read_dataframe(tmp_path / "whole.gpkg", layer="classes")
    assert len(a) == len(b) > 0 and a["area_m2"].sum() == pytest.approx(b["area_m2"].sum())


def test_damaged_outputs_under_final_names_are_redone_not_skipped(data, tmp_path):
    chips = tmp_path / "chips"
    assert tile(data, chips).returncode == 0
    damaged = sorted((chips / "images").glob("*.tif"))[-1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    again = tile(data, chips)
    assert again.returncode == 0, again.stderr
    assert f"{len(data['chips']['chips']) - 1} already complete" in again.stdout
    assert same_chip_set(chip_set(chips), data["chips"])

    out = tmp_path / "mask.tif"
    assert predict(data, out).returncode == 0
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])  # an older version's, or cp's
    redone = predict(data, out)
    assert redone.returncode == 0 and "skipped" not in redone.stderr
    assert np.array_equal(pixels(out), data["mask"])
    assert "complete, skipped" in predict(data, out).stderr


# Signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_predict_killed_mid_run_then_rerun_gives_the_same_mask(data, tmp_path, sig):
    out = tmp_path / "mask.tif"
    process = predict(data, out, wait=False)
    wait_for(lambda: any(tmp_path.glob(".mask.tif.part-*")), process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL and hidden(tmp_path)
    else:
        assert process.returncode == 1
        assert [line for line in err.splitlines() if line.strip()] == ["geoseg: interrupted"]
        assert hidden(tmp_path) == []
    assert not out.exists()
    again = predict(data, out)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(pixels(out), data["mask"]) and hidden(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_tile_killed_mid_run_then_rerun_gives_the_same_chip_set(data, tmp_path, sig):
    out = tmp_path / "chips"
    process = tile(data, out, wait=False)
    wait_for(lambda: len(list(out.glob("images/*.tif"))) >= 8, process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 1
        assert [line for line in err.splitlines() if line.strip()] == ["geoseg: interrupted"]
        assert hidden(out) == []
    again = tile(data, out)
    assert again.returncode == 0, again.stderr
    assert same_chip_set(chip_set(out), data["chips"]) and hidden(out) == []


# Two runs on the same outputs ---------------------------------------------------------


def test_a_second_run_on_outputs_being_written_leaves_them_alone(data, tmp_path):
    out = tmp_path / "mask.tif"
    first = predict(data, out, wait=False)
    wait_for(lambda: any(tmp_path.glob(".mask.tif.part-*")), first)
    first.send_signal(signal.SIGSTOP)  # still writing, for as long as the second run takes
    try:
        second = predict(data, out)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    (line,) = stderr_lines(second)
    assert line.startswith("geoseg: error: ") and "another geoseg run is writing it" in line
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "Traceback" not in err
    assert np.array_equal(pixels(out), data["mask"]) and hidden(tmp_path) == []

    chips = tmp_path / "chips"
    first = tile(data, chips, wait=False)
    wait_for(lambda: any(chips.glob("images/*.tif")), first)
    first.send_signal(signal.SIGSTOP)
    try:
        second = tile(data, chips)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "another geoseg run is writing it" in second.stderr
    assert first.wait(timeout=60) == 0
    assert same_chip_set(chip_set(chips), data["chips"])


# Folders that cannot be written -------------------------------------------------------


@pytest.fixture(scope="module")
def read_only(data):
    """(folder, inputs, user): a read-only output folder and inputs the user can read.

    As root every folder is writable, so the commands then run as nobody (setpriv)."""
    user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot test a read-only folder")
        user = "65534"
    # Outside pytest's temporary folders, which only their owner may enter.
    base = Path(tempfile.mkdtemp(prefix="geoseg-ro-"))
    base.chmod(0o755)
    inputs = base / "in"
    inputs.mkdir()
    shutil.copy(data["small"], inputs / "scene.tif")
    assert (
        geoseg(
            "predict",
            inputs / "scene.tif",
            "-o",
            inputs / "mask.tif",
            "--backend",
            "spectral",
            "--bands",
            BANDS,
            "-q",
        ).returncode
        == 0
    )
    folder = base / "locked"
    folder.mkdir(mode=0o555)
    folder.chmod(0o555)
    yield folder, inputs, user
    shutil.rmtree(base)


@pytest.mark.parametrize(
    "command",
    [
        ["reproject", "{in}/scene.tif", "-o", "{out}/x.tif", "--dst-crs", "EPSG:4326"],
        ["index", "{in}/scene.tif", "-o", "{out}/x.tif", "--bands", BANDS],
        [
            "predict",
            "{in}/scene.tif",
            "-o",
            "{out}/x.tif",
            "--backend",
            "spectral",
            "--bands",
            BANDS,
        ],
        ["prompts", "{in}/scene.tif", "-o", "{out}/x.gpkg", "--bands", BANDS],
        ["evaluate", "{in}/mask.tif", "{in}/mask.tif", "--json", "{out}/x.json"],
        ["vectorize", "{in}/mask.tif", "-o", "{out}/x.gpkg"],
    ],
    ids=lambda command: command[0],
)
def test_a_read_only_output_folder_is_one_line(read_only, command):
    folder, inputs, user = read_only
    args = [a.replace("{in}", str(inputs)).replace("{out}", str(folder)) for a in command]
    result = geoseg(*args, "-q", user=user)
    assert result.returncode == 2, result.stderr
    (line,) = stderr_lines(result)
    assert str(folder) in line and "not writable" in line
    assert list(folder.iterdir()) == []


# The pieces, in one process -----------------------------------------------------------


def test_verify_output_refuses_what_a_failed_write_leaves(make_raster, tmp_path):
    from geoseg.atomic import output_complete, verify_output
    from geoseg.errors import IncompleteOutputError

    raster = make_raster("r.tif", width=600, tiled=True, blockxsize=256, blockysize=256)
    verify_output(raster)
    assert output_complete(raster, width=600, height=600, count=4)
    assert not output_complete(raster, width=512)  # another grid
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raster.read_bytes()[: raster.stat().st_size - 100])
    with pytest.raises(IncompleteOutputError, match="truncated"):
        verify_output(cut)
    weights = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    weights.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))  # 8 of 16 bytes
    with pytest.raises(IncompleteOutputError, match="tensors reach"):
        verify_output(weights)
    (tmp_path / "bad.json").write_text('{"a": ')
    assert not output_complete(tmp_path / "bad.json")


def test_locks_are_per_process_and_guard_temporary_files(tmp_path):
    from geoseg.atomic import clean_partials, output_busy, output_lock, temporary_name

    out = tmp_path / "mask.tif"
    part = temporary_name(out)
    part.write_bytes(b"being written")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from geoseg.atomic import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert output_busy(out)
        assert clean_partials(tmp_path, "mask.tif") == 0 and part.exists()
    finally:
        holder.kill()
        holder.wait()
    assert not output_busy(out)  # the kernel released the dead writer's lock
    with output_lock(out), output_lock(out):  # re-entrant within a process
        assert not output_busy(out)
    assert clean_partials(tmp_path, "mask.tif") == 1 and not part.exists()
    assert hidden(tmp_path) == []
    stale = tmp_path / ".mask.tif.lock"  # left by a writer killed after its rename
    stale.touch()
    clean_partials(tmp_path, "mask.tif")
    assert hidden(tmp_path) == []
