"""Checkpoints geoseg must not load: pickles, and hub ids it cannot reach.

A pickle runs code when it is loaded, so the tests' pickles write a marker file when
unpickled: the marker must never appear.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NAIP = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "naip_rgbn_2020.tif"


class _Payload:
    """Unpickling this creates the file named by ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"weight": _Payload(marker)}, path)
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def pickled_folder(tmp_path, tiny_config) -> tuple[Path, Path]:
    """A model folder whose weights are pytorch_model.bin, and the marker its pickle makes."""
    from transformers import SegformerForSemanticSegmentation

    folder = tmp_path / "pickled"
    SegformerForSemanticSegmentation(tiny_config(num_labels=2)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    _pickle(folder / "pytorch_model.bin", marker)
    return folder, marker


@pytest.mark.skipif(not NAIP.exists(), reason="../shared/data samples not present")
def test_pickle_model_folder_is_refused_without_loading_it(invoke, pickled_folder, tmp_path):
    folder, marker = pickled_folder
    result = invoke("predict", NAIP, "-o", tmp_path / "m.tif", "--backend", "segformer",
                    "--model", folder, "-q", expect=2)  # fmt: skip
    line = one_line_error(result)
    assert "pytorch_model.bin" in line and "safetensors only" in line
    assert "save_pretrained" in line  # how to convert
    assert not marker.exists() and not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("name", ["optimizer.bin", "optimizer.pt", "pytorch_model.bin"])
@pytest.mark.skipif(not NAIP.exists(), reason="../shared/data samples not present")
def test_pickle_file_given_as_model_is_refused(invoke, tmp_path, name):
    marker = tmp_path / "unpickled"
    path = _pickle(tmp_path / name, marker)
    result = invoke("predict", NAIP, "-o", tmp_path / "m.tif", "--backend", "segformer",
                    "--model", path, "-q", expect=2)  # fmt: skip
    line = one_line_error(result)
    assert name in line and "safetensors only" in line
    assert not marker.exists()


def test_uncached_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    from geoseg_segformer.model import load_pretrained
    from huggingface_hub import constants

    from geoseg.errors import WeightsError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    began = time.perf_counter()
    with pytest.raises(WeightsError, match="hf download geoseg-tests/no-such-segformer"):
        load_pretrained("geoseg-tests/no-such-segformer")
    assert time.perf_counter() - began < 5
