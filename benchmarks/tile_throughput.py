"""Throughput and peak memory of ``geoseg tile`` against a plain rasterio loop.

Both write the same chips (same windows, same GeoTIFF profile) from the same generated
4-band raster, in this one run; each step runs in a fresh process so peak memory is its
own. A second, smaller raster shows whether peak memory grows with raster size.

    python benchmarks/tile_throughput.py [--pixels 8000] [--chip 512] [--overlap 64]

Target: geoseg at most 0.8x the plain loop (it writes chips on a second core); peak memory
independent of raster size. ``gdal_compare.py`` also times it against ``gdal_retile.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure  # noqa: E402


def make_raster(path: Path, pixels: int) -> Path:
    """A 4-band uint8 GeoTIFF with texture (so compression does real work), written in strips."""
    profile = dict(
        driver="GTiff",
        width=pixels,
        height=pixels,
        count=4,
        dtype="uint8",
        crs="EPSG:32614",
        transform=Affine(0.6, 0, 500000, 0, -0.6, 5200000),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, pixels, 512):
            h = min(512, pixels - row)
            y, x = np.mgrid[row : row + h, 0:pixels]
            base = (np.sin(x / 37.0) + np.cos(y / 23.0)) * 60 + 128
            noise = rng.integers(0, 20, size=(4, h, pixels))
            dst.write(
                (base[None] + noise).clip(1, 255).astype("uint8"),
                window=rasterio.windows.Window(0, row, pixels, h),
            )
    return path


PLAIN_LOOP = """
import numpy as np, rasterio
from rasterio.windows import Window
from affine import Affine
from pathlib import Path
src_path, out, size, overlap = {src!r}, Path({out!r}), {size}, {overlap}
out.mkdir(parents=True)
# --- start ---
with rasterio.open(src_path) as src:
    step = size - overlap
    rows = max(0, -(-(src.height - size) // step)) + 1
    cols = max(0, -(-(src.width - size) // step)) + 1
    for r in range(rows):
        for c in range(cols):
            r0, c0 = r * step, c * step
            h, w = min(size, src.height - r0), min(size, src.width - c0)
            data = np.zeros((src.count, size, size), src.dtypes[0])
            data[:, :h, :w] = src.read(window=Window(c0, r0, w, h))
            profile = dict(driver="GTiff", width=size, height=size, count=src.count,
                           dtype=src.dtypes[0], crs=src.crs, nodata=src.nodata,
                           transform=src.transform @ Affine.translation(c0, r0),
                           compress="deflate", tiled=True, blockxsize=256, blockysize=256)
            with rasterio.open(out / f"chip_{{r}}_{{c}}.tif", "w", **profile) as dst:
                dst.write(data)
"""

GEOSEG_TILE = """
from geoseg.cli import cli
args = [{src!r}, "-o", {out!r}, "--size", "{size}", "--overlap", "{overlap}", "--bands", "naip", "-q"]
# --- start ---
cli.main(["tile", *args], standalone_mode=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=8000, help="side of the large raster")
    parser.add_argument("--chip", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="geoseg-bench-"))
    try:
        small_side = args.pixels // 2
        large = make_raster(work / "large.tif", args.pixels)
        small = make_raster(work / "small.tif", small_side)
        fmt = dict(size=args.chip, overlap=args.overlap)
        plain = measure(PLAIN_LOOP.format(src=str(large), out=str(work / "plain"), **fmt))
        ours = measure(GEOSEG_TILE.format(src=str(large), out=str(work / "geoseg"), **fmt))
        ours_small = measure(
            GEOSEG_TILE.format(src=str(small), out=str(work / "geoseg_small"), **fmt)
        )
        n_chips = len(list((work / "geoseg" / "images").glob("*.tif")))
        print(
            f"raster {args.pixels}x{args.pixels}x4 uint8, chips {args.chip}px overlap {args.overlap}px: {n_chips} chips"
        )
        print(f"plain rasterio loop : {plain['seconds']:7.2f} s   peak {plain['peak_mb']:7.1f} MB")
        print(f"geoseg tile         : {ours['seconds']:7.2f} s   peak {ours['peak_mb']:7.1f} MB")
        print(
            f"time ratio geoseg/plain: {ours['seconds'] / plain['seconds']:.2f}x  (target <= 0.8x)"
        )
        print(
            f"geoseg tile on {small_side}x{small_side}: peak {ours_small['peak_mb']:.1f} MB; "
            f"peak ratio large/small ({args.pixels**2 / small_side**2:.0f}x the pixels): "
            f"{ours['peak_mb'] / ours_small['peak_mb']:.2f}  (target ~1)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
