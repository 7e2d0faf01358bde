"""Overhead of the predict engine over the backend's own compute, in the same run.

A backend of fixed cost (a small per-pixel network: two dense layers over the bands,
in numpy) predicts every chip of a generated scene, through ``predict_raster`` (reading,
batching, blending, argmax, writing the COG and the QGIS style) and alone on the same
chips already in memory, alternately, several times. The median of the per-pair ratios
is what the engine costs. Targets: under 15% over a backend of 20 ms per chip, under 5%
over one of 100 ms per chip; the network's width is calibrated to those costs first.

The backend computes on one CPU thread by default, as a model on its own device (a
GPU) leaves the CPU to the engine; ``--backend-threads=N`` lets its BLAS use N threads,
the worst case, where the engine's reading competes with the backend for the cores.

    python benchmarks/predict_overhead.py            # 4096 px square, 512 px chips
    python benchmarks/predict_overhead.py --quick    # 2048 px square, fewer repeats
    python benchmarks/predict_overhead.py --chip-ms 20 --repeat 5
    python benchmarks/predict_overhead.py --backend-threads=2
"""

from __future__ import annotations

import os
import sys

# BLAS reads its thread count when numpy loads, so this comes before any numpy import.
BACKEND_THREADS = next(
    (a.split("=", 1)[1] for a in sys.argv if a.startswith("--backend-threads=")), "1"
)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = BACKEND_THREADS

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_memory import write_scene  # noqa: E402

from geoseg.backend import Backend, Capabilities, ChipBatch  # noqa: E402
from geoseg.predict import predict_raster  # noqa: E402
from geoseg.raster import open_raster  # noqa: E402
from geoseg.windows import tile_grid  # noqa: E402


class FixedCost(Backend):
    """Per pixel: 4 bands -> ``hidden`` units (tanh) -> 2 classes (softmax); fixed cost."""

    name = "fixed-cost"

    def __init__(self, options=None, hidden: int = 48) -> None:
        super().__init__(options)
        rng = np.random.default_rng(0)
        self.hidden = rng.normal(0, 0.02, (hidden, 4)).astype(np.float32)
        self.out = rng.normal(0, 0.2, (2, hidden)).astype(np.float32)
        self.seconds = 0.0

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(binary=True, classes=("background", "water"), chip_size=512)

    #: Pixels per step: temporaries of a few MB at most, reused by the allocator, so the
    #: cost per chip does not depend on what else the process allocated (a whole chip's
    #: hidden layer is tens of MB, freshly mapped and faulted in each time).
    STEP = 4096

    def predict(self, batch: ChipBatch) -> np.ndarray:
        started = time.perf_counter()
        n, bands, height, width = batch.images.shape
        result = np.empty((n, 2, height, width), np.float32)
        for i in range(n):
            pixels = batch.images[i].reshape(bands, -1)
            out = result[i].reshape(2, -1)
            for start in range(0, pixels.shape[1], self.STEP):
                logits = self.out @ np.tanh(self.hidden @ pixels[:, start : start + self.STEP])
                logits -= logits.max(axis=0)
                np.exp(logits, out=logits)
                logits /= logits.sum(axis=0)
                out[:, start : start + self.STEP] = logits
        self.seconds += time.perf_counter() - started
        return result


#: Backend cost per chip (ms) -> largest engine overhead the target allows.
TARGETS = {20: 0.15, 100: 0.05}


def chip_batches(src: Path, batch_size: int) -> tuple[list[ChipBatch], int]:
    """The scene's chips as the engine batches them, read into memory; and their count."""
    with open_raster(src) as source:
        grid = tile_grid(source, 512, 64)
        chips = [source.read_chip(tile) for tile in grid]
        names = source.band_names
    batches = []
    for i in range(0, len(chips), batch_size):
        part = chips[i : i + batch_size]
        valid = np.stack([c.valid for c in part])
        images = np.where(valid[:, None], np.stack([c.data for c in part]), 0)
        batches.append(
            ChipBatch(images.astype(np.float32), valid, names, tuple(c.tile for c in part))
        )
    return batches, len(chips)


def backend_alone(backend: FixedCost, batches: list[ChipBatch]) -> tuple[float, float]:
    """Wall and CPU seconds of the backend on chips already in memory."""
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        backend.predict(batch)
    return time.perf_counter() - started, time.process_time() - cpu


def calibrate(chip_ms: float, batches: list[ChipBatch]) -> int:
    """Hidden units that make the backend cost about ``chip_ms`` per chip here."""
    sample = batches[:2]
    chips = sum(len(b.images) for b in sample)
    hidden = 16
    for _ in range(3):
        backend = FixedCost(hidden=hidden)
        backend_alone(backend, sample[:1])  # warm-up
        seconds = min(backend_alone(backend, sample)[0] for _ in range(2))
        hidden = max(1, round(hidden * chip_ms / (1000 * seconds / chips)))
    return hidden


def measure_overhead(src: Path, tmp: Path, backend: FixedCost, batches, args) -> dict:
    """Engine and backend-alone runs, alternating; medians and the median ratio."""
    engine, alone, inside, ratios, engine_cpu, alone_cpu = [], [], [], [], [], []
    for _ in range(args.repeat):
        backend.seconds = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        predict_raster(
            backend, src, tmp / "water.tif", size=512, overlap=64, batch_size=args.batch_size
        )
        engine.append(time.perf_counter() - started)
        engine_cpu.append(time.process_time() - cpu)
        inside.append(backend.seconds)
        (tmp / "water.tif").unlink()
        wall, cpu_s = backend_alone(backend, batches)
        alone.append(wall)
        alone_cpu.append(cpu_s)
        ratios.append(engine[-1] / wall)
    return {
        "engine": float(np.median(engine)),
        "alone": float(np.median(alone)),
        "inside": float(np.median(inside)),
        "overhead": float(np.median(ratios)) - 1,
        "cpu_overhead": float(np.median(engine_cpu)) / float(np.median(alone_cpu)) - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 px square instead of 4096")
    parser.add_argument("--size", type=int, default=None, help="scene side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=None, help="alternating pairs of runs")
    parser.add_argument(
        "--chip-ms",
        type=float,
        nargs="+",
        default=sorted(TARGETS),
        help="backend costs per chip to measure (ms; calibrated here)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden units of the backend's network instead of calibrating --chip-ms",
    )
    parser.add_argument(
        "--backend-threads",
        default=BACKEND_THREADS,
        metavar="N",
        help="BLAS threads of the backend (give as --backend-threads=N)",
    )
    args = parser.parse_args()
    side = args.size or (2048 if args.quick else 4096)
    args.repeat = args.repeat or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        tmp = Path(tmp)
        src = write_scene(tmp / "scene.tif", side)
        batches, n_chips = chip_batches(src, args.batch_size)
        print(
            f"scene {side} px square, {n_chips} chips of 512 px (overlap 64), batch "
            f"{args.batch_size}, backend on {BACKEND_THREADS} thread(s), {os.cpu_count()} cores, "
            f"median of {args.repeat} alternating runs"
        )
        costs = [None] if args.hidden else args.chip_ms
        for chip_ms in costs:
            hidden = args.hidden or calibrate(chip_ms, batches)
            backend = FixedCost(hidden=hidden)
            result = measure_overhead(src, tmp, backend, batches, args)
            per_chip = 1000 * result["alone"] / n_chips
            target = TARGETS.get(round(chip_ms)) if chip_ms else None
            verdict = ""
            if target is not None:
                verdict = (
                    f" (target: under {100 * target:.0f}%: "
                    f"{'PASS' if result['overhead'] < target else 'MISS'})"
                )
            print(
                f"backend {per_chip:5.1f} ms/chip ({hidden} hidden units): engine "
                f"{result['engine']:6.2f} s (backend inside {result['inside']:.2f} s), alone "
                f"{result['alone']:6.2f} s; overhead {100 * result['overhead']:5.1f} %{verdict}; "
                f"cpu time {100 * result['cpu_overhead']:.0f} % more"
            )
    load = Path("/proc/loadavg")
    if load.exists():
        print(
            f"load average at the end: {load.read_text().split()[0]} "
            f"(wall times are only comparable on an otherwise idle machine)"
        )


if __name__ == "__main__":
    main()
