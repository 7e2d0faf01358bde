"""Overhead of the predict engine over the backend's own compute, in the same run.

A backend of fixed cost (a small per-pixel network: two dense layers over the bands,
in numpy) predicts every chip of a generated scene twice: once through
``predict_raster`` (reading, batching, blending, argmax, writing the COG and the QGIS
style), once alone on the same chips already in memory. The difference is what the
engine costs (target: under 15% of the backend's time).

The backend computes on one CPU thread by default, as a model on its own device (a
GPU) leaves the CPU to the engine; ``--backend-threads=N`` lets its BLAS use N threads,
the worst case, where the engine's reading competes with the backend for the cores.

    python benchmarks/predict_overhead.py            # 4096 px square, 512 px chips
    python benchmarks/predict_overhead.py --quick    # 2048 px square
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

    def predict(self, batch: ChipBatch) -> np.ndarray:
        started = time.perf_counter()
        n, bands, height, width = batch.images.shape
        result = np.empty((n, 2, height, width), np.float32)
        for i in range(n):
            pixels = batch.images[i].reshape(bands, -1)
            logits = self.out @ np.tanh(self.hidden @ pixels)
            logits -= logits.max(axis=0)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=0)
            result[i] = logits.reshape(2, height, width)
        self.seconds += time.perf_counter() - started
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 px square instead of 4096")
    parser.add_argument("--size", type=int, default=None, help="scene side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument(
        "--hidden",
        type=int,
        default=48,
        help="hidden units of the backend's network (its cost per chip)",
    )
    parser.add_argument(
        "--backend-threads",
        default=BACKEND_THREADS,
        metavar="N",
        help="BLAS threads of the backend (give as --backend-threads=N)",
    )
    args = parser.parse_args()
    side = args.size or (2048 if args.quick else 4096)
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        src = write_scene(Path(tmp) / "scene.tif", side)
        backend = FixedCost(hidden=args.hidden)

        # The engine, end to end; best of a few runs, as timeit does on a shared machine.
        engine_runs, inside_runs, engine_cpu_runs = [], [], []
        for _ in range(args.repeat):
            backend.seconds = 0.0
            started, cpu = time.perf_counter(), time.process_time()
            predict_raster(
                backend,
                src,
                Path(tmp) / "water.tif",
                size=512,
                overlap=64,
                batch_size=args.batch_size,
            )
            engine_runs.append(time.perf_counter() - started)
            engine_cpu_runs.append(time.process_time() - cpu)
            inside_runs.append(backend.seconds)
            (Path(tmp) / "water.tif").unlink()
        engine, inside, engine_cpu = min(engine_runs), min(inside_runs), min(engine_cpu_runs)

        # The backend alone on the same chips, read into memory beforehand.
        with open_raster(src) as source:
            grid = tile_grid(source, 512, 64)
            chips = [source.read_chip(tile) for tile in grid]
        batches = []
        for i in range(0, len(chips), args.batch_size):
            part = chips[i : i + args.batch_size]
            valid = np.stack([c.valid for c in part])
            images = np.where(valid[:, None], np.stack([c.data for c in part]), 0)
            batches.append(
                ChipBatch(
                    images.astype(np.float32), valid, source.band_names, tuple(c.tile for c in part)
                )
            )
        alone_runs, alone_cpu_runs = [], []
        for _ in range(args.repeat):
            started, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                backend.predict(batch)
            alone_runs.append(time.perf_counter() - started)
            alone_cpu_runs.append(time.process_time() - cpu)
        alone, alone_cpu = min(alone_runs), min(alone_cpu_runs)

    overhead = (engine - alone) / alone
    print(
        f"scene {side} px square, {len(chips)} chips of 512 px (overlap 64), batch "
        f"{args.batch_size}, backend on {BACKEND_THREADS} thread(s), {os.cpu_count()} cores"
    )
    per_chip = (engine - alone) / len(chips)
    print(
        f"backend cost per chip {1000 * alone / len(chips):.1f} ms ({args.hidden} hidden "
        f"units); engine cost per chip {1000 * per_chip:.1f} ms (wall), so under 15% for "
        f"backends of {1000 * per_chip / 0.15:.0f} ms per chip or more"
    )
    print(
        f"engine end to end   {engine:7.2f} s  (backend inside it: {inside:.2f} s; best of "
        f"{args.repeat})"
    )
    print(f"backend alone       {alone:7.2f} s  (best of {args.repeat})")
    print(
        f"engine overhead     {100 * overhead:6.1f} % of the backend's own time (target: under 15%)"
    )
    # CPU time (all threads) is what the engine adds whatever else runs on the machine.
    cpu_overhead = (engine_cpu - alone_cpu) / alone_cpu
    print(
        f"cpu time            engine {engine_cpu:.2f} s, backend alone {alone_cpu:.2f} s: "
        f"{100 * cpu_overhead:.1f} % more"
    )
    load = Path("/proc/loadavg")
    if load.exists():
        print(
            f"load average at the end: {load.read_text().split()[0]} "
            f"(wall times are only comparable on an otherwise idle machine)"
        )


if __name__ == "__main__":
    main()
