"""The training core, through the trainable example backend of docs/plugins.md.

The example (a per-pixel classifier) trains in a second on real NAIP chips, so the
core's behaviour is tested through ``geoseg train`` as a plugin author's backend sees it:
history schema, per-epoch lines, manifest, resume, early stopping, the held-out split,
and ``geoseg predict --model`` without ``--bands``.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geoseg.classes import ClassMap
from geoseg.plugins import get_plugin_manager

PLUGINS_DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
NAIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "naip_rgbn_2020.tif"
CHIP = 32


def example_source() -> str:
    match = re.search(
        r"<!-- example: geoseg_pixelclass/__init__.py -->\n```python\n(.*?)^```",
        PLUGINS_DOC.read_text(),
        re.S | re.M,
    )
    assert match, "docs/plugins.md lost its marked training example"
    return match.group(1)


@pytest.fixture
def pixelclass(monkeypatch):
    """The documented trainable backend, imported as ``geoseg_pixelclass`` and registered."""
    module = types.ModuleType("geoseg_pixelclass")
    monkeypatch.setitem(sys.modules, "geoseg_pixelclass", module)
    exec(compile(example_source(), "geoseg_pixelclass", "exec"), module.__dict__)
    pm = get_plugin_manager()
    pm.register(module, name="test-training-pixelclass")
    yield module
    pm.unregister(name="test-training-pixelclass")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 128 px NAIP crop with NDWI water labels (background/water)."""
    if not NAIP.exists():
        pytest.skip("../shared/data samples not present")
    root = tmp_path_factory.mktemp("training")
    window = Window(300, 200, 4 * CHIP, 4 * CHIP)
    with rasterio.open(NAIP) as src:
        data = src.read(window=window)
        profile = src.profile | dict(
            width=window.width, height=window.height, transform=src.window_transform(window)
        )
    green, nir = data[1].astype(float), data[3].astype(float)
    water = ((green - nir) / np.maximum(green + nir, 1) > 0).astype(np.uint8)
    assert 0.1 < water.mean() < 0.9
    image, labels = root / "scene.tif", root / "labels.tif"
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(labels, "w", **(profile | dict(count=1, nodata=255))) as dst:
        dst.write(water[None])
    classes = root / "classes.json"
    classes.write_text(
        json.dumps(
            [{"id": 0, "name": "background"}, {"id": 1, "name": "water", "color": "#0000ff"}]
        )
    )
    return types.SimpleNamespace(
        root=root, image=image, labels=labels, classes=classes, water=water
    )


def tile(invoke, scene, out: Path, val_fraction: float) -> Path:
    if not out.exists():
        invoke(
            "tile", scene.image, "-o", out, "--bands", "naip", "--size", CHIP, "--overlap", 0,
            "--labels", scene.labels, "--classes", scene.classes, "--val-fraction", val_fraction,
            "-q",
        )  # fmt: skip
    return out


def train(invoke, chips, out, *extra, expect=0):
    return invoke(
        "train", chips, "--backend", "pixelclass", "-o", out, "--batch-size", 4,
        "--lr", 0.05, "--device", "cpu", *extra, expect=expect,
    )  # fmt: skip


def test_training_writes_one_history_schema_a_manifest_and_per_epoch_lines(
    pixelclass, scene, invoke, tmp_path
):
    chips = tile(invoke, scene, scene.root / "chips", 0.25)
    out = tmp_path / "model"
    result = train(invoke, chips, out, "--epochs", 3)
    lines = [line for line in result.output.splitlines() if ": train loss " in line]
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3: train loss ")
    assert "val loss" in lines[0] and "mean IoU" in lines[0] and "water IoU" in lines[0]

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for entry in history:
        assert entry["validated"] and 0 <= entry["mean_iou"] <= 1
        assert set(entry["per_class"]) == {"background", "water"}
        assert set(entry["per_class"]["water"]) == {"iou", "f1", "precision", "recall"}
        assert entry["val_loss"] > 0 and entry["steps"] == 3  # 12 train chips, 4 a batch
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"

    manifest = json.loads((out / "geoseg_model.json").read_text())
    assert manifest["backend"]["name"] == "pixelclass"
    assert manifest["bands"] == ["red", "green", "blue", "nir"]
    assert ClassMap.from_json(manifest["classes"]).names == ("background", "water")
    assert manifest["classes"][1]["color"] == "#0000ff"
    assert manifest["normalization"]["kind"] == "standardize"
    assert len(manifest["normalization"]["mean"]) == 4
    assert (manifest["chip_size"], manifest["overlap"]) == (CHIP, 0)
    training = manifest["training"]
    assert (training["epochs"], training["batch_size"], training["lr"]) == (3, 4, 0.05)
    best = max(history, key=lambda h: h["mean_iou"])
    assert (training["best_epoch"], training["best_metric"]) == (best["epoch"], "mean_iou")
    assert manifest["backend_settings"] == {"hidden": 16}
    # The weights went to safetensors; the checkpoint holds no pickled model.
    assert (out / "pixelclass.safetensors").is_file()
    assert (out / "checkpoint" / "model.safetensors").is_file()

    shown = invoke("backends", "pixelclass", "--model", out).output
    assert "bands: red, green, blue, nir" in shown and "1 water" in shown

    # A chip written by geoseg tile names its bands: no --bands needed.
    chip = next((chips / "images").glob("*.tif"))
    mask = tmp_path / "mask.tif"
    invoke("predict", chip, "-o", mask, "--backend", "pixelclass", "--model", out, "-q")
    with rasterio.open(mask) as predicted, rasterio.open(chip) as source:
        assert predicted.transform == source.transform
        row, col = (int(v) for v in re.findall(r"_r(\d+)_c(\d+)", chip.stem)[0])
        truth = scene.water[row : row + CHIP, col : col + CHIP]
        assert (predicted.read(1) == truth).mean() > 0.8


def test_a_model_of_another_backend_and_unmatched_bands_are_one_line(
    pixelclass, scene, invoke, tmp_path
):
    chips = tile(invoke, scene, scene.root / "chips", 0.25)
    out = tmp_path / "model"
    train(invoke, chips, out, "--epochs", 1, "-q")
    result = invoke(
        "predict", scene.image, "-o", tmp_path / "m.tif", "--backend", "segformer",
        "--model", out, expect=2,
    )  # fmt: skip
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "trained by backend 'pixelclass', not 'segformer'; use --backend pixelclass" in message
    # The scene's fourth band has no name: the model's nir cannot be matched.
    result = invoke(
        "predict", scene.image, "-o", tmp_path / "m.tif", "--backend", "pixelclass",
        "--model", out, expect=2,
    )  # fmt: skip
    assert len(result.output.strip().splitlines()) == 1 and "--bands" in result.output


class PowerCut(Exception):
    """Stands in for a crash or Ctrl-C in the middle of training."""


def test_resume_continues_like_an_uninterrupted_run(
    pixelclass, scene, invoke, tmp_path, monkeypatch
):
    from geoseg import training

    chips = tile(invoke, scene, scene.root / "chips", 0.25)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(invoke, chips, straight, "--epochs", 3, "-q")
    validate, calls = training._validate, []

    def validate_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise PowerCut("the power went out during epoch 3")
        return validate(*args, **kwargs)

    monkeypatch.setattr(training, "_validate", validate_then_crash)
    crashed = train(invoke, chips, resumed, "--epochs", 3, "-q", expect=1)
    assert isinstance(crashed.exception, PowerCut)
    monkeypatch.setattr(training, "_validate", validate)
    refused = train(invoke, chips, resumed, "--epochs", 3, "-q", expect=2)
    assert "--resume" in refused.output
    result = train(invoke, chips, resumed, "--epochs", 3, "--resume")
    assert "resuming after epoch 2 of 3" in result.output
    got = json.loads((resumed / "history.json").read_text())
    want = json.loads((straight / "history.json").read_text())
    assert [h["epoch"] for h in got] == [1, 2, 3]
    # Optimizer, schedule, sampler and random states came back: the same run.
    for a, b in zip(got, want, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
    again = train(invoke, chips, resumed, "--epochs", 3, "--resume")
    assert "already trained for 3 epochs" in again.output


def test_without_val_chips_a_seeded_share_is_held_out_never_trained_on(
    pixelclass, scene, invoke, tmp_path
):
    chips = tile(invoke, scene, scene.root / "chips-noval", 0)
    out = tmp_path / "model"
    result = train(invoke, chips, out, "--epochs", 1, "--option", "val_fraction=0.25", "-q")
    warnings = [line for line in result.output.splitlines() if "holding out" in line]
    assert len(warnings) == 1 and "holding out 4 of 16 training chips" in warnings[0]
    state = json.loads((out / "checkpoint" / "geoseg_state.json").read_text())
    assert len(state["val_chips"]) == 4 and len(state["train_chips"]) == 12
    assert not set(state["val_chips"]) & set(state["train_chips"])
    history = json.loads((out / "history.json").read_text())
    assert history[0]["validated"] and history[0]["mean_iou"] is not None


def test_patience_stops_a_run_that_no_longer_improves(pixelclass, scene, invoke, tmp_path):
    chips = tile(invoke, scene, scene.root / "chips", 0.25)
    out = tmp_path / "model"
    # A learning rate this small leaves the predictions, and so the mean IoU, unchanged.
    result = invoke(
        "train", chips, "--backend", "pixelclass", "-o", out, "--epochs", 6, "--lr", 1e-12,
        "--device", "cpu", "--option", "patience=2", "--option", "augment=false",
    )  # fmt: skip
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "stopping early: mean_iou has not improved for 2 epochs" in result.output
    assert json.loads((out / "geoseg_model.json").read_text())["training"]["best_epoch"] == 1
    again = invoke(
        "train", chips, "--backend", "pixelclass", "-o", out, "--epochs", 6, "--resume",
        "--device", "cpu", "--option", "patience=2",
    )  # fmt: skip
    assert "training stopped early after epoch 3" in again.output
    assert len(json.loads((out / "history.json").read_text())) == 3


def test_training_options_are_validated_by_name(pixelclass, scene, invoke, tmp_path):
    chips = tile(invoke, scene, scene.root / "chips", 0.25)
    for pair, words in (
        ("warmup=1.5", "option warmup is a fraction"),
        ("monitor=loss", "monitor: must be one of"),
        ("hidden=-1", "hidden must be >= 0"),
    ):
        result = train(invoke, chips, tmp_path / "never", "--option", pair, expect=2)
        assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_augmentation_moves_labels_and_valid_pixels_with_the_image():
    from geoseg.training import augment_chip

    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, (8, 8)).astype(np.int64)
    image = np.stack([label, label * 2]).astype(np.float32)
    valid = np.ones((8, 8), bool)
    valid[0] = False
    image[:, ~valid] = 0
    moved = 0
    for _ in range(8):
        out_image, out_label, out_valid = augment_chip(image, label, valid, rng, jitter=0)
        assert np.array_equal(out_image[0], out_label * out_valid)
        assert out_valid.sum() == valid.sum()
        moved += not np.array_equal(out_label, label)
    assert moved > 0
    jittered, _, jitter_valid = augment_chip(image, label, valid, rng, jitter=0.5)
    assert (jittered[:, ~jitter_valid] == 0).all()
    assert not np.allclose(jittered[1], 2 * jittered[0])  # bands jitter independently


def test_scores_come_from_the_evaluate_implementation():
    import torch

    from geoseg.training import confusion_matrix, validation_scores

    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = confusion_matrix(predicted, target, 3).numpy()
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = validation_scores(confusion, ClassMap.from_names(["other", "water", "trees"]))
    assert scores["per_class"]["other"]["iou"] == pytest.approx(1 / 3, abs=1e-6)
    assert scores["per_class"]["water"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["per_class"]["trees"]["recall"] == pytest.approx(0.5)
    assert scores["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 0.5) / 3, abs=1e-6)
    assert scores["overall_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    empty = validation_scores(np.zeros((2, 2)), ClassMap.from_names(["a", "b"]))
    assert empty["mean_iou"] is None and empty["per_class"]["a"]["iou"] is None


def test_the_schedule_warms_up_then_decays_to_zero():
    from geoseg.training import lr_factor

    cosine = lr_factor(0.1, 100, "cosine")
    assert [round(cosine(i), 3) for i in (0, 9)] == [round(1 / 11, 3), round(10 / 11, 3)]
    assert cosine(10) == pytest.approx(1.0) and cosine(100) == pytest.approx(0.0)
    assert lr_factor(0.0, 10, "linear")(5) == pytest.approx(0.5)


def test_a_version_1_backend_is_refused_with_the_upgrade_path():
    from geoseg.backend import Backend
    from geoseg.plugins import _check_backend

    class OldBackend(Backend):
        name = "old"
        contract_version = 1

    reason = _check_backend(OldBackend, "geoseg-old")
    assert "written for geoseg backend contract v1; this geoseg speaks v2" in reason
    assert "upgrade the plugin" in reason and "docs/plugins.md" in reason
