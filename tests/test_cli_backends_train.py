"""``geoseg backends`` and ``geoseg train`` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geoseg.backend import Capabilities, TrainSettings


def test_backends_lists_spectral_with_its_distribution(invoke):
    result = invoke("backends")
    header, *rows = result.output.splitlines()
    assert header.split() == ["NAME", "VERSION", "DISTRIBUTION", "CAPABILITIES", "DESCRIPTION"]
    spectral = next(row for row in rows if row.startswith("spectral "))
    assert "geoseg-spectral" in spectral
    assert "binary chip=512" in spectral  # index=auto reads the bands each raster has

    records = json.loads(invoke("backends", "--json").output)
    (record,) = [r for r in records["backends"] if r["name"] == "spectral"]
    assert record["distribution"] == "geoseg-spectral"
    assert record["capabilities"]["trains"] is False
    index = next(option for option in record["options"] if option["name"] == "index")
    assert index["type"] == "auto|multi|ndwi|mndwi|ndvi|hsv" and index["default"] == "auto"
    # Per-option help from the field; a backend that does not train: predict only.
    assert index["help"].startswith("The method: auto picks it from the bands")
    assert {option["applies"] for option in record["options"]} == {"predict"}
    assert "index=auto" in record["details"]


def test_backends_name_shows_options_and_fake_backend(invoke, fake_backend):
    result = invoke("backends")
    fake = next(row for row in result.output.splitlines() if row.startswith("fake "))
    assert "binary chip=64" in fake and "Test backend" in fake
    details = invoke("backends", "fake").output
    assert "classes: background, water" in details
    assert "threshold=2048.0  (float)" in details
    result = invoke("backends", "nope", expect=2)
    assert "unknown backend 'nope'" in result.output


@pytest.fixture
def chips(make_raster, invoke, tmp_path):
    """A labelled chip set of a 64x64 NAIP-like raster, cut by geoseg tile into 32 px chips."""
    image = make_raster("image.tif", bands=4, dtype="uint16")
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 40:] = 1
    label_path = make_raster("labels.tif", bands=1, dtype="uint8", data=labels[None])
    out = tmp_path / "chips"
    invoke(
        "tile",
        image,
        "-o",
        out,
        "--bands",
        "naip",
        "--size",
        "32",
        "--overlap",
        "0",
        "--labels",
        label_path,
        "-q",
    )
    return out


@pytest.fixture
def trainer(fake_backend, register_backend):
    """A trainable fake backend "fake-trainer" that records the settings it was given."""

    class FakeTrainer(fake_backend):
        name = "fake-trainer"
        description = "Test backend that trains"
        seen: list = []

        @classmethod
        def capabilities(cls) -> Capabilities:
            return Capabilities(
                binary=True, classes=("background", "water"), trains=True, bands=("green", "nir")
            )

        def train(self, dataset, settings: TrainSettings) -> Path:
            labels = [dataset.read_label(r) for r in dataset.split("train") + dataset.split("val")]
            FakeTrainer.seen.append((dataset, settings, self.options, labels))
            settings.output_dir.mkdir(parents=True, exist_ok=True)
            (settings.output_dir / "model.json").write_text(json.dumps({"epochs": settings.epochs}))
            return settings.output_dir

    register_backend(FakeTrainer)
    return FakeTrainer


def test_train_hands_the_chip_set_and_settings_to_the_backend(
    invoke, chips, trainer, tmp_path, monkeypatch
):
    out = tmp_path / "model"
    result = invoke(
        "train",
        chips,
        "--backend",
        "fake-trainer",
        "-o",
        out,
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "0.001",
        "--device",
        "cpu",
        "--seed",
        "7",
        "--option",
        "threshold=5",
        "-q",
    )
    assert result.output.strip() == f"model saved to {out}"
    dataset, settings, options, labels = trainer.seen[-1]
    assert settings == TrainSettings(
        output_dir=out,
        model=None,
        epochs=3,
        batch_size=2,
        lr=0.001,
        device="cpu",
        resume=False,
        seed=7,
        progress=settings.progress,  # the CLI's progress channel (-q: warnings only)
    )
    assert callable(settings.progress.epoch)
    assert options.threshold == 5.0
    assert dataset.band_names == ("red", "green", "blue", "nir")
    assert len(labels) == 4 and sum(int((label == 1).sum()) for label in labels) == 64 * 24
    assert json.loads((out / "model.json").read_text()) == {"epochs": 3}

    result = invoke("train", chips, "--backend", "fake-trainer", "-o", out, expect=2)
    assert "folder is not empty; pass --resume" in result.output
    invoke("train", chips, "--backend", "fake-trainer", "-o", out, "--resume", "-q")
    assert trainer.seen[-1][1].resume is True
    # Later ranks of a distributed run see the folder the first one is writing.
    monkeypatch.setenv("RANK", "1")
    invoke("train", chips, "--backend", "fake-trainer", "-o", out, "-q")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--backend", "spectral"],
            "geoseg: error: backend 'spectral' does not train; backends that train: fake-trainer",
        ),
        (
            ["--backend", "fake-trainer", "--option", "scale=0"],
            "geoseg: error: backend 'fake-trainer': invalid option: scale must be > 0",
        ),
        (
            ["--backend", "fake-trainer", "--option", "sclae=1"],
            "unknown option 'sclae' (in --option sclae=1); valid options: threshold, scale",
        ),
        (
            ["--backend", "fake-trainer", "--option", "scale=big"],
            "--option scale: must be a number, got 'big'",
        ),
        (["--backend", "nope"], "unknown backend 'nope'; available: "),
    ],
)
def test_train_refuses_with_one_line(invoke, chips, trainer, tmp_path, args, message):
    result = invoke("train", chips, "-o", tmp_path / "model", *args, expect=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "model").exists()


def test_train_needs_a_chip_set(invoke, trainer, tmp_path):
    result = invoke("train", tmp_path, "--backend", "fake-trainer", "-o", tmp_path / "m", expect=2)
    assert "not a chip dataset" in result.output and "geoseg tile" in result.output


def test_python_dash_m_geoseg_train_runs_the_same_command(tmp_path):
    env = {**os.environ, "GEOSEG_PLUGINS": "spectral"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoseg",
            "train",
            str(tmp_path),
            "--backend",
            "spectral",
            "-o",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "geoseg: error: backend 'spectral' does not train; no installed backend trains "
        "(see geoseg backends)"
    )


def test_backends_with_every_plugin_switched_off(invoke, monkeypatch):
    from geoseg.plugins import reset_plugin_manager

    monkeypatch.setenv("GEOSEG_PLUGINS", "")
    reset_plugin_manager()
    try:
        output = invoke("backends").output
        assert output.startswith("no backends installed")
        assert "GEOSEG_PLUGINS='' restricts which plugins load" in output
        assert json.loads(invoke("backends", "--json").output) == {"backends": [], "broken": []}
    finally:
        monkeypatch.undo()
        reset_plugin_manager()
