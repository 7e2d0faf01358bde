"""Epoch time of SAM mask-decoder training with the embedding cache vs recomputing embeddings.

The usual fine-tuning loop (the one the tutorials use) runs the frozen ViT image encoder on
every chip in every epoch. geoseg-sam computes each chip's embedding once, stores it on
disk, and later epochs run only the mask decoder. Both loops are the same training code
(``cache=off`` vs ``cache=DIR``), on the same chips, with a ViT-B sized SAM (SamConfig
defaults; random weights: the cost does not depend on the values), in the same run.

Prompts are one perturbed box per water component (the tutorials' box prompt); pass
``--prompt points`` for point prompts (more decoder passes per chip, so a smaller ratio).

Usage: python benchmarks/sam_epoch.py [--chips 8] [--epochs 2] [--chip-size 128]
Prints per-epoch training seconds of both loops and the ratio for the epochs after the
first (target: at least 10x on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

NAIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "naip_rgbn_2020.tif"


def make_chips(root: Path, count: int, chip: int) -> Path:
    """A labelled chip set of ``count`` chips cut from the NAIP sample (NDWI water labels)."""
    from click.testing import CliRunner
    from skimage.filters import threshold_otsu

    from geoseg.cli import cli

    cols = 4
    rows = -(-count // cols)
    window = Window(300, 200, cols * chip, rows * chip)
    with rasterio.open(NAIP) as src:
        data = src.read(window=window, boundless=True, fill_value=0)
        profile = src.profile | dict(
            width=window.width, height=window.height, transform=src.window_transform(window)
        )
    green, nir = data[1].astype(float), data[3].astype(float)
    ndwi = (green - nir) / (green + nir + 1e-6)
    water = (ndwi > threshold_otsu(ndwi)).astype(np.uint8)
    crop, labels = root / "crop.tif", root / "labels.tif"
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(labels, "w", **(profile | dict(count=1, nodata=None))) as dst:
        dst.write(water[None])
    classes = root / "classes.json"
    classes.write_text(json.dumps([{"id": 0, "name": "background"}, {"id": 1, "name": "water"}]))
    chips = root / "chips"
    result = CliRunner().invoke(
        cli,
        [
            "tile",
            str(crop),
            "-o",
            str(chips),
            "--bands",
            "naip",
            "--size",
            str(chip),
            "--overlap",
            "0",
            "--labels",
            str(labels),
            "--classes",
            str(classes),
            "--val-fraction",
            "0",
            "-q",
        ],
    )
    if result.exit_code != 0:
        raise SystemExit(f"geoseg tile failed: {result.output}")
    return chips


def save_vit_b(folder: Path) -> Path:
    """SAM ViT-B (SamConfig defaults are ViT-B) with random weights."""
    import torch
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    SamModel(SamConfig()).save_pretrained(folder)
    return folder


def train(
    chips: Path, model: Path, out: Path, cache: str, epochs: int, batch: int, prompt: str
) -> list[dict]:
    from geoseg_sam.backend import SamBackend
    from geoseg_sam.options import SamOptions

    from geoseg.backend import TrainSettings
    from geoseg.dataset import ChipDataset

    settings = TrainSettings(
        output_dir=out,
        model=str(model),
        epochs=epochs,
        batch_size=batch,
        device="cpu",
    )
    backend = SamBackend(SamOptions(cache=cache, prompt=prompt))
    backend.train(ChipDataset.open(chips), settings)
    return json.loads((out / "history.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--chip-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt", choices=("boxes", "points"), default="boxes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    with tempfile.TemporaryDirectory(prefix="sam-epoch-") as tmp:
        root = Path(tmp)
        chips = make_chips(root, args.chips, args.chip_size)
        started = time.perf_counter()
        model = save_vit_b(root / "sam-vit-b-random")
        print(
            f"ViT-B SAM saved in {time.perf_counter() - started:.1f}s; "
            f"{args.chips} chips of {args.chip_size} px; prompt={args.prompt}; "
            f"torch threads {torch.get_num_threads()}"
        )

        recompute = train(
            chips, model, root / "recompute", "off", args.epochs, args.batch_size, args.prompt
        )
        cached = train(
            chips,
            model,
            root / "cached",
            str(root / "cache"),
            args.epochs,
            args.batch_size,
            args.prompt,
        )

    print(f"{'epoch':>5} {'recompute s':>12} {'cached s':>9} {'encoder chips':>14} {'ratio':>7}")
    for plain, fast in zip(recompute, cached, strict=True):
        ratio = plain["train_seconds"] / fast["train_seconds"]
        print(
            f"{plain['epoch']:>5} {plain['train_seconds']:>12.2f} {fast['train_seconds']:>9.2f} "
            f"{fast['encoder_chips']:>14} {ratio:>6.1f}x"
        )
    later_plain = np.mean([h["train_seconds"] for h in recompute[1:]])
    later_fast = np.mean([h["train_seconds"] for h in cached[1:]])
    ratio = later_plain / later_fast
    print(
        f"epochs after the first: recompute {later_plain:.2f}s, cached {later_fast:.2f}s, "
        f"speed-up {ratio:.1f}x (target >= 10x): {'PASS' if ratio >= 10 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
