"""SAM checkpoints geoseg must not load: PyTorch pickles are refused before any unpickling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geoseg.errors import WeightsError


class _Payload:
    """Unpickling this creates the folder named by ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"weight": _Payload(marker)}, path)
    return path


def test_pickle_checkpoint_folder_is_refused_unread(tmp_path):
    from geoseg_sam.model import load_sam

    folder = tmp_path / "sam"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sam"}))
    marker = tmp_path / "unpickled"
    _pickle(folder / "pytorch_model.bin", marker)
    with pytest.raises(WeightsError, match="safetensors only") as caught:
        load_sam(str(folder))
    assert "pytorch_model.bin" in str(caught.value) and "save_pretrained" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "optimizer.bin"])
def test_pickle_file_given_as_model_is_refused_unread(tmp_path, name):
    from geoseg_sam.model import load_sam

    marker = tmp_path / "unpickled"
    path = _pickle(tmp_path / name, marker)
    with pytest.raises(WeightsError, match=f"{name}: a PyTorch pickle"):
        load_sam(str(path))
    assert not marker.exists()
