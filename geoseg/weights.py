"""Model weights for backends: never unpickled, and no waiting on an unreachable hub.

Part of the plugin contract (docs/plugins.md): backends that load Hugging Face checkpoints
call ``refuse_pickles`` on every local path a user gives and ``hub_unreachable`` before
asking the hub for a checkpoint that is not in the local cache.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from geoseg.errors import WeightsError

__all__ = [
    "refuse_pickles",
    "hub_unreachable",
]

#: Seconds a probe of the hub may take before geoseg calls it unreachable.
HUB_PROBE_TIMEOUT = 3.0
#: Suffixes of PyTorch pickle files (weights, optimizer states, whole checkpoints).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def hub_unreachable() -> bool:
    """True when offline mode is on or the hub does not answer within a few seconds.

    Asking transformers anyway costs about 50 s of retries and a screen of HTTP errors.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT)).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), HUB_PROBE_TIMEOUT).close()
    except OSError:
        return True
    return False


def refuse_pickles(path: Path, *, model_class: str = "AutoModel") -> None:
    """Raise ``WeightsError`` for weights that are PyTorch pickles, never loading them.

    A pickle can run code when it is loaded; geoseg loads safetensors only. ``path`` is a
    file given as the model, or a model folder holding pickles and no safetensors.
    ``model_class``: the transformers class whose ``from_pretrained`` / ``save_pretrained``
    converts such a folder, named in the message.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        found, folder = path, path.parent
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if not pickles:
            return
        found, folder = pickles[0], path
    else:
        return
    if (folder / "config.json").is_file():
        fix = (
            f'where you trust the file, convert the folder: python -c "from transformers '
            f"import {model_class} as M; M.from_pretrained('{folder}')"
            f".save_pretrained('{folder}-safe')\" and pass --model {folder}-safe"
        )
    else:
        fix = f"pass --model a folder written by {model_class}.save_pretrained or geoseg train"
    raise WeightsError(
        f"{found}: a PyTorch pickle; geoseg loads safetensors only (a pickle can run code "
        f"when loaded); {fix}"
    )
