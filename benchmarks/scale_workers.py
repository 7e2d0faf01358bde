"""Speed-up of ``geoseg predict`` on a local dask cluster of 1 and of 2 worker processes.

The same job, in the same run: N generated 4-band uint16 rasters (NAIP-like, lakes
where green exceeds nir) predicted by the spectral backend (Otsu threshold per raster,
then NDWI per chip), once as a plain threshold (reading, blending and COG writing are
most of the work) and once with per-chip morphological cleanup (the backend's compute
dominates). Every worker first loads the model and predicts one small raster, so that
start-up and imports are not timed. Prints wall times, the speed-up, the cores the workers kept
busy, the peak resident memory (VmHWM) of every worker process and the load average: on
a shared machine other work caps what any job can gain.

    python benchmarks/scale_workers.py [--rasters 10] [--size 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

#: (label, spectral options): the plain index threshold, and one with per-chip cleanup
#: (morphological opening/closing), whose compute dominates reading and writing.
JOBS = (
    ("spectral, threshold only", ()),
    ("spectral with per-chip cleanup", ("opening=2", "closing=2", "min_size=64")),
)


def write_scene(path: Path, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(size // 64 + 2, size // 64 + 2))
    field = np.kron(coarse, np.ones((64, 64), np.float32))[:size, :size]
    field += rng.normal(scale=0.3, size=field.shape).astype(np.float32)
    nir = (2000 - 900 * field).clip(1, 4000)
    green = np.full_like(nir, 1500)
    data = np.stack([green * 0.9, green, green * 0.8, nir]).astype(np.uint16)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        crs="EPSG:26915",
        transform=Affine(0.6, 0, 350000, 0, -0.6, 4500000),
        nodata=0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(("red", "green", "blue", "nir"), start=1):
            dst.set_band_description(i, name)
    return path


def peak_memory_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def warm_worker(spec, warmup: Path, out: Path) -> bool:
    """Load the model and predict a small raster in this worker, so neither is timed."""
    from geoseg.distributed import worker_backend
    from geoseg.predict import predict_raster

    predict_raster(
        worker_backend(spec), warmup, out / f"warm-{os.getpid()}.tif", size=512, overlap=64
    )
    return True


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used."""
    times = os.times()
    return times.user + times.system


def run_job(
    workers: int, sources: list[Path], out: Path, warmup: Path, backend_options: tuple[str, ...]
) -> tuple[float, float, list]:
    """(wall seconds, worker CPU seconds, peak MiB per worker) of the job on ``workers``."""
    from geoseg.distributed import BackendSpec, PredictOptions, cluster_client, predict_on_cluster
    from geoseg.predict import plan_outputs

    spec = BackendSpec("spectral", backend_options, device="cpu")
    options = PredictOptions(size=512, overlap=64)
    tag = f"{workers}-{'-'.join(backend_options) or 'default'}"
    with cluster_client(workers=workers) as client:
        client.run(warm_worker, spec, warmup, out / f"warm-{tag}")
        jobs = plan_outputs(sources, out / f"masks-{tag}", single_file=False)
        cpu_before = sum(client.run(cpu_seconds).values())
        start = time.perf_counter()
        report = predict_on_cluster(client, jobs, spec, options)
        elapsed = time.perf_counter() - start
        cpu = sum(client.run(cpu_seconds).values()) - cpu_before
        if report.failed:
            raise SystemExit(f"benchmark job failed: {report.failed}")
        memory = sorted(client.run(peak_memory_mib).values())
    return elapsed, cpu, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rasters", type=int, default=10)
    parser.add_argument("--size", type=int, default=2000, help="raster side (pixels)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="geoseg-scale-"))
    try:
        sources = [
            write_scene(root / f"scene_{i:02d}.tif", args.size, i) for i in range(args.rasters)
        ]
        (root / "warmup").mkdir()
        warmup = write_scene(root / "warmup" / "warm.tif", 256, 99)
        print(
            f"job: {args.rasters} rasters of {args.size}x{args.size} px, 4 bands uint16, "
            f"spectral backend (NDWI, Otsu per raster), 512 px chips, 64 px overlap"
        )
        for label, backend_options in JOBS:
            load_before = os.getloadavg()
            one, one_cpu, one_memory = run_job(1, sources, root, warmup, backend_options)
            many, many_cpu, many_memory = run_job(
                args.workers, sources, root, warmup, backend_options
            )
            load_after = os.getloadavg()
            print(f"\n{label} (--option {' '.join(backend_options) or '(none)'})")
            print(
                f"  load average (1 min) before {load_before[0]:.2f}, after "
                f"{load_after[0]:.2f}, on {os.cpu_count()} cpus"
            )
            for n, wall, cpu, memory in (
                (1, one, one_cpu, one_memory),
                (args.workers, many, many_cpu, many_memory),
            ):
                print(
                    f"  {n} worker{'s' if n > 1 else ' '}: {wall:6.2f} s wall, "
                    f"{cpu / wall:4.2f} cores busy, peak memory per worker (MiB): "
                    f"{', '.join(f'{m:.0f}' for m in memory)}"
                )
            print(f"  speed-up: {one / many:.2f}x (target >= 1.6x with 2 workers)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
