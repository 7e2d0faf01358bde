"""Train, resume and predict through the geoseg command line on real NAIP land-cover chips."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from geoseg_segformer.model import SETTINGS_FILE, load_for_prediction, load_pretrained
from safetensors.torch import load_file

from geoseg.backend import ChipBatch
from geoseg.classes import ClassMap
from geoseg.dataset import ChipDataset
from geoseg.plugins import create_backend


def test_training_lowers_the_loss_and_saves_a_small_adapter(land_cover, lora_model):
    history = json.loads((lora_model / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for entry in history:
        assert 0 <= entry["mean_iou"] <= 1 and 0 <= entry["overall_accuracy"] <= 1
        assert entry["validated"] and entry["val_loss"] > 0
        assert set(entry["per_class"]) == {"other", "water", "vegetation"}
        assert set(entry["per_class"]["water"]) == {"iou", "f1", "precision", "recall"}
    assert (lora_model / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = json.loads((lora_model / "geoseg_model.json").read_text())
    assert manifest["backend"]["name"] == "segformer"
    assert manifest["bands"] == ["red", "green", "blue", "nir"]
    assert [(c["id"], c["name"], c["color"]) for c in manifest["classes"]] == [
        (0, "other", "#a0a0a0"), (1, "water", "#1f78b4"), (2, "vegetation", "#33a02c"),
    ]  # fmt: skip
    assert manifest["normalization"]["kind"] == "standardize"
    assert (manifest["chip_size"], manifest["overlap"]) == (64, 0)
    best = max(history, key=lambda h: h["mean_iou"])
    assert manifest["training"]["best_epoch"] == best["epoch"]
    assert manifest["training"]["best_metric"] == "mean_iou"
    assert manifest["training"]["best_score"] == best["mean_iou"]
    assert manifest["training"]["epochs"] == 6 and manifest["training"]["options"]["lora"]

    settings = json.loads((lora_model / SETTINGS_FILE).read_text())
    assert settings["lora"] is True
    assert settings["band_names"] == ["red", "green", "blue", "nir"]
    assert settings["input_conv"].endswith("patch_embeddings.proj")
    assert [c["name"] for c in settings["classes"]] == ["other", "water", "vegetation"]
    assert 0 < settings["trainable_percent"] < 100
    # Normalisation is over the valid pixels of the training chips, per band.
    assert len(settings["normalization"]["mean"]) == 4
    assert 0 < settings["normalization"]["mean"][3] < 255

    adapter = lora_model / "adapter_model.safetensors"
    base_size = (land_cover.checkpoint / "model.safetensors").stat().st_size
    assert adapter.stat().st_size < base_size
    assert not (lora_model / "model.safetensors").exists()
    for key in load_file(adapter):
        assert "lora_" in key or "decode_head" in key or "patch_embeddings.proj" in key, key


def test_only_lora_weights_head_and_widened_embedding_change(land_cover, lora_model):
    # transformers 5 writes checkpoints under 4.x key names and renames them on load, so
    # the reference is the checkpoint as loaded, not the file's keys.
    classes = ClassMap.read(land_cover.classes)
    base = load_pretrained(str(land_cover.checkpoint), classes).state_dict()
    model, _ = load_for_prediction(str(lora_model), merge=False)
    state = model.state_dict()
    conv = json.loads((lora_model / SETTINGS_FILE).read_text())["input_conv"]
    unchanged = lora_trained = 0
    for key, value in state.items():
        if "lora_B" in key:
            lora_trained += int(value.abs().sum() > 0)  # peft starts B at zero
            continue
        if "lora_A" in key or "original_module" in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer", "")
        name = name.replace(".modules_to_save.default", "")
        if name.startswith("decode_head.") or name.startswith(f"{conv}."):
            if name in base and base[name].shape == value.shape and value.dtype.is_floating_point:
                assert not torch.equal(value, base[name]), f"{name} was not trained"
            continue
        assert torch.equal(value, base[name]), f"{name} changed but is not a LoRA/head weight"
        unchanged += 1
    assert lora_trained > 0 and unchanged > 20
    widened = state[f"base_model.model.{conv}.modules_to_save.default.weight"]
    assert widened.shape[1] == 4 and not torch.equal(widened[:, :3], base[f"{conv}.weight"])


def test_merged_and_unmerged_models_give_the_same_logits(lora_model):
    merged, _ = load_for_prediction(str(lora_model), merge=True)
    unmerged, _ = load_for_prediction(str(lora_model), merge=False)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    pixels = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(pixel_values=pixels).logits,
            unmerged(pixel_values=pixels).logits,
            atol=1e-4,
            rtol=1e-4,
        )


def test_predict_maps_the_scene_with_class_names_in_raster_and_polygons(
    land_cover, lora_model, invoke
):
    out = land_cover.root / "predicted" / "landcover.tif"
    vector = land_cover.root / "predicted" / "landcover.gpkg"
    invoke(
        "predict", land_cover.scene, "-o", out, "--backend", "segformer", "--model", lora_model,
        "--bands", "naip", "--size", 64, "--overlap", 16, "--vector", vector, "-q",
    )  # fmt: skip
    with rasterio.open(out) as mask, rasterio.open(land_cover.scene) as src:
        assert mask.transform == src.transform and mask.crs == src.crs
        assert (mask.width, mask.height) == (src.width, src.height)
        predicted = mask.read(1)
        tags = json.dumps(mask.tags())
    assert "water" in tags and "vegetation" in tags
    assert set(np.unique(predicted)) <= {0, 1, 2}
    # Better than calling every pixel the most common class.
    majority = np.bincount(land_cover.label.ravel()).max() / land_cover.label.size
    assert (predicted == land_cover.label).mean() > majority + 0.1
    polygons = pyogrio.read_dataframe(vector, layer="classes")
    assert set(polygons["class_name"]) <= {"other", "water", "vegetation"}
    assert "water" in set(polygons["class_name"])
    assert polygons.crs.to_epsg() == 26914


def test_predict_on_a_chip_needs_no_bands_and_refuses_another_backend(
    land_cover, lora_model, invoke
):
    # Chips written by geoseg tile name their bands; the model knows its own.
    chip = sorted((land_cover.chips / "images").glob("*.tif"))[0]
    out = land_cover.root / "chip-mask.tif"
    invoke("predict", chip, "-o", out, "--backend", "segformer", "--model", lora_model, "-q")
    with rasterio.open(out) as mask:
        assert set(np.unique(mask.read(1))) <= {0, 1, 2}
    # hf is the same code under its new name: it reads segformer's model folders.
    same = land_cover.root / "chip-mask-hf.tif"
    invoke("predict", chip, "-o", same, "--backend", "hf", "--model", lora_model, "-q")
    with rasterio.open(out) as a, rasterio.open(same) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    refused = invoke(
        "predict", chip, "-o", land_cover.root / "x.tif", "--backend", "sam", "--model",
        lora_model, expect=2,
    )  # fmt: skip
    assert refused.output.strip().splitlines() == [
        f"geoseg: error: {lora_model}: the model was trained by backend 'segformer', not "
        "'sam'; use --backend segformer"
    ]


class PowerCut(Exception):
    """Stands in for a crash or Ctrl-C in the middle of training."""


def test_resume_continues_where_the_interrupted_run_stopped(land_cover, invoke, monkeypatch):
    from geoseg import training as train

    common = [
        land_cover.chips, "--backend", "segformer", "--model", land_cover.checkpoint,
        "--batch-size", 4, "--lr", 0.005, "--epochs", 2, "-q",
    ]  # fmt: skip
    straight = land_cover.root / "straight"
    invoke("train", *common, "-o", straight)

    interrupted = land_cover.root / "interrupted"
    validate, calls = train._validate, []

    def validate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise PowerCut("the power went out during epoch 2")
        return validate(*args, **kwargs)

    monkeypatch.setattr(train, "_validate", validate_then_crash)
    crashed = invoke("train", *common, "-o", interrupted, expect=1)
    assert isinstance(crashed.exception, PowerCut)
    monkeypatch.setattr(train, "_validate", validate)
    state = json.loads((interrupted / "checkpoint" / "geoseg_state.json").read_text())
    assert state["epoch"] == 1

    refused = invoke("train", *common, "-o", interrupted, expect=2)
    assert "--resume" in refused.output
    invoke("train", *common, "-o", interrupted, "--resume")
    resumed = json.loads((interrupted / "history.json").read_text())
    expected = json.loads((straight / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2]
    # Optimizer, scheduler and random states came back: the run matches an uninterrupted one.
    for got, want in zip(resumed, expected, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)


def test_full_fine_tuning_saves_a_plain_model_that_predicts_on_a_chip_batch(land_cover, invoke):
    model_dir = land_cover.root / "model-full"
    result = invoke(
        "train", land_cover.chips, "--backend", "segformer", "-o", model_dir,
        "--model", land_cover.checkpoint, "--epochs", 1, "--batch-size", 4,
        "--option", "lora=false",
    )  # fmt: skip
    # The training core's per-epoch line, the same as every other backend's.
    (line,) = [line for line in result.output.splitlines() if ": train loss " in line]
    assert line.startswith("epoch 1/1: train loss ") and "val loss" in line
    assert "mean IoU" in line and "vegetation IoU" in line
    settings = json.loads((model_dir / SETTINGS_FILE).read_text())
    assert settings["lora"] is False and settings["trainable_percent"] == 100
    assert (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "adapter_model.safetensors").exists()
    assert json.loads((model_dir / "config.json").read_text())["num_channels"] == 4

    backend = create_backend("segformer")
    assert backend.capabilities().trains and not backend.capabilities().bands
    backend.load(str(model_dir), "cpu")
    assert backend.loaded_capabilities().bands == ("red", "green", "blue", "nir")
    assert backend.classes().names == ("other", "water", "vegetation")
    chips = ChipDataset.open(land_cover.chips)
    images, valid = zip(*(chips.read_image(r) for r in chips.records[:3]), strict=True)
    batch = ChipBatch(
        # The source order differs from the model's: the backend picks bands by name.
        images=np.stack(images).astype(np.float32)[:, [3, 0, 1, 2]],
        valid=np.stack(valid),
        band_names=("nir", "red", "green", "blue"),
        tiles=(),
    )
    probabilities = backend.predict(batch)
    assert probabilities.shape == (3, 3, 64, 64) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_bad_options_and_missing_weights_are_one_line_errors(land_cover, monkeypatch, invoke):
    import huggingface_hub.constants

    out = land_cover.root / "never"
    result = invoke(
        "train", land_cover.chips, "--backend", "segformer", "-o", out, "--option", "r=0",
        expect=2,
    )  # fmt: skip
    assert "r must be a positive integer" in result.output
    # Offline, as on this machine, but fail fast instead of retrying the hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = invoke(
        "train", land_cover.chips, "--backend", "segformer", "-o", out,
        "--model", "nvidia/mit-b0", "-q", expect=2,
    )  # fmt: skip
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:")
    assert "hf download nvidia/mit-b0" in lines[0]
    assert "Traceback" not in result.output and not out.exists()


def test_two_processes_under_accelerate_launch_write_one_model(land_cover):
    """The loop runs unchanged data-parallel: 2 CPU processes (gloo), one model written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate launcher not installed")
    out = land_cover.root / "model-ddp"
    # accelerate 1.x runs --cpu jobs in a single process; --multi_gpu goes through
    # torch.distributed.run, and the backend asks Accelerate for a CPU (gloo) group.
    command = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "geoseg", "train",
        land_cover.chips, "--backend", "segformer", "-o", out, "--model", land_cover.checkpoint,
        "--epochs", "1", "--batch-size", "2", "--device", "cpu", "-q",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoint").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert json.loads((out / SETTINGS_FILE).read_text())["lora"] is True
    assert not list(out.glob(".*part*"))
