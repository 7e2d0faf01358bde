"""LoRA against full fine-tuning: trainable share, adapter size, step time, peak memory.

Two models with random weights (nothing is downloaded), each variant in a fresh
subprocess so one's peak memory cannot hide the other's:

- ``vit``: a ViT-base-shaped image classifier (``ViTConfig()`` defaults: hidden 768, 12
  layers, 12 heads, patch 16, 224 px), set up as ``geoseg train --backend hf-classifier``
  does: LoRA rank 16 on the attention ``q_proj``/``v_proj``, the classifier head in full,
  one class per chip;
- ``segformer``: a mit-b0-shaped SegFormer (``SegformerConfig()`` defaults: hidden sizes
  32/64/160/256, depths 2/2/2/2, decoder 256), set up as ``geoseg train --backend hf``
  does: the same LoRA, the decode head in full, a class per pixel.

    .venv/bin/python benchmarks/lora_vs_full.py [--model vit|segformer|all] [--quick]
        [--size PX] [--batch N] [--steps N] [--classes N] [--bands N]

``--quick``: batch 2, 2 timed steps (a few minutes on two CPU cores). ``--size`` defaults
to 224 for the ViT and 256 for SegFormer. With ``--classes 101`` (Food-101) the ViT's
trainable share is the 0.77% of the Hugging Face LoRA image-classification recipe.

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


def build_model(name: str, classes: int):
    """A random-weight model of ``name``'s shape and geoseg's options for it."""
    from geoseg_segformer.classify import ClassificationOptions
    from geoseg_segformer.model import quiet_transformers
    from geoseg_segformer.options import SegmentationOptions

    with quiet_transformers():
        if name == "vit":
            from transformers import ViTConfig, ViTForImageClassification

            return ViTForImageClassification(ViTConfig(num_labels=classes)), ClassificationOptions()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=classes))
        return model, SegmentationOptions()


def run_variant(
    name: str, variant: str, size: int, batch: int, steps: int, bands: int, classes: int,
    device: str,
) -> dict:  # fmt: skip
    """Train ``steps`` steps of one variant; figures as a dict (runs in the child process)."""
    import torch
    import torch.nn.functional as F
    from geoseg_segformer.classify import classification_logits
    from geoseg_segformer.model import (
        adapt_input_bands,
        apply_lora,
        head_modules,
        parameter_counts,
        quiet_transformers,
        segmentation_logits,
    )

    torch.manual_seed(0)
    model, options = build_model(name, classes)
    band_names = ("red", "green", "blue", "nir")[:bands] if bands <= 4 else None
    conv = adapt_input_bands(model, band_names) if band_names else None
    if variant == "lora":
        model = apply_lora(model, options, head_modules(model) + ([conv] if conv else []))
    trainable, total = parameter_counts(model)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    with tempfile.TemporaryDirectory() as folder:
        with quiet_transformers():
            model.save_pretrained(folder)
        weights = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, bands, size, size, generator=generator).to(device)
    shape = (batch,) if name == "vit" else (batch, size, size)
    labels = torch.randint(0, classes, shape, generator=generator).to(device)

    def step() -> float:
        if name == "vit":
            logits = classification_logits(model, images)
        else:
            logits = segmentation_logits(model, images, (size, size))
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
        "model": name,
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
    parser.add_argument("--model", choices=["vit", "segformer", "all"], default="all")
    parser.add_argument("--size", type=int, default=None, help="chip size in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps")
    parser.add_argument("--variant", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps = 2, 2

    if args.variant:
        result = run_variant(
            args.model, args.variant, args.size, args.batch, args.steps, args.bands,
            args.classes, args.device,
        )  # fmt: skip
        print(json.dumps(result))
        return
    for name in ("vit", "segformer") if args.model == "all" else (args.model,):
        compare(name, args)


TITLES = {
    "vit": "ViT-base shape image classifier (one class per chip)",
    "segformer": "SegFormer mit-b0 shape (a class per pixel)",
}


def compare(name: str, args) -> None:
    """Both variants of one model, each in a fresh process, and their ratios."""
    size = args.size or (224 if name == "vit" else 256)
    results = {}
    for variant in ("full", "lora"):
        command = [
            sys.executable, __file__, "--model", name, "--variant", variant, "--size", str(size),
            "--batch", str(args.batch), "--steps", str(args.steps), "--bands", str(args.bands),
            "--classes", str(args.classes), "--device", args.device,
        ]  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    full, lora = results["full"], results["lora"]
    memory_kind = "peak CUDA memory" if args.device.startswith("cuda") else "training RSS growth"
    print(
        f"{TITLES[name]}, random weights, {args.bands} bands, {args.classes} classes, batch "
        f"{args.batch} x {size}x{size}, {args.device}, median of {args.steps} steps"
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
    print()


if __name__ == "__main__":
    main()
