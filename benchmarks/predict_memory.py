"""Peak memory of ``geoseg predict --backend spectral`` on a small and a large raster.

The engine keeps one band of chip rows in memory, so peak memory must stay near flat
while the raster grows 16 times in pixels (4k -> 16k square by default). Each run is a
fresh process; peak memory is its resident high-water mark (VmHWM), and the peak of each
phase (set-up, the pass over the chips, the COG write) is printed beside it.

What still grows: GDAL's block cache (capped at 32 MB for this raster) holds all 16 MB
of a 2048 px scene's blocks and is full from 4096 px on, so the quick pair grows more
than the full one; the row buffers (blend carry, mask strip) grow with the width, about
1.5 KB per pixel column (24 MB at 16384 px).

    python benchmarks/predict_memory.py            # 4096 and 16384 px square
    python benchmarks/predict_memory.py --quick    # 2048 and 8192 px square
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402


def write_scene(path: Path, size: int, block: int = 1024) -> Path:
    """A NAIP-like 4-band uint8 scene (red, green, blue, nir) with lakes, written in blocks."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint8",
        nodata=0,
        crs="EPSG:26914",
        transform=Affine(1.0, 0, 400000.0, 0, -1.0, 5200000.0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        zlevel=1,
        interleave="pixel",
        bigtiff="if_safer",
    )
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                yy, xx = np.mgrid[row : row + h, col : col + w].astype(np.float32)
                lakes = np.sin(xx / 157.0) * np.sin(yy / 131.0) > 0.55
                noise = rng.integers(0, 12, (4, h, w), dtype=np.uint8)
                land = np.array([90, 100, 80, 160], np.uint8)[:, None, None]
                water = np.array([60, 90, 70, 25], np.uint8)[:, None, None]
                data = np.where(lakes, water, land) + noise
                dst.write(data, window=Window(col, row, w, h))
    return path


# Resident memory sampled on a thread, its peak kept per phase of the run: set-up (opening,
# the backend's begin_raster: the spectral backend's threshold reads up to 256 windows),
# the pass over the chips (read, predict, blend, write the tiled mask) and the COG write.
PHASES = ("set-up", "chips", "COG")
_PHASE_PEAKS = """
import threading
import geoseg.predict as _predict

_phase, _extra = ["set-up"], {"set-up": 0.0, "chips": 0.0, "COG": 0.0}


def _sample():
    while _phase[0] != "done":
        with open("/proc/self/status") as status:
            kb = next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))
        _extra[_phase[0]] = max(_extra[_phase[0]], kb / 1024)
        _time.sleep(0.005)


def _in_phase(name, function):
    def run(*args, **kwargs):
        _phase[0] = name
        return function(*args, **kwargs)

    return run


_predict._stream = _in_phase("chips", _predict._stream)
_predict.write_cog = _in_phase("COG", _predict.write_cog)
_sampler = threading.Thread(target=_sample, daemon=True)
_sampler.start()
"""


def peak(src: Path, out: Path) -> dict[str, float]:
    """Seconds, peak RSS (``peak_mb``) and the peak of each of ``PHASES`` (MB)."""
    run = f"""
        # --- start ---
        cli.main(["predict", {str(src)!r}, "-o", {str(out)!r}, "--backend", "spectral",
                  "--bands", "naip", "-q"], standalone_mode=False)
        _phase[0] = "done"
        _sampler.join()
        """
    return measure("from geoseg.cli import cli\n" + _PHASE_PEAKS + textwrap.dedent(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 and 8192 px instead")
    parser.add_argument("--sizes", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    sizes = args.sizes or ((2048, 8192) if args.quick else (4096, 16384))
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        results = {}
        for size in sizes:
            started = time.perf_counter()
            src = write_scene(Path(tmp) / f"scene_{size}.tif", size)
            made = time.perf_counter() - started
            result = peak(src, Path(tmp) / f"water_{size}.tif")
            results[size] = result
            phases = ", ".join(f"{name} {result[name]:.0f}" for name in PHASES)
            print(
                f"{size:>6} px square: scene written in {made:6.1f} s; predict "
                f"{result['seconds']:7.1f} s, peak RSS {result['peak_mb']:7.1f} MB "
                f"(by phase: {phases})",
                flush=True,
            )
            src.unlink()
        small, large = sizes
        ratio = results[large]["peak_mb"] / results[small]["peak_mb"]
        pixels = (large / small) ** 2
        print(f"raster {pixels:.0f}x larger; peak memory ratio {ratio:.2f} (target: near 1)")


if __name__ == "__main__":
    main()
