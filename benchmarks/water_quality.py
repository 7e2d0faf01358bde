"""Water IoU of ``geoseg predict --backend spectral`` defaults on hand-labelled chips.

For every labelled chip in FOLDER (``s2/<name>_S2Hand.tif`` with
``labels/<name>_LabelHand.tif``, as in Sen1Floods11: -1 no data, 0 dry, 1 water), runs
the geoseg command line with its defaults, then prints per-chip and pooled water IoU, F1,
precision and recall beside simple baselines computed in the same run from the same
pixels: NDWI > 0, MNDWI > 0, AWEI (no shadow) > 0, and geoseg's former default (NDWI
with Otsu's threshold per raster). It also runs ``geoseg prompts --negative 3`` and prints
the share of positive points on labelled water and negative points on labelled dry land.

    python benchmarks/water_quality.py ../shared/data/sen1floods11
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

GEOSEG = [sys.executable, "-m", "geoseg"]
BANDS = "sentinel2"


def chips(folder: Path) -> list[tuple[str, Path, Path]]:
    found = []
    for image in sorted((folder / "s2").glob("*_S2Hand.tif")):
        name = image.name.removesuffix("_S2Hand.tif")
        label = folder / "labels" / f"{name}_LabelHand.tif"
        if label.exists():
            found.append((name, image, label))
    if not found:
        sys.exit(f"{folder}: no s2/<name>_S2Hand.tif with labels/<name>_LabelHand.tif found")
    return found


def geoseg(*args: str) -> None:
    result = subprocess.run([*GEOSEG, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"geoseg {' '.join(map(str, args))} failed:\n{result.stderr}")


def counts(water: np.ndarray, label: np.ndarray) -> np.ndarray:
    """tp, fp, fn of a water mask against labels (-1 ignored)."""
    labelled = label >= 0
    truth = label == 1
    water = water & labelled
    return np.array([(water & truth).sum(), (water & ~truth).sum(), (~water & truth).sum()])


def scores(tp_fp_fn: np.ndarray) -> dict[str, float]:
    tp, fp, fn = (float(v) for v in tp_fp_fn)
    return {
        "iou": tp / max(tp + fp + fn, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
    }


def baselines(image: Path) -> dict[str, np.ndarray]:
    """Simple index rules on reflectance (digital numbers / 10000)."""
    with rasterio.open(image) as src:
        b = src.read().astype(np.float32) / 10000
        valid = src.read_masks(1) > 0
    green, nir, swir1, swir2 = b[2], b[7], b[11], b[12]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndwi = (green - nir) / (green + nir)
        mndwi = (green - swir1) / (green + swir1)
    awei = 4 * (green - swir1) - (0.25 * nir + 2.75 * swir2)
    return {
        "NDWI > 0": (ndwi > 0) & valid,
        "MNDWI > 0": (mndwi > 0) & valid,
        "AWEI_nsh > 0": (awei > 0) & valid,
    }


def read_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1) == 1


def prompt_shares(prompts: Path, label_path: Path) -> tuple[int, int, int, int]:
    """(positive on water, positive labelled, negative on dry, negative labelled)."""
    import geopandas as gpd

    points = gpd.read_file(prompts, layer="points")
    with rasterio.open(label_path) as src:
        points = points.to_crs(src.crs)
        values = np.array(
            [v[0] for v in src.sample(zip(points.geometry.x, points.geometry.y, strict=True))]
        )
    positive = points["label"].to_numpy() == 1
    labelled = values >= 0
    return (
        int((positive & labelled & (values == 1)).sum()),
        int((positive & labelled).sum()),
        int((~positive & labelled & (values == 0)).sum()),
        int((~positive & labelled).sum()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with s2/ and labels/")
    args = parser.parse_args()
    rows: dict[str, dict[str, np.ndarray]] = {}
    prompt_rows: dict[str, tuple[int, int, int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, image, label_path in chips(args.folder):
            with rasterio.open(label_path) as src:
                label = src.read(1)
            methods = {}
            geoseg(
                "predict",
                image,
                "-o",
                out / f"{name}.tif",
                "--backend",
                "spectral",
                "--bands",
                BANDS,
                "-q",
            )
            methods["geoseg defaults"] = read_mask(out / f"{name}.tif")
            geoseg(
                "predict",
                image,
                "-o",
                out / f"{name}_old.tif",
                "--backend",
                "spectral",
                "--bands",
                BANDS,
                "--option",
                "index=ndwi",
                "--option",
                "threshold=otsu",
                "-q",
            )
            methods["NDWI Otsu (former default)"] = read_mask(out / f"{name}_old.tif")
            methods.update(baselines(image))
            rows[name] = {method: counts(mask, label) for method, mask in methods.items()}
            geoseg(
                "prompts",
                image,
                "-o",
                out / f"{name}_prompts.gpkg",
                "--bands",
                BANDS,
                "--negative",
                "3",
                "-q",
            )
            prompt_rows[name] = prompt_shares(out / f"{name}_prompts.gpkg", label_path)

    methods = list(next(iter(rows.values())))
    print(f"{'method':28s} {'chip':16s} {'IoU':>6s} {'F1':>6s} {'prec':>6s} {'recall':>6s}")
    for method in methods:
        for name, by_method in rows.items():
            s = scores(by_method[method])
            print(
                f"{method:28s} {name:16s} {s['iou']:6.3f} {s['f1']:6.3f} "
                f"{s['precision']:6.3f} {s['recall']:6.3f}"
            )
        s = scores(sum(by_method[method] for by_method in rows.values()))
        print(
            f"{method:28s} {'pooled':16s} {s['iou']:6.3f} {s['f1']:6.3f} "
            f"{s['precision']:6.3f} {s['recall']:6.3f}"
        )
    print()
    simple = [m for m in methods if m != "geoseg defaults"]
    print("geoseg defaults against the best simple method on each chip:")
    for name, by_method in rows.items():
        best = max(simple, key=lambda m: scores(by_method[m])["iou"])
        ours, theirs = scores(by_method["geoseg defaults"])["iou"], scores(by_method[best])["iou"]
        print(f"  {name:16s} {ours:.3f} vs {theirs:.3f} ({best}): {ours - theirs:+.3f}")
    print()
    print("prompts (geoseg prompts --negative 3), points on labelled pixels:")
    totals = np.zeros(4, int)
    for name, row in prompt_rows.items():
        totals += row
        print(
            f"  {name:16s} positive on water {row[0]}/{row[1]}, negative on dry {row[2]}/{row[3]}"
        )
    pos = totals[0] / max(totals[1], 1)
    neg = totals[2] / max(totals[3], 1)
    print(
        f"  {'all':16s} positive on water {pos:.1%} ({totals[0]}/{totals[1]}), "
        f"negative on dry {neg:.1%} ({totals[2]}/{totals[3]})"
    )


if __name__ == "__main__":
    main()
