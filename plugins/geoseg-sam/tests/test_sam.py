"""The SAM backend end to end through the CLI, with a tiny SAM saved to a temporary folder.

The chip set is a real NAIP crop labelled with an NDWI water mask; the model is a
``SamConfig`` with two small encoder layers, saved with ``save_pretrained`` and loaded
through the same ``--model FOLDER`` path a user takes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from geoseg_sam.options import SamOptions
from rasterio.windows import Window
from safetensors.torch import load_file
from shapely.geometry import Point

from geoseg.cli import cli
from geoseg.training import lr_factor

NAIP = Path(__file__).resolve().parents[4] / "shared" / "data" / "naip_rgbn_2020.tif"
pytestmark = pytest.mark.skipif(not NAIP.exists(), reason="../shared/data samples not present")

CROP = Window(320, 320, 256, 256)
CHIP = 64
EPOCHS = 24
RESUMED_EPOCHS = 30
LR = 3e-3


def geoseg(*args, expect: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exit_code == expect, (
        f"geoseg {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}"
        f"\n{result.exc_info if result.exception and expect == 0 else ''}"
    )
    return result


class EncoderCalls:
    """Counts chips through ``SamModel.get_image_embeddings`` (the real method still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from transformers import SamModel

        self.chips: list[int] = []
        self.models: list[SamModel] = []
        original = SamModel.get_image_embeddings

        def counted(model, pixel_values, **kwargs):
            self.chips.append(len(pixel_values))
            self.models.append(model)
            return original(model, pixel_values, **kwargs)

        monkeypatch.setattr(SamModel, "get_image_embeddings", counted)

    @property
    def total(self) -> int:
        return sum(self.chips)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, save_tiny_sam):
    """A tiny SAM, a labelled NAIP crop and its chip set (16 chips of 64 px)."""
    from skimage.filters import threshold_otsu

    root = tmp_path_factory.mktemp("sam")
    tiny = save_tiny_sam(root / "tiny-sam")
    with rasterio.open(NAIP) as src:
        data = src.read(window=CROP)
        profile = src.profile | dict(
            width=CROP.width, height=CROP.height, transform=src.window_transform(CROP)
        )
    green, nir = data[1].astype(float), data[3].astype(float)
    ndwi = (green - nir) / (green + nir + 1e-6)
    water = (ndwi > threshold_otsu(ndwi)).astype(np.uint8)
    crop = root / "crop.tif"
    with rasterio.open(crop, "w", **profile) as dst:
        dst.write(data)
    labels = root / "labels.tif"
    with rasterio.open(labels, "w", **(profile | dict(count=1, nodata=None))) as dst:
        dst.write(water[None])
    classes = root / "classes.json"
    classes.write_text(json.dumps([{"id": 0, "name": "background"}, {"id": 1, "name": "water"}]))
    chips = root / "chips"
    geoseg(
        "tile",
        crop,
        "-o",
        chips,
        "--bands",
        "naip",
        "--size",
        CHIP,
        "--overlap",
        0,
        "--labels",
        labels,
        "--classes",
        classes,
        "--val-fraction",
        0.25,
        "-q",
    )
    return {
        "root": root,
        "tiny": tiny,
        "crop": crop,
        "labels": labels,
        "chips": chips,
        "water": water.astype(bool),
    }


def train_args(ws, out, cache, epochs, *extra):
    return (
        "train",
        "--backend",
        "sam",
        ws["chips"],
        "-o",
        out,
        "--model",
        ws["tiny"],
        "--epochs",
        epochs,
        "--batch-size",
        2,
        "--lr",
        LR,
        "--device",
        "cpu",
        "-q",
        "--option",
        f"cache={cache}",
        *extra,
    )


@pytest.fixture(scope="module")
def trained(workspace):
    """Train for EPOCHS, then resume to RESUMED_EPOCHS, counting encoder calls in each run."""
    out = workspace["root"] / "model"
    cache = workspace["root"] / "cache"
    with pytest.MonkeyPatch.context() as mp:
        first = EncoderCalls(mp)
        geoseg(*train_args(workspace, out, cache, EPOCHS))
    before = json.loads((out / "history.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        resumed = EncoderCalls(mp)
        geoseg(*train_args(workspace, out, cache, RESUMED_EPOCHS, "--resume"))
    return {
        "out": out,
        "cache": cache,
        "first": first,
        "resumed": resumed,
        "before": before,
        "history": json.loads((out / "history.json").read_text()),
    }


def training_set_loss(workspace, model_dir: Path | None, trained_dir: Path) -> float:
    """Mean loss over the train chips, fixed prompts, of a trained decoder or the initial one.

    Both see the chips through the trained model's 8-bit stretch.
    """
    from geoseg_sam.backend import SamBackend
    from geoseg_sam.model import image_embeddings
    from geoseg_sam.preprocess import BandStretch
    from geoseg_sam.train import (
        SamTask,
        draw_training_prompts,
        training_prompt_settings,
        training_step,
    )

    from geoseg.dataset import ChipDataset
    from geoseg.training import ChipSamples

    backend = SamBackend(SamOptions())
    backend.load(str(model_dir or workspace["tiny"]), "cpu")
    options = SamOptions()
    dataset = ChipDataset.open(workspace["chips"])
    settings = json.loads((trained_dir / "geoseg_sam.json").read_text())
    task = SamTask(options)
    task.stretch = BandStretch.from_json(settings["stretch"])
    task.band_names = dataset.band_names
    classes = task.classes(dataset, dataset.records)
    chips = ChipSamples(
        dataset, dataset.split("train"), task.label_lookup(classes), transform=task.transform
    )
    settings = training_prompt_settings(options, 0)
    losses = []
    with torch.no_grad():
        for i in range(len(chips)):
            item = chips[i]
            prompts = draw_training_prompts(
                item["label"], 0, settings, np.random.default_rng(i), backend.frame, 16
            )
            if prompts:
                pixels = backend.frame.pixel_values(item["image"][None])
                embedding = image_embeddings(backend.model, pixels)
                losses.append(
                    float(
                        training_step(
                            backend.model, embedding, prompts, backend.frame, options, "cpu"
                        )
                    )
                )
    assert len(losses) > len(chips) // 2
    return float(np.mean(losses))


def test_training_lowers_the_loss_and_reads_embeddings_from_the_cache(workspace, trained):
    history = trained["history"]
    # Prompts are redrawn every epoch, so the logged loss is noisy; judge the trained
    # decoder against the initial one on the same chips and the same prompts.
    trained_loss = training_set_loss(workspace, trained["out"], trained["out"])
    initial_loss = training_set_loss(workspace, None, trained["out"])
    assert trained_loss < 0.8 * initial_loss, (trained_loss, initial_loss)
    logged = [h["train_loss"] for h in trained["before"]]
    assert np.mean(logged[-3:]) < 0.75 * np.mean(logged[:3]), logged
    for h in history:
        water = h["per_class"]["water"]
        assert h["validated"] and 0 <= water["iou"] <= 1 and 0 <= water["f1"] <= 1
        assert 0 <= h["mean_iou"] <= 1 and h["val_loss"] is None

    from geoseg.dataset import ChipDataset

    dataset = ChipDataset.open(workspace["chips"])
    n_train, n_val = len(dataset.split("train")), len(dataset.split("val"))
    first = trained["first"]
    # Epoch 1 runs the encoder once per train chip; later epochs only read the cache.
    assert history[0]["encoder_chips"] == n_train and history[0]["cache_hits"] == 0
    assert all(h["encoder_chips"] == 0 and h["cache_hits"] == n_train for h in history[1:])
    # Every chip (train and prompted val chips) went through the encoder at most once.
    assert n_train <= first.total <= n_train + n_val
    assert trained["resumed"].total == 0
    assert len(list(trained["cache"].rglob("*.safetensors"))) == first.total


def test_resume_continues_from_the_saved_epoch(trained):
    history, before = trained["history"], trained["before"]
    assert [h["epoch"] for h in before] == list(range(1, EPOCHS + 1))
    assert [h["epoch"] for h in history] == list(range(1, RESUMED_EPOCHS + 1))
    assert history[:EPOCHS] == before
    state = json.loads((trained["out"] / "checkpoint" / "geoseg_state.json").read_text())
    assert state["epoch"] == RESUMED_EPOCHS
    # The scheduler went on from the saved step instead of warming up again.
    steps = history[0]["steps"]
    factor = lr_factor(SamOptions().warmup, RESUMED_EPOCHS * steps, "cosine")
    assert history[EPOCHS]["lr"] == pytest.approx(LR * factor((EPOCHS + 1) * steps))
    # The checkpoint holds the decoder, not the frozen encoders.
    weights = load_file(str(trained["out"] / "checkpoint" / "model.safetensors"))
    assert weights and all(k.startswith("mask_decoder.") or "positional" in k for k in weights)


def test_encoders_stay_frozen_and_only_the_decoder_is_saved(workspace, trained):
    from transformers import SamModel

    base = SamModel.from_pretrained(workspace["tiny"])
    trained_model = trained["first"].models[-1]
    base_state, after = base.state_dict(), trained_model.state_dict()
    frozen = [k for k in base_state if not k.startswith("mask_decoder.")]
    assert any(k.startswith("vision_encoder.") for k in frozen)
    assert any(k.startswith("prompt_encoder.") for k in frozen)
    for key in frozen:
        assert torch.equal(base_state[key], after[key]), key

    decoder = load_file(str(trained["out"] / "decoder.safetensors"))
    assert decoder and all(k.startswith("mask_decoder.") for k in decoder)
    assert set(decoder) == {k for k in base_state if k.startswith("mask_decoder.")}
    assert any(not torch.equal(decoder[k], base_state[k]) for k in decoder)

    files = {p.name for p in trained["out"].iterdir()}
    assert {
        "decoder.safetensors",
        "geoseg_sam.json",
        "geoseg_model.json",
        "history.json",
        "history.png",
    } <= files
    manifest = json.loads((trained["out"] / "geoseg_model.json").read_text())
    assert manifest["backend"]["name"] == "sam" and manifest["bands"] == ["red", "green", "blue"]
    assert [c["name"] for c in manifest["classes"]] == ["background", "water"]
    assert manifest["normalization"]["kind"] == "percentile_stretch"
    assert manifest["chip_size"] == CHIP
    settings = json.loads((trained["out"] / "geoseg_sam.json").read_text())
    assert settings["base_model"] == str(workspace["tiny"].resolve())
    assert settings["bands"] == ["red", "green", "blue"]
    assert settings["class_name"] == "water"
    assert len(settings["stretch"]["low"]) == 3
    assert (trained["out"] / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_with_auto_prompts_is_georeferenced(workspace, trained):
    out = workspace["root"] / "pred" / "water.tif"
    polygons = workspace["root"] / "pred" / "water.gpkg"
    geoseg(
        "predict",
        workspace["crop"],
        "-o",
        out,
        "--backend",
        "sam",
        "--model",
        trained["out"],
        "--bands",
        "naip",
        "--size",
        CHIP,
        "--overlap",
        16,
        "--prompts",
        "auto",
        "--vector",
        polygons,
        "--device",
        "cpu",
        "-q",
    )
    with rasterio.open(out) as mask, rasterio.open(workspace["crop"]) as src:
        assert mask.crs == src.crs
        assert mask.transform == src.transform
        assert (mask.width, mask.height) == (src.width, src.height)
        predicted = mask.read(1) == 1
    truth = workspace["water"]
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.3, iou
    shapes = gpd.read_file(polygons, layer="classes")
    assert "water" in set(shapes["class_name"])
    assert shapes.crs == rasterio.open(workspace["crop"]).crs


def test_predict_on_a_chip_needs_no_bands(workspace, trained):
    # Chips written by geoseg tile name their bands; the model knows the three it reads.
    chip = sorted((workspace["chips"] / "images").glob("*.tif"))[0]
    out = workspace["root"] / "pred" / "chip.tif"
    geoseg("predict", chip, "-o", out, "--backend", "sam", "--model", trained["out"],
           "--prompts", "auto", "--device", "cpu", "-q")  # fmt: skip
    with rasterio.open(out) as mask:
        assert set(np.unique(mask.read(1))) <= {0, 1}


def test_predict_with_a_prompts_file_skips_chips_without_prompts(workspace, trained, monkeypatch):
    with rasterio.open(workspace["crop"]) as src:
        transform, crs = src.transform, src.crs
    water = workspace["water"]
    # Positive points on water pixels of the top-left chip only.
    rows, cols = np.nonzero(water[:CHIP, :CHIP])
    picked = np.linspace(0, len(rows) - 1, 3).astype(int)
    points = [Point(transform * (cols[i] + 0.5, rows[i] + 0.5)) for i in picked]
    prompts = workspace["root"] / "prompts.gpkg"
    gpd.GeoDataFrame({"label": [1] * len(points)}, geometry=points, crs=crs).to_file(prompts)

    calls = EncoderCalls(monkeypatch)
    out = workspace["root"] / "pred-file.tif"
    geoseg(
        "predict",
        workspace["crop"],
        "-o",
        out,
        "--backend",
        "sam",
        "--model",
        trained["out"],
        "--bands",
        "naip",
        "--size",
        CHIP,
        "--overlap",
        0,
        "--prompts",
        prompts,
        "--device",
        "cpu",
        "-q",
    )
    assert calls.total == 1  # only the prompted chip reached the encoder
    with rasterio.open(out) as mask:
        predicted = mask.read(1)
    assert (predicted[:CHIP, :CHIP] == 1).any()
    assert (predicted[CHIP:, :] == 0).all() and (predicted[:, CHIP:] == 0).all()


def test_zero_shot_with_a_bare_checkpoint(workspace, tmp_path):
    from geoseg_sam.backend import SamBackend

    out = tmp_path / "zero.tif"
    geoseg(
        "predict",
        workspace["crop"],
        "-o",
        out,
        "--backend",
        "sam",
        "--model",
        workspace["tiny"],
        "--bands",
        "naip",
        "--size",
        CHIP,
        "--device",
        "cpu",
        "-q",
    )
    with rasterio.open(out) as mask:
        assert set(np.unique(mask.read(1))) <= {0, 1}
    assert SamBackend.capabilities().bands == ("red", "green", "blue")


def test_missing_hub_checkpoint_offline_is_one_line(workspace, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = geoseg(
        "train",
        "--backend",
        "sam",
        workspace["chips"],
        "-o",
        tmp_path / "m",
        "--model",
        "geoseg-tests/no-such-sam",
        "-q",
        expect=2,
    )
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    assert "hf download geoseg-tests/no-such-sam" in message and "--model" in message
    assert "Traceback" not in result.output


def test_options_are_validated_by_name(workspace, tmp_path):
    result = geoseg(
        *train_args(workspace, tmp_path / "m", tmp_path / "c", 1, "--option", "prompt=lines"),
        expect=2,
    )
    assert "prompt" in result.output and "points" in result.output
    result = geoseg(
        *train_args(workspace, tmp_path / "m", tmp_path / "c", 1, "--option", "bands=nir,red"),
        expect=2,
    )
    assert "bands" in result.output


def test_false_colour_bands_come_back_from_the_model(workspace, tmp_path):
    from geoseg_sam.backend import SamBackend

    out = tmp_path / "nir"
    cache = workspace["root"] / "cache"
    args = train_args(
        workspace,
        out,
        cache,
        1,
        "--option",
        "bands=nir,red,green",
        "--option",
        "prompt=boxes",
        "--option",
        "negative=2",
        "--option",
        "multimask=best",
    )
    result = geoseg(*[a for a in args if a != "-q"])
    # The training core's per-epoch line, the same as every other backend's.
    (line,) = [line for line in result.output.splitlines() if ": train loss " in line]
    assert line.startswith("epoch 1/1: train loss ") and "mean IoU" in line
    assert "water IoU" in line and line.endswith("(best so far, saved)")
    backend = SamBackend(SamOptions())
    backend.load(str(out), "cpu")
    assert backend.loaded_capabilities().bands == ("nir", "red", "green")
    assert backend.prompt_settings()["boxes"] is True
    shutil.rmtree(out)


def test_accelerate_launch_on_two_cpu_processes_writes_one_model(workspace, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        pytest.skip("accelerate's launcher is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ddp"
    # --multi_gpu selects torch.distributed's launcher; without GPUs it runs gloo on CPU.
    command = [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "geoseg",
        *map(str, train_args(workspace, out, tmp_path / "cache", 2)),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    from geoseg.dataset import ChipDataset

    n_train = len(ChipDataset.open(workspace["chips"]).split("train"))
    # Each process took half of the chips per epoch.
    assert history[0]["steps"] == -(-n_train // 4)
    assert {p.name for p in out.iterdir()} == {
        "decoder.safetensors",
        "geoseg_sam.json",
        "geoseg_model.json",
        "history.json",
        "history.png",
        "checkpoint",
    }
    assert not list(out.rglob("*.part*"))


def test_zero_shot_on_16_bit_imagery_stretches_per_raster(workspace, tmp_path):
    from geoseg_sam.backend import SamBackend
    from geoseg_sam.options import SamOptions

    from geoseg.raster import open_raster

    with rasterio.open(workspace["crop"]) as src:
        data = src.read().astype(np.uint16) * 40 + 1000
        profile = src.profile | dict(dtype="uint16", nodata=None)
    wide = tmp_path / "uint16.tif"
    with rasterio.open(wide, "w", **profile) as dst:
        dst.write(data)
    backend = SamBackend(SamOptions())
    backend.load(str(workspace["tiny"]), "cpu")
    with open_raster(wide, "naip") as source:
        backend.begin_raster(source)
    stretch = backend.raster_stretch
    red = data[0].astype(float)
    assert stretch.low[0] == pytest.approx(np.percentile(red, 2), rel=0.02)
    assert stretch.high[0] == pytest.approx(np.percentile(red, 98), rel=0.02)
    eight_bit = stretch.apply(data[:3].astype(np.float32))
    assert eight_bit.dtype == np.uint8 and eight_bit.min() == 0 and eight_bit.max() == 255

    out = tmp_path / "uint16-water.tif"
    geoseg(
        "predict",
        wide,
        "-o",
        out,
        "--backend",
        "sam",
        "--model",
        workspace["tiny"],
        "--bands",
        "naip",
        "--size",
        CHIP,
        "--device",
        "cpu",
        "-q",
    )
    with rasterio.open(out) as mask, rasterio.open(wide) as src:
        assert mask.transform == src.transform and mask.crs == src.crs


@pytest.mark.parametrize(
    ("loss", "multimask", "prompt"),
    [("dice", "single", "points"), ("focal", "best", "boxes"), ("dicece", "mean", "points")],
)
def test_every_loss_and_multimask_mode_trains_the_decoder_only(workspace, loss, multimask, prompt):
    from geoseg_sam.model import freeze_encoders, load_sam
    from geoseg_sam.train import draw_training_prompts, training_prompt_settings, training_step

    model, frame = load_sam(str(workspace["tiny"]))
    freeze_encoders(model)
    options = SamOptions(loss=loss, multimask=multimask, prompt=prompt, negative=1)
    water = workspace["water"][:CHIP, :CHIP].astype(np.uint8)
    prompts = draw_training_prompts(
        water, 0, training_prompt_settings(options, 0), np.random.default_rng(0), frame, 8
    )
    assert prompts and all((p.box is not None) == (prompt == "boxes") for p in prompts)
    embeddings = torch.randn(1, 64, 16, 16)
    value = training_step(model, embeddings, prompts, frame, options, "cpu")
    value.backward()
    assert torch.isfinite(value) and value > 0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("mask_decoder.") for n in grads)
