"""The chip dataset that ``geoseg tile`` writes and training reads.

Layout of a chip dataset folder::

    images/<stem>_r<row>_c<col>.tif   georeferenced image chips (source dtype, bands named)
    labels/<same name>.tif            uint8 class ids, 255 = ignore (only with --labels)
    tiles.gpkg                        layer "tiles": one footprint polygon per chip with
                                      chip, label, source, row, col, valid_fraction, split
    dataset.json                      version, sources, CRS, resolution, chip size, overlap,
                                      band names, classes, counts
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.classes import ClassMap
from geoseg.errors import InputFileError

DATASET_FILE = "dataset.json"
TILES_FILE = "tiles.gpkg"
TILES_LAYER = "tiles"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ChipRecord:
    """One chip of a dataset: file paths (absolute), split and grid position."""

    name: str
    image: Path
    label: Path | None
    split: str
    source: str
    row: int
    col: int
    valid_fraction: float


class ChipDataset:
    """A chip dataset folder, opened for reading."""

    def __init__(self, root: Path, info: dict, records: list[ChipRecord]) -> None:
        self.root = root
        self.info = info
        self.records = records
        self.band_names: tuple[str, ...] = tuple(info["bands"])
        self.classes = ClassMap.from_json(info["classes"]) if info.get("classes") else None
        self.chip_size: int = int(info["chip_size"])

    @classmethod
    def open(cls, root: str | Path) -> ChipDataset:
        import pyogrio

        root = Path(root)
        meta = root / DATASET_FILE
        if not meta.is_file():
            raise InputFileError(
                f"{root}: not a chip dataset (no {DATASET_FILE}); make one with "
                f"geoseg tile SRC -o {root} --labels LABELS"
            )
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{meta}: unreadable ({exc}); re-run geoseg tile") from None
        tiles = root / TILES_FILE
        if not tiles.is_file():
            raise InputFileError(f"{root}: {TILES_FILE} is missing; re-run geoseg tile")
        table = pyogrio.read_dataframe(tiles, layer=TILES_LAYER, read_geometry=False)
        records = []
        for row in table.itertuples(index=False):
            label = getattr(row, "label", None)
            records.append(
                ChipRecord(
                    name=Path(row.chip).stem,
                    image=root / row.chip,
                    label=root / label if isinstance(label, str) and label else None,
                    split=str(row.split),
                    source=str(row.source),
                    row=int(row.row),
                    col=int(row.col),
                    valid_fraction=float(row.valid_fraction),
                )
            )
        return cls(root, info, records)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def has_labels(self) -> bool:
        return any(r.label is not None for r in self.records)

    def split(self, name: str) -> list[ChipRecord]:
        """Records of the ``train`` or ``val`` split."""
        return [r for r in self.records if r.split == name]

    def read_image(self, record: ChipRecord) -> tuple[np.ndarray, np.ndarray]:
        """Chip pixels (bands, rows, cols) in the source dtype and valid mask (rows, cols)."""
        from rasterio.windows import Window

        from geoseg.raster import open_raster

        with open_raster(record.image, list_to_spec(self.band_names)) as chip:
            return chip.read(Window(0, 0, chip.width, chip.height))

    def read_label(self, record: ChipRecord) -> np.ndarray:
        """Class ids (rows, cols) uint8, 255 = ignore."""
        import rasterio

        if record.label is None:
            raise InputFileError(
                f"{self.root}: chip {record.name} has no label; tile with --labels to train"
            )
        with rasterio.open(record.label) as src:
            return src.read(1)


def list_to_spec(names: tuple[str, ...] | list[str]) -> str:
    """An explicit band mapping (``red=1,green=2``) for bands named in file order."""
    return ",".join(f"{name}={i}" for i, name in enumerate(names, start=1))
