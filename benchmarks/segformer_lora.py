"""Peak memory and step time of LoRA against full fine-tuning, for a mit-b0-sized SegFormer.

Both variants run in this one invocation, each in a fresh subprocess so one's peak memory
cannot hide the other's. Weights are random (``SegformerConfig()`` defaults are mit-b0's
shape: hidden sizes 32/64/160/256, depths 2/2/2/2, decoder 256), so nothing is
downloaded. LoRA is set up exactly as ``geoseg train --backend segformer`` does it: rank
16 on the attention query/value projections, the decode head trained in full.

    .venv/bin/python benchmarks/segformer_lora.py [--size 256] [--batch 4] [--steps 5]

Memory: on CUDA, ``torch.cuda.max_memory_allocated``; on the CPU, peak resident set size
(``getrusage``) above the resident size once the model is built and before the first step,
i.e. what training adds (activations, gradients, optimizer state).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_variant(variant: str, size: int, batch: int, steps: int, bands: int, device: str) -> dict:
    """Train ``steps`` steps of one variant; figures as a dict (runs in the child process)."""
    import torch
    import torch.nn.functional as F
    from geoseg_segformer.model import (
        adapt_input_bands,
        apply_lora,
        head_modules,
        parameter_counts,
        quiet_transformers,
    )
    from geoseg_segformer.options import SegformerOptions
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    classes = 6
    with quiet_transformers():
        model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=classes))
    band_names = ("red", "green", "blue", "nir")[:bands] if bands <= 4 else None
    conv = adapt_input_bands(model, band_names) if band_names else None
    if variant == "lora":
        model = apply_lora(
            model, SegformerOptions(), head_modules(model) + ([conv] if conv else [])
        )
    trainable, total = parameter_counts(model)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    with tempfile.TemporaryDirectory() as folder:
        with quiet_transformers():
            model.save_pretrained(folder)
        weights = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, bands, size, size, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch, size, size), generator=generator).to(device)

    def step() -> float:
        logits = model(pixel_values=images).logits
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    cuda = device.startswith("cuda")
    # Taken before the first step, so the figure includes activations, gradients and the
    # optimizer state that step creates.
    baseline = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocator, kernels), not timed
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - baseline
    return {
        "variant": variant,
        "trainable": trainable,
        "total": total,
        "percent": 100 * trainable / total,
        "weights_mb": weights / 2**20,
        "step_s": sorted(times)[len(times) // 2],
        "memory_mb": memory,
        "peak_rss_mb": peak_rss_mb(),
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="chip size in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:
        result = run_variant(
            args.variant, args.size, args.batch, args.steps, args.bands, args.device
        )
        print(json.dumps(result))
        return

    results = {}
    for variant in ("full", "lora"):
        command = [
            sys.executable, __file__, "--variant", variant, "--size", str(args.size),
            "--batch", str(args.batch), "--steps", str(args.steps), "--bands", str(args.bands),
            "--device", args.device,
        ]  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    full, lora = results["full"], results["lora"]
    memory_kind = "peak CUDA memory" if args.device.startswith("cuda") else "training RSS growth"
    print(
        f"SegFormer mit-b0 shape, random weights, {args.bands} bands, batch {args.batch} x "
        f"{args.size}x{args.size}, {args.device}, median of {args.steps} steps"
    )
    print(f"{'':18}{'trainable':>22}{'weights saved':>16}{'step time':>12}{memory_kind:>24}")
    for name, r in (("full fine-tuning", full), ("LoRA r=16 + head", lora)):
        print(
            f"{name:18}{r['trainable']:>11,} ({r['percent']:5.2f}%){r['weights_mb']:>13.2f} MB"
            f"{r['step_s']:>10.3f} s{r['memory_mb']:>21.0f} MiB"
        )
    print(
        f"ratios LoRA/full: trainable {lora['trainable'] / full['trainable']:.3f}, "
        f"saved size {lora['weights_mb'] / full['weights_mb']:.3f}, "
        f"step time {lora['step_s'] / full['step_s']:.3f}, "
        f"memory {lora['memory_mb'] / full['memory_mb']:.3f} "
        f"(process peak RSS {lora['peak_rss_mb']:.0f} vs {full['peak_rss_mb']:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
