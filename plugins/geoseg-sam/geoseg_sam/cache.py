"""The embedding cache: frozen-encoder image embeddings stored once per chip on disk.

With the vision encoder frozen, a chip's embedding never changes during training, and
computing it is nearly all of the cost of a training step. Entries are safetensors files
keyed by a hash of the chip's 8-bit model input (so band choice and stretch count), the
checkpoint identity and the input size. Writes are atomic (temporary name, then rename),
so several training processes can share one cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CACHE_ENV = "GEOSEG_SAM_CACHE"
#: Stored as float16: half the disk, and far below the noise of decoder training.
STORED_DTYPE = torch.float16


def default_cache_dir() -> Path:
    """``$GEOSEG_SAM_CACHE``, else ``$XDG_CACHE_HOME/geoseg/sam-embeddings`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geoseg" / "sam-embeddings"


class EmbeddingCache:
    """Image embeddings on disk under ``folder`` (None: no cache, always compute)."""

    def __init__(self, folder: Path | None, checkpoint_id: str, input_size: int) -> None:
        self.folder = Path(folder) / f"{checkpoint_id}-{input_size}" if folder else None
        self.checkpoint_id = checkpoint_id
        self.input_size = input_size
        self.hits = 0
        self.misses = 0

    def key(self, image: np.ndarray) -> str:
        """The key of one uint8 chip (3, H, W) as fed to the model."""
        digest = hashlib.sha256()
        digest.update(
            f"{self.checkpoint_id}:{self.input_size}:{image.shape}:{image.dtype}".encode()
        )
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored embedding (C, h, w) or None."""
        if self.folder is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["embedding"]
        except (OSError, KeyError, SafetensorError):
            log.warning("embedding cache entry %s is unreadable; recomputing it", path)
            return None

    def put(self, key: str, embedding: torch.Tensor) -> None:
        """Store one embedding (C, h, w)."""
        if self.folder is None:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".part", dir=path.parent)
        os.close(handle)
        try:
            save_file(
                {"embedding": embedding.detach().to("cpu", STORED_DTYPE).contiguous()},
                temporary,
                metadata={"checkpoint": self.checkpoint_id, "input_size": str(self.input_size)},
            )
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def embeddings(
        self,
        images: np.ndarray,
        encode: Callable[[np.ndarray], torch.Tensor],
        device: torch.device | str,
    ) -> torch.Tensor:
        """Embeddings (N, C, h, w) float32 on ``device`` for uint8 chips (N, 3, H, W).

        Chips found in the cache are read; the rest go through ``encode`` in one batch
        and are stored.
        """
        keys = [self.key(image) for image in images] if self.folder is not None else []
        found: list[torch.Tensor | None] = [self.get(k) for k in keys] or [None] * len(images)
        missing = [i for i, e in enumerate(found) if e is None]
        self.hits += len(images) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = encode(images[missing])
            for j, i in enumerate(missing):
                found[i] = computed[j]
                if keys:
                    self.put(keys[i], computed[j])
        return torch.stack([e.to(device, torch.float32) for e in found])
