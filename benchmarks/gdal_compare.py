"""geoseg against the GDAL command-line tools a GIS user would chain, on NAIP-like scenes.

Generates deterministic NAIP-like scenes (4 bands uint8: red, green, blue, nir; fields,
irregular lakes, a river, a nodata collar) of 4096 and 12288 px square in a temporary
folder, then times, alternating in this one run, each geoseg command against the GDAL
chain doing the same job, every command a fresh process (start-up included, as a user
pays it):

- water mask: ``geoseg predict --backend spectral`` (NDWI > 0.1, a fixed threshold) vs
  ``gdal_calc.py`` (the same expression) + ``gdal_translate -of COG`` (LZW, as geoseg);
- polygons: ``geoseg vectorize`` vs ``gdal_polygonize.py`` (water pixels only, as geoseg);
- mask + polygons: ``geoseg predict --vector`` vs the three GDAL steps;
- tiles: ``geoseg tile`` (512 px, overlap 64) vs ``gdal_retile.py`` (deflate, tiled) and
  vs a plain single-threaded rasterio loop writing the same chips.

It checks that the outputs agree (masks on every pixel, valid or not; polygons: count,
holes and every polygon's area; tiles: count, georeferencing, pixels)
and prints, per job and size, the median of the per-pair time ratios, peak memory (the
child's max RSS, the largest step of a chain) and PASS/MISS against the issue's targets:
geoseg at most 0.8x the GDAL chain for mask + polygons and for tiles (also 0.8x the
plain loop), peak memory flat in raster size, ``geoseg --help`` / ``backends`` and a
predict's first chip under 0.3 s.

Child processes may write bytecode caches (as an ordinary install does), and each
command runs once untimed first, so the OS caches the scene for both sides alike.

    python benchmarks/gdal_compare.py            # 4096 and 12288 px, 3 alternating runs
    python benchmarks/gdal_compare.py --quick    # 4096 px only, 2 runs: a few minutes
    python benchmarks/gdal_compare.py --sizes 2048 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tile_throughput import PLAIN_LOOP  # noqa: E402

GDAL_TOOLS = ("gdal_calc.py", "gdal_translate", "gdal_polygonize.py", "gdal_retile.py")
NDWI_THRESHOLD = 0.1
CHIP, OVERLAP = 512, 64
TIME_RATIO_TARGET = 0.8
STARTUP_TARGET_S = 0.3
#: The interpreter running geoseg (``--python``: another install, e.g. an older commit).
PYTHON = [sys.executable]
GEOSEG = [*PYTHON, "-m", "geoseg"]
#: The embedded NAIP sample: what the start-up target is measured on.
NAIP_SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "naip_rgbn_2020.tif"


# The scene ----------------------------------------------------------------------------


def write_scene(path: Path, size: int, block: int = 1024) -> Path:
    """A NAIP-like scene, the same for a given size whatever the block order.

    Fields of different crops (per 256 px parcel), irregular lakes (a smooth random
    field), a meandering river, per-pixel noise, and a nodata collar (0 in every band)
    across one corner, as a scene reprojected from its quarter-quad footprint has.
    """
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(17)
    coarse = rng.normal(size=(size // 64 + 4, size // 64 + 4))  # one value per 64 px
    parcels = rng.integers(0, 4, (size // 256 + 1, size // 256 + 1))
    crops = np.array(  # red, green, blue, nir per crop type
        [[90, 100, 80, 170], [70, 95, 65, 200], [120, 115, 100, 140], [100, 105, 85, 120]],
        np.float32,
    )
    water = np.array([45, 75, 70, 25], np.float32)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint8",
        nodata=0,
        crs="EPSG:26914",
        transform=Affine(0.6, 0, 400000.0, 0, -0.6, 5200000.0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        interleave="pixel",
        bigtiff="if_safer",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for bi, row in enumerate(range(0, size, block)):
            for bj, col in enumerate(range(0, size, block)):
                h, w = min(block, size - row), min(block, size - col)
                yy, xx = np.mgrid[row : row + h, col : col + w].astype(np.float32)
                depth = map_coordinates(coarse, [yy / 64 + 2, xx / 64 + 2], order=3)
                centre = size * (0.5 + 0.15 * np.sin(xx / (size / 5.0)))
                river = np.abs(yy - centre) < 18 + 6 * np.sin(xx / 97.0)
                wet = np.clip((depth - 1.1) * 3.0, 0, 1)  # shallow edges mix land and water
                wet = np.maximum(wet, river.astype(np.float32))
                land = crops[parcels[yy.astype(int) // 256, xx.astype(int) // 256]]
                pixels = land.transpose(2, 0, 1) * (1 - wet) + water[:, None, None] * wet
                noise = np.random.default_rng((size, bi, bj)).normal(0, 6, (4, h, w))
                data = np.clip(pixels + noise, 1, 255).astype(np.uint8)
                data[:, xx + yy < 0.12 * size] = 0  # the collar
                dst.write(data, window=Window(col, row, w, h))
        dst.descriptions = ("red", "green", "blue", "nir")
    return path


# Running and measuring ----------------------------------------------------------------


def child_env(geoseg: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode is cached
    if not geoseg:
        env.pop("PYTHONPATH", None)  # one set for --python is not the GDAL tools' own
    return env


# A small process that starts each command and reports its wall time and peak RSS: a
# child forked from this (large) process would count this one's memory as its own peak.
LAUNCHER = """
import os, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    out.write(f"{time.perf_counter() - started} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_steps(steps: list[list[str]], log: Path) -> tuple[float, float]:
    """Run commands one after another; wall seconds and the largest peak RSS (MB)."""
    seconds, peak = 0.0, 0.0
    report = log.with_name("step.txt")
    with open(log, "a") as errors:
        for cmd in steps:
            launch = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *cmd]
            env = child_env(geoseg=cmd[: len(PYTHON)] == PYTHON)
            done = subprocess.run(
                launch, stdout=subprocess.DEVNULL, stderr=errors, env=env, cwd=log.parent
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")
            wall, rss_kb = report.read_text().split()
            seconds += float(wall)
            peak = max(peak, int(rss_kb) / 1024)
    return seconds, peak


@dataclass
class Pair:
    """Alternating runs of geoseg and its baseline on one job."""

    job: str
    size: int
    baseline: str
    target: float | None
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    ours_mb: list[float] = field(default_factory=list)
    theirs_mb: list[float] = field(default_factory=list)
    agree: str = ""

    @property
    def ratio(self) -> float:
        return statistics.median(a / b for a, b in zip(self.ours, self.theirs, strict=True))


def alternate(pair: Pair, ours, theirs, repeat: int, log: Path) -> None:
    """Time ``ours`` and ``theirs`` ((commands, clean-up before each run)) alternately,
    in ABBA order; the first round warms caches and is not counted."""
    for i in range(repeat + 1):
        order = [(*ours, pair.ours, pair.ours_mb), (*theirs, pair.theirs, pair.theirs_mb)]
        for steps, clean, seconds, peaks in order if i % 2 == 0 else order[::-1]:
            clean()
            wall, peak = run_steps(steps, log)
            if i:
                seconds.append(wall)
                peaks.append(peak)


def nothing() -> None:
    """No clean-up: the command overwrites its outputs."""


# Checking that the outputs agree ------------------------------------------------------


def masks_agree(ours: Path, theirs: Path) -> str:
    with rasterio.open(ours) as a, rasterio.open(theirs) as b:
        assert (a.width, a.height, a.crs) == (b.width, b.height, b.crs), "grids differ"
        assert a.transform.almost_equals(b.transform), "transforms differ"
        differ = valid = 0
        for row in range(0, a.height, 2048):
            window = Window(0, row, a.width, min(2048, a.height - row))
            x, y = a.read(1, window=window), b.read(1, window=window)
            differ += int(np.count_nonzero(x != y))
            valid += int(np.count_nonzero(x != 255))
    if differ:
        return f"MASKS DIFFER on {differ} px"
    return f"masks identical ({valid} valid px)"


def polygons_agree(ours: Path, theirs: Path) -> str:
    """Water polygons of both: as many, with as many holes, of the same areas one by one."""
    import pyogrio
    import shapely

    a = pyogrio.read_dataframe(ours, layer="classes")
    b = pyogrio.read_dataframe(theirs)
    a = a[a["class_id"] == 1].geometry.values
    b = b[b["DN"] == 1].geometry.values
    areas_a, areas_b = np.sort(shapely.area(a)), np.sort(shapely.area(b))
    holes_a = int(shapely.get_num_interior_rings(a).sum())
    holes_b = int(shapely.get_num_interior_rings(b).sum())
    same = (
        len(a) == len(b) and holes_a == holes_b and np.allclose(areas_a, areas_b, rtol=1e-9, atol=0)
    )
    verdict = "polygons equal" if same else "POLYGONS DIFFER"
    return (
        f"{verdict} ({len(a)} vs {len(b)}, {holes_a} vs {holes_b} holes, area "
        f"{areas_a.sum():.0f} vs {areas_b.sum():.0f} m2)"
    )


def tiles_agree(ours: Path, theirs: Path, scene: Path) -> str:
    """Every tile of gdal_retile is the top-left part of geoseg's chip at the same place."""
    theirs_files = sorted(theirs.glob("*.tif"))
    ours_files = sorted((ours / "images").glob("*.tif"))
    with rasterio.open(scene) as src:
        step, origin = CHIP - OVERLAP, src.transform
    chips = {}
    for path in ours_files:
        with rasterio.open(path) as chip:
            col, row = ~origin * (chip.transform.c, chip.transform.f)
            chips[round(row) // step, round(col) // step] = path
    empty = 0  # geoseg writes no chip without a valid pixel (in the collar); gdal_retile does
    for path in theirs_files:
        with rasterio.open(path) as tile:
            col, row = ~origin * (tile.transform.c, tile.transform.f)
            if (round(row) // step, round(col) // step) not in chips:
                if tile.read().any():
                    return f"TILE {path.name} HAS VALID PIXELS BUT NO GEOSEG CHIP"
                empty += 1
    if len(chips) + empty != len(theirs_files):
        return f"TILE COUNTS DIFFER ({len(chips)} + {empty} empty vs {len(theirs_files)})"
    sample = theirs_files[:: max(1, len(theirs_files) // 60)]  # every tile on small scenes
    for path in sample:
        with rasterio.open(path) as tile:
            col, row = ~origin * (tile.transform.c, tile.transform.f)
            key = (round(row) // step, round(col) // step)
            if key not in chips:
                continue  # all nodata, checked above
            with rasterio.open(chips[key]) as chip:
                if chip.transform != tile.transform or chip.crs != tile.crs:
                    return f"TILE {path.name} GEOREFERENCED DIFFERENTLY"
                window = Window(0, 0, tile.width, tile.height)
                if not np.array_equal(chip.read(window=window), tile.read()):
                    return f"TILE {path.name} PIXELS DIFFER"
    return (
        f"tiles equal ({len(chips)} tiles, {len(sample)} compared pixel by pixel; "
        f"{empty} all-nodata tiles of gdal_retile have no chip)"
    )


# Start-up -----------------------------------------------------------------------------

FIRST_CHIP = """
import sys, time
import geoseg.predict as engine
from geoseg.cli import cli
run_backend = engine._run_backend
def first_chip(*args, **kwargs):
    if not hasattr(first_chip, "at"):
        first_chip.at = time.time()
        sys.stderr.write(f"@@{first_chip.at}\\n")
    return run_backend(*args, **kwargs)
engine._run_backend = first_chip
cli.main(sys.argv[1:], prog_name="geoseg")
"""


def startup(scene: Path, work: Path, repeat: int) -> list[tuple[str, float]]:
    """Median seconds of ``geoseg --help``, ``geoseg backends`` and a predict's first chip."""
    results = []
    for label, args in (("geoseg --help", ["--help"]), ("geoseg backends", ["backends"])):
        runs = []
        for i in range(repeat + 1):
            started = time.perf_counter()
            subprocess.run(
                [*GEOSEG, *args], check=True, capture_output=True, env=child_env(), cwd=work
            )
            if i:
                runs.append(time.perf_counter() - started)
        results.append((label, statistics.median(runs)))
    runs = []
    for i in range(repeat + 1):
        out = work / "first_chip.tif"
        cmd = [*PYTHON, "-c", FIRST_CHIP, "predict", str(scene), "-o", str(out)]
        cmd += ["--backend", "spectral", "--bands", "naip", "-q", "--overwrite"]
        started = time.time()
        done = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env=child_env(), cwd=work
        )
        first = float(next(x for x in done.stderr.splitlines() if x.startswith("@@"))[2:])
        if i:
            runs.append(first - started)
    results.append(("predict: start to first chip", statistics.median(runs)))
    return results


# The jobs -----------------------------------------------------------------------------


def gdal_mask_steps(scene: Path, tmp_tif: Path, out: Path) -> list[list[str]]:
    expression = f"(A.astype(numpy.float32)-B)/(A.astype(numpy.float32)+B)>{NDWI_THRESHOLD}"
    return [
        ["gdal_calc.py", "-A", str(scene), "--A_band=2", "-B", str(scene), "--B_band=4"]
        + [f"--calc={expression}", "--type=Byte", "--NoDataValue=255"]
        + [f"--outfile={tmp_tif}", "--overwrite", "--quiet"],
        ["gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=LZW", str(tmp_tif), str(out)],
    ]


def geoseg_predict(scene: Path, out: Path, vector: Path | None = None) -> list[str]:
    cmd = [*GEOSEG, "predict", str(scene), "-o", str(out), "--backend", "spectral"]
    cmd += ["--bands", "naip", "--option", "index=ndwi"]
    cmd += ["--option", f"threshold={NDWI_THRESHOLD}", "-q", "--overwrite"]
    if vector is not None:
        cmd += ["--vector", str(vector)]
    return cmd


def polygonize(mask: Path, out: Path) -> list[str]:
    # The mask as its own mask band: water (and nodata) polygons only, as geoseg writes.
    return ["gdal_polygonize.py", "-q", str(mask), "-mask", str(mask), "-f", "GPKG", str(out)]


def compare_size(size: int, work: Path, repeat: int, log: Path) -> list[Pair]:
    scene = work / f"naip_like_{size}.tif"
    started = time.perf_counter()
    write_scene(scene, size)
    print(f"scene {size} px square written in {time.perf_counter() - started:.0f} s", flush=True)
    out = work / f"out_{size}"
    out.mkdir()
    ours_mask, gdal_mask = out / "water.tif", out / "water_gdal.tif"
    ours_gpkg, gdal_gpkg = out / "water.gpkg", out / "water_gdal.gpkg"
    gdal_tmp = out / "ndwi_gt.tif"

    def remove(*paths: Path):
        def clean() -> None:
            for path in paths:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()

        return clean

    pairs = []
    mask = Pair("water mask", size, "gdal_calc + COG", None)
    alternate(
        mask,
        ([geoseg_predict(scene, ours_mask)], nothing),
        (gdal_mask_steps(scene, gdal_tmp, gdal_mask), remove(gdal_mask)),
        repeat,
        log,
    )
    mask.agree = masks_agree(ours_mask, gdal_mask)
    pairs.append(mask)

    polygons = Pair("polygons", size, "gdal_polygonize", None)
    alternate(
        polygons,
        (
            [[*GEOSEG, "vectorize", str(ours_mask), "-o", str(ours_gpkg), "-q", "--overwrite"]],
            nothing,
        ),
        ([polygonize(gdal_mask, gdal_gpkg)], remove(gdal_gpkg)),
        repeat,
        log,
    )
    polygons.agree = polygons_agree(ours_gpkg, gdal_gpkg)
    pairs.append(polygons)

    both = Pair("mask + polygons", size, "calc + COG + polygonize", TIME_RATIO_TARGET)
    alternate(
        both,
        ([geoseg_predict(scene, ours_mask, ours_gpkg)], nothing),
        (
            [*gdal_mask_steps(scene, gdal_tmp, gdal_mask), polygonize(gdal_mask, gdal_gpkg)],
            remove(gdal_mask, gdal_gpkg),
        ),
        repeat,
        log,
    )
    both.agree = polygons_agree(ours_gpkg, gdal_gpkg)
    pairs.append(both)

    ours_tiles, gdal_tiles, plain_tiles = out / "chips", out / "retile", out / "plain"
    tile_cmd = [*GEOSEG, "tile", str(scene), "-o", str(ours_tiles), "--size", str(CHIP)]
    tile_cmd += ["--overlap", str(OVERLAP), "--bands", "naip", "-q"]
    retile = Pair("tile", size, "gdal_retile", TIME_RATIO_TARGET)

    def empty_retile() -> None:
        remove(gdal_tiles)()
        gdal_tiles.mkdir()

    retile_cmd = ["gdal_retile.py", "-q", "-ps", str(CHIP), str(CHIP), "-overlap", str(OVERLAP)]
    retile_cmd += ["-co", "COMPRESS=DEFLATE", "-co", "TILED=YES", "-targetDir", str(gdal_tiles)]
    alternate(
        retile,
        ([tile_cmd], remove(ours_tiles)),
        ([[*retile_cmd, str(scene)]], empty_retile),
        repeat,
        log,
    )
    retile.agree = tiles_agree(ours_tiles, gdal_tiles, scene)
    pairs.append(retile)

    plain = Pair("tile", size, "plain rasterio loop", TIME_RATIO_TARGET)
    loop = PLAIN_LOOP.format(src=str(scene), out=str(plain_tiles), size=CHIP, overlap=OVERLAP)
    alternate(
        plain,
        ([tile_cmd], remove(ours_tiles)),
        ([[sys.executable, "-c", loop.replace("# --- start ---", "")]], remove(plain_tiles)),
        repeat,
        log,
    )
    plain.agree = f"{len(list(plain_tiles.glob('*.tif')))} chips each"
    pairs.append(plain)
    shutil.rmtree(out)
    scene.unlink()
    return pairs


def report(pairs: list[Pair], starts: list[tuple[str, float]], repeat: int) -> None:
    print()
    print(f"median of {repeat} alternating runs; load average {os.getloadavg()[0]:.2f}")
    head = f"{'job':<16} {'size':>6}  {'against':<24} {'geoseg s':>9} {'GDAL s':>8}"
    print(f"{head} {'ratio':>6}  {'target':<12} {'peak MB geoseg / other':>22}  outputs")
    for p in pairs:
        verdict = ""
        if p.target is not None:
            verdict = f"<= {p.target:g} {'PASS' if p.ratio <= p.target else 'MISS'}"
        memory = f"{max(p.ours_mb):.0f} / {max(p.theirs_mb):.0f}"
        print(
            f"{p.job:<16} {p.size:>6}  {p.baseline:<24} {statistics.median(p.ours):9.2f} "
            f"{statistics.median(p.theirs):8.2f} {p.ratio:6.2f}  {verdict:<12} {memory:>22}  "
            f"{p.agree}"
        )
    sizes = sorted({p.size for p in pairs})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for job in ("mask + polygons", "tile"):
            peak = {p.size: max(p.ours_mb) for p in pairs if p.job == job}
            ratio = peak[large] / peak[small]
            print(
                f"peak memory of geoseg {job}, {large} vs {small} px ({(large / small) ** 2:.0f}x "
                f"the pixels): {ratio:.2f}x (target: flat, {'PASS' if ratio < 1.25 else 'MISS'})"
            )
    for label, seconds in starts:
        verdict = "PASS" if seconds < STARTUP_TARGET_S else "MISS"
        print(f"{label:<30} {seconds:6.3f} s  (target < {STARTUP_TARGET_S} s: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096 px only, 2 runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, metavar="PX")
    parser.add_argument("--repeat", type=int, default=None, help="alternating runs of each")
    parser.add_argument(
        "--python",
        default=None,
        metavar="COMMAND",
        help="interpreter (with flags) that runs geoseg, to time another install the same way",
    )
    args = parser.parse_args()
    if args.python:
        PYTHON[:] = args.python.split()
        GEOSEG[:] = [*PYTHON, "-m", "geoseg"]
    sizes = args.sizes or ([4096] if args.quick else [4096, 12288])
    repeat = args.repeat or (2 if args.quick else 3)
    missing = [tool for tool in GDAL_TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"skipped: the GDAL command-line tools {', '.join(missing)} are not installed "
            f"(apt install gdal-bin python3-gdal); nothing to compare against"
        )
        return
    work = Path(tempfile.mkdtemp(prefix="geoseg-gdal-"))
    log = work / "stderr.log"
    try:
        pairs = []
        for size in sizes:
            pairs += compare_size(size, work, repeat, log)
        starts = startup(NAIP_SAMPLE, work, max(3, repeat))
        report(pairs, starts, repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
