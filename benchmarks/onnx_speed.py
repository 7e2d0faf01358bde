"""ONNX Runtime vs eager torch on the same SegFormer-b0-shaped model, on the CPU.

A SegFormer with mit-b0's shape (3.7 M weights, random, 3 classes) is saved as a
checkpoint, exported with ``geoseg export --size 512``, and both backends predict the
same 512 px chips of the NAIP sample: ``segformer`` (torch, eager, inference mode) and
``onnx`` (ONNX Runtime, CPU provider). Each backend runs in a fresh process with the
model loaded before timing; peak memory is that process's resident high-water mark
(the onnx process never imports torch, as in a torch-free install). Then
``geoseg predict`` runs on the whole sample with each backend and the masks are
compared pixel by pixel.

    python benchmarks/onnx_speed.py              # 16 chips, batches of 4, best of 2 runs
    python benchmarks/onnx_speed.py --chips 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "data" / "naip_rgbn_2020.tif"
CLASSES = ["other", "water", "vegetation"]
SIZE = 512


def make_checkpoint(folder: Path) -> Path:
    """mit-b0's shape (SegformerConfig's defaults) with random weights and 3 classes."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={n: i for i, n in enumerate(CLASSES)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    return folder


def chips_per_second(backend: str, model: Path, chips: int, batch: int, threads: int) -> dict:
    options = [f"threads={threads}"] if backend == "onnx" and threads else []
    torch_threads = (
        f"import torch; torch.set_num_threads({threads})" if backend != "onnx" and threads else ""
    )
    return measure(
        f"""
        import numpy as np, rasterio
        {torch_threads}
        from geoseg.backend import ChipBatch
        from geoseg.plugins import create_backend
        backend = create_backend({backend!r}, {options!r})
        backend.load({str(model)!r}, "cpu")
        with rasterio.open({str(SAMPLE)!r}) as src:
            data = src.read([1, 2, 3], window=((0, {SIZE}), (0, {SIZE}))).astype(np.float32)
        images = np.repeat(data[None], {batch}, axis=0)
        batch = ChipBatch(images, images[:, 0] > 0, ("red", "green", "blue"), tiles=())
        backend.predict(batch)  # warm-up: first-call allocations and graph set-up
        # --- start ---
        for _ in range({chips} // {batch}):
            backend.predict(batch)
        """
    )


def predict_mask(backend: str, model: Path, out: Path) -> np.ndarray:
    import rasterio

    from geoseg.cli import cli

    args = ["predict", str(SAMPLE), "-o", str(out), "--backend", backend, "--model", str(model)]
    cli.main([*args, "--bands", "naip", "--size", str(SIZE), "--device", "cpu", "-q"],
             standalone_mode=False)  # fmt: skip
    with rasterio.open(out) as mask:
        return mask.read(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=16, help="chips timed per backend")
    parser.add_argument("--batch", type=int, default=4, help="chips per predict call")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per backend")
    args = parser.parse_args()
    from geoseg.cli import cli

    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp / "segformer-b0")
        onnx_file = tmp / "segformer-b0.onnx"
        cli.main(["export", "--model", str(checkpoint), "--backend", "segformer", "-o",
                  str(onnx_file), "--size", str(SIZE), "--dynamic-batch"],
                 standalone_mode=False)  # fmt: skip
        print(f"model: SegFormer-b0 shape, random weights; ONNX file "
              f"{onnx_file.stat().st_size / 1e6:.1f} MB; {args.chips} chips of {SIZE} px, "
              f"batches of {args.batch}, threads {args.threads or 'default'}")  # fmt: skip
        results: dict[str, dict] = {}
        # Alternating runs, the fastest of each kept: a shared machine's load changes
        # between runs more than the backends differ.
        for _ in range(args.repeat):
            for backend, model in (("segformer", checkpoint), ("onnx", onnx_file)):
                result = chips_per_second(backend, model, args.chips, args.batch, args.threads)
                result["chips_per_s"] = args.chips // args.batch * args.batch / result["seconds"]
                print(f"{backend:>9}: {result['chips_per_s']:6.2f} chips/s "
                      f"({1000 / result['chips_per_s']:6.0f} ms/chip), peak RSS "
                      f"{result['peak_mb']:7.1f} MB", flush=True)  # fmt: skip
                best = results.get(backend)
                if best is None or result["chips_per_s"] > best["chips_per_s"]:
                    results[backend] = result
        torch_mask = predict_mask("segformer", checkpoint, tmp / "torch.tif")
        onnx_mask = predict_mask("onnx", onnx_file, tmp / "onnx.tif")
        agreement = float(np.mean(torch_mask == onnx_mask))
        speed = results["onnx"]["chips_per_s"] / results["segformer"]["chips_per_s"]
        memory = results["onnx"]["peak_mb"] / results["segformer"]["peak_mb"]
        print(f"onnx / torch: speed {speed:.2f}x (target >= 1.5), peak memory {memory:.2f}x; "
              f"masks agree on {agreement:.5%} of {torch_mask.size} pixels")  # fmt: skip
        print(json.dumps({"speed_ratio": speed, "memory_ratio": memory, "agreement": agreement}))


if __name__ == "__main__":
    main()
