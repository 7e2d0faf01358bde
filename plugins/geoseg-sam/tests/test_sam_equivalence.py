"""geoseg's SAM against Hugging Face's own pipeline on the same 8-bit chip and prompts.

The reference is ``SamProcessor(images, input_points/input_labels/input_boxes) ->
SamModel -> processor.post_process_masks``, on a tiny random SAM saved with its
processor and loaded the way a user's ``--model FOLDER`` is. geoseg goes through
``SamBackend.predict`` on a ``ChipBatch`` with ``Prompts``, and once through
``geoseg predict --backend sam --prompts FILE`` on a crop of the NAIP sample.

Coordinates: geoseg's chip coordinates put pixel centres at +0.5 and boxes on pixel
edges; SAM's put pixel centres on integers and a box on its corner pixels. So the
geoseg point (col + 0.5, row + 0.5) is SAM's (col, row), and the geoseg box
(c0, r0, c1, r1) is SAM's (c0, r0, c1 - 1, r1 - 1).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from rasterio.windows import Window
from shapely.geometry import Point

from geoseg.backend import ChipBatch
from geoseg.cli import cli
from geoseg.plugins import create_backend
from geoseg.prompts import Prompts
from geoseg.windows import Tile

NAIP = Path(__file__).resolve().parents[3] / "examples" / "data" / "naip_rgbn_2020.tif"
BANDS = ("red", "green", "blue", "nir")
#: Chip shapes against the tiny model's 128 px input: smaller, equal, larger and not a
#: multiple, not square (both axes round on their own).
SHAPES = {"smaller": (96, 96), "equal": (128, 128), "larger": (200, 200), "oblong": (90, 150)}
MODES = ("mean", "best", "single")
#: Agreement required of geoseg's mask with the reference's, and logits compared where
#: float32 probabilities still resolve them.
MIN_AGREEMENT = 0.999
LOGIT_TOLERANCE = 1e-4
LOGIT_RANGE = 8.0


def prompts_for(kind: str, height: int, width: int) -> dict:
    """One prompt of ``kind`` in SAM's pixel convention (see the module docstring)."""
    positive = [int(width * 0.4), int(height * 0.55)]
    negatives = [[int(width * 0.85), int(height * 0.15)], [int(width * 0.1), int(height * 0.9)]]
    corners = [int(width * 0.2), int(height * 0.25), int(width * 0.7), int(height * 0.8)]
    if kind == "points":
        return {"points": [positive, *negatives], "labels": [1, 0, 0]}
    if kind == "box":
        return {"box": corners}
    return {"box": corners, "points": negatives[:1], "labels": [0]}


def geoseg_prompts(prompt: dict) -> Prompts:
    points = np.asarray(prompt.get("points", np.zeros((0, 2))), np.float32) + 0.5
    boxes = np.asarray([prompt["box"]], np.float32) + [0, 0, 1, 1] if "box" in prompt else ()
    return Prompts(points=points, labels=prompt.get("labels", ()), boxes=boxes)


def chip(height: int, width: int, row: int = 240, col: int = 300) -> np.ndarray:
    """An 8-bit RGBN chip (4, height, width) of the NAIP sample."""
    with rasterio.open(NAIP) as src:
        return src.read(window=Window(col, row, width, height))


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory, save_tiny_sam):
    """The tiny SAM with prompt encoder and decoder drawn at unit gain.

    At the config's initializer range the random decoder's logits are about 1e-4, all
    of one sign by chance; at unit gain they are of order one and follow the prompts.
    """
    from transformers import SamModel

    folder = save_tiny_sam(tmp_path_factory.mktemp("sam-equivalence") / "tiny-sam")
    model = SamModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and name.startswith(("prompt_encoder.", "mask_decoder.")):
                weight.copy_(
                    torch.randn(weight.shape, generator=generator) / weight[0].numel() ** 0.5
                )
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_sam):
    """``reference(image (H, W, 3) uint8, prompt, multimask)``: logits (H, W) and IoU."""
    from transformers import SamModel, SamProcessor

    processor = SamProcessor.from_pretrained(tiny_sam)
    model = SamModel.from_pretrained(tiny_sam).eval()

    def run(image: np.ndarray, prompt: dict, multimask: str) -> tuple[torch.Tensor, float]:
        kwargs = {}
        if "points" in prompt:
            kwargs["input_points"] = [[prompt["points"]]]
            kwargs["input_labels"] = [[prompt["labels"]]]
        if "box" in prompt:
            kwargs["input_boxes"] = [[prompt["box"]]]
        inputs = processor(images=image, return_tensors="pt", **kwargs)
        model_inputs = {
            key: value.float() if value.is_floating_point() else value
            for key, value in inputs.items()
            if key in ("pixel_values", "input_points", "input_labels", "input_boxes")
        }
        with torch.no_grad():
            output = model(**model_inputs, multimask_output=multimask != "single")
        masks = processor.post_process_masks(
            output.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"],
            binarize=False,
        )[0][0]  # fmt: skip
        scores = output.iou_scores[0, 0]
        if multimask == "mean":
            return masks.mean(dim=0), float(scores.mean())
        best = int(scores.argmax()) if multimask == "best" else 0
        return masks[best], float(scores[best])

    return run


@pytest.fixture(scope="module")
def backends(tiny_sam):
    """A zero-shot SAM backend per multimask mode, loaded from the checkpoint folder."""
    loaded = {}
    for mode in MODES:
        backend = create_backend("sam", [f"multimask={mode}"])
        backend.load(str(tiny_sam), device="cpu")
        loaded[mode] = backend
    return loaded


def predict(backend, data: np.ndarray, prompts: Prompts) -> np.ndarray:
    """The backend's water probability (H, W) for one chip, through ``predict``."""
    height, width = data.shape[-2:]
    tile = Tile(0, 0, Window(0, 0, width, height), Affine.identity(), None)
    batch = ChipBatch(
        images=data[None].astype(np.float32),
        valid=np.ones((1, height, width), bool),
        band_names=BANDS,
        tiles=(tile,),
        prompts=(prompts,),
    )
    probabilities = backend.predict(batch)
    np.testing.assert_allclose(probabilities[0].sum(axis=0), 1.0, atol=1e-6)
    return probabilities[0, 1]


def agreement(probability: np.ndarray, logits: torch.Tensor) -> tuple[float, float]:
    """Share of pixels where the masks agree, and the largest logit difference."""
    reference = logits.double().numpy()
    same = float(((probability > 0.5) == (reference > 0)).mean())
    p = probability.astype(np.float64)
    with np.errstate(divide="ignore"):
        ours = np.log(p) - np.log1p(-p)
    resolved = np.abs(reference) < LOGIT_RANGE
    return same, float(np.abs(ours - reference)[resolved].max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["points", "box", "box+negative"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_prompt_predicts_what_sam_processor_and_model_predict(
    shape, kind, mode, backends, reference
):
    height, width = SHAPES[shape]
    data = chip(height, width)
    prompt = prompts_for(kind, height, width)
    logits, _ = reference(np.ascontiguousarray(data[:3].transpose(1, 2, 0)), prompt, mode)
    assert 0.02 < float((logits > 0).float().mean()) < 0.98, "the reference mask is trivial"
    same, logit_diff = agreement(predict(backends[mode], data, geoseg_prompts(prompt)), logits)
    print(f"SAM {shape} {height}x{width} {kind} {mode}: {100 * same:.4f}% {logit_diff:.1e}")
    assert same >= MIN_AGREEMENT
    assert logit_diff <= LOGIT_TOLERANCE


def test_prompts_of_one_chip_merge_the_reference_masks_by_score(backends, reference):
    """Two positive points are two prompts; geoseg keeps, per pixel, the larger of each
    prompt's probability weighted by its predicted IoU relative to the best prompt's."""
    height, width = SHAPES["larger"]
    data = chip(height, width)
    image = np.ascontiguousarray(data[:3].transpose(1, 2, 0))
    negative = [int(width * 0.85), int(height * 0.15)]
    first = {"points": [[int(width * 0.4), int(height * 0.55)], negative], "labels": [1, 0]}
    second = {"points": [[int(width * 0.7), int(height * 0.3)], negative], "labels": [1, 0]}
    (logits_a, score_a), (logits_b, score_b) = (
        reference(image, p, "best") for p in (first, second)
    )
    weights = np.clip([score_a, score_b], 1e-3, 1.0)
    weights = weights / weights.max()
    merged = np.maximum(
        torch.sigmoid(logits_a).numpy() * weights[0], torch.sigmoid(logits_b).numpy() * weights[1]
    )
    both = Prompts(
        points=np.asarray([first["points"][0], second["points"][0], negative], np.float32) + 0.5,
        labels=[1, 1, 0],
    )
    ours = predict(backends["best"], data, both)
    assert float(np.abs(ours - merged).max()) < 1e-3
    assert float(((ours > 0.5) == (merged > 0.5)).mean()) >= MIN_AGREEMENT


def test_cached_embeddings_decode_as_the_direct_path(tiny_sam, backends, tmp_path):
    """The training cache's embeddings (stored, read back) give the masks of the encoder's."""
    from geoseg_sam.cache import EmbeddingCache
    from geoseg_sam.decode import segment_chip
    from geoseg_sam.model import checkpoint_identity, image_embeddings

    backend = backends["mean"]
    model, frame = backend.model, backend.frame
    height, width = SHAPES["larger"]
    images = chip(height, width)[None, :3]
    prompts = geoseg_prompts(prompts_for("points", height, width))
    cache = EmbeddingCache(tmp_path / "cache", checkpoint_identity(model), frame.size)

    def encode(chips):
        return image_embeddings(model, frame.pixel_values(chips))

    direct = encode(images)
    missed = cache.embeddings(images, encode, "cpu")
    hit = cache.embeddings(images, encode, "cpu")
    assert (cache.misses, cache.hits) == (1, 1)
    results = [
        segment_chip(model, e[0], prompts, frame, height, width, "mean").numpy()
        for e in (direct, missed, hit)
    ]
    for result in results[1:]:
        assert float(np.abs(result - results[0]).max()) < 1e-3
        assert float(((result > 0.5) == (results[0] > 0.5)).mean()) >= MIN_AGREEMENT
    backend_result = predict(backend, chip(height, width), prompts)
    np.testing.assert_allclose(backend_result, results[0], atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "options"),
    [("uint8", ()), ("uint16", ("--option", "stretch=off"))],
    ids=["8-bit default", "16-bit stretch=off"],
)
def test_cli_predict_with_a_prompts_file_matches_the_reference(
    dtype, options, tiny_sam, reference, tmp_path
):
    """``geoseg predict --backend sam --prompts FILE`` on a georeferenced NAIP crop, one chip.

    8-bit imagery goes in as it is by default; the same values in a 16-bit file would be
    stretched per raster, and ``stretch=off`` gives the reference's input back.
    """
    size = 160  # neither the model's 128 px nor a multiple of it
    with rasterio.open(NAIP) as src:
        window = Window(420, 200, size, size)
        data = src.read(window=window)
        profile = src.profile | dict(
            width=size, height=size, transform=src.window_transform(window), dtype=dtype
        )
    crop = tmp_path / "crop.tif"
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data.astype(dtype))
    transform = profile["transform"]
    prompt = prompts_for("points", size, size)
    geometry = [Point(transform * (x + 0.5, y + 0.5)) for x, y in prompt["points"]]
    prompts = tmp_path / "prompts.gpkg"
    gpd.GeoDataFrame({"label": prompt["labels"]}, geometry=geometry, crs=profile["crs"]).to_file(
        prompts
    )
    out = tmp_path / "water.tif"
    result = CliRunner().invoke(
        cli,
        [
            "predict", str(crop), "-o", str(out), "--backend", "sam", "--model", str(tiny_sam),
            "--bands", "naip", "--prompts", str(prompts), "--size", str(size), "--overlap", "0",
            "--probabilities", "--device", "cpu", "-q", *options,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    logits, _ = reference(np.ascontiguousarray(data[:3].transpose(1, 2, 0)), prompt, "mean")
    with rasterio.open(out) as mask:
        assert mask.transform == transform and mask.crs == profile["crs"]
        predicted = mask.read(1)
    with rasterio.open(tmp_path / "water_probabilities.tif") as probabilities:
        water = probabilities.read(2)
    same, logit_diff = agreement(water, logits)
    print(f"SAM CLI {dtype} {size}x{size} points mean: {100 * same:.4f}% {logit_diff:.1e}")
    assert same >= MIN_AGREEMENT and logit_diff <= LOGIT_TOLERANCE
    assert float((predicted == (logits.numpy() > 0)).mean()) >= MIN_AGREEMENT


def test_stretch_off_trains_on_the_values_as_they_are():
    """``stretch=off``: training feeds SAM the chips' values as 8-bit, as SAM's pipeline."""
    from geoseg_sam.options import SamOptions
    from geoseg_sam.preprocess import BandStretch
    from geoseg_sam.train import _fit_stretch

    options = SamOptions(stretch="off")
    stretch = _fit_stretch(None, [], options, np.random.default_rng(0))
    assert stretch == BandStretch.identity(options.bands)
    values = np.arange(0, 300, 7, dtype=np.float32).reshape(1, 1, -1).repeat(3, axis=0)
    np.testing.assert_array_equal(stretch.apply(values), np.clip(values, 0, 255).astype(np.uint8))
