"""The chip dataset that ``geoseg tile`` writes and training reads.

Layout of a chip dataset folder::

    images/<stem>_r<row>_c<col>.tif   georeferenced image chips (source dtype, bands named)
    labels/<same name>.tif            uint8 class ids, 255 = ignore (only with --labels)
    tiles.gpkg                        layer "tiles": one footprint polygon per chip with
                                      chip, label, source, row, col, valid_fraction, split
                                      (and chip_class, chip_class_name: one class per
                                      chip, with --chip-labels or --class-folders)
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

__all__ = [
    "ChipDataset",
    "ChipRecord",
]

DATASET_FILE = "dataset.json"
TILES_FILE = "tiles.gpkg"
TILES_LAYER = "tiles"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
FORMAT_VERSION = 1
#: Keys of dataset.json that readers rely on, with the JSON types they must have.
REQUIRED_KEYS = {"format": int, "bands": list, "chip_size": int, "classes": (list, dict)}
#: Fields of the tiles layer that readers rely on.
REQUIRED_FIELDS = ("chip", "label", "split", "source", "row", "col", "valid_fraction")


@dataclass(frozen=True)
class ChipRecord:
    """One chip of a dataset: file paths (absolute), split and grid position.

    ``chip_class``: the chip's one class id (chip sets tiled with ``--chip-labels`` or
    ``--class-folders``), None without one.
    """

    name: str
    image: Path
    label: Path | None
    split: str
    source: str
    row: int
    col: int
    valid_fraction: float
    chip_class: int | None = None


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{meta}: unreadable ({exc}); re-run geoseg tile") from None
        check_info(info, meta)
        tiles = root / TILES_FILE
        if not tiles.is_file():
            raise InputFileError(f"{root}: {TILES_FILE} is missing; re-run geoseg tile")
        try:
            table = pyogrio.read_dataframe(tiles, layer=TILES_LAYER, read_geometry=False)
        except Exception as exc:  # pyogrio's DataSourceError family
            raise InputFileError(
                f"{tiles}: unreadable ({' '.join(str(exc).split())}); re-run geoseg tile"
            ) from None
        missing = [name for name in REQUIRED_FIELDS if name not in table.columns]
        if missing:
            raise InputFileError(
                f"{tiles}: layer {TILES_LAYER!r} lacks field(s) {', '.join(missing)}; "
                f"re-run geoseg tile"
            )
        inside = root.resolve()
        has_chip_classes = "chip_class" in table.columns
        records = []
        for number, row in enumerate(table.itertuples(index=False), start=1):
            label = row.label
            try:
                records.append(
                    ChipRecord(
                        name=Path(str(row.chip)).stem,
                        image=chip_path(inside, row.chip, tiles, number),
                        label=chip_path(inside, label, tiles, number)
                        if isinstance(label, str) and label
                        else None,
                        split=str(row.split),
                        source=str(row.source),
                        row=int(row.row),
                        col=int(row.col),
                        valid_fraction=float(row.valid_fraction),
                        chip_class=_chip_class(row.chip_class) if has_chip_classes else None,
                    )
                )
            except (TypeError, ValueError) as exc:
                raise InputFileError(
                    f"{tiles}: row {number} has a bad value ({exc}); re-run geoseg tile"
                ) from None
        return cls(root, info, records)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def has_labels(self) -> bool:
        return any(r.label is not None for r in self.records)

    @property
    def has_chip_labels(self) -> bool:
        """Whether chips carry one class each (``chip_class``)."""
        return any(r.chip_class is not None for r in self.records)

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
        from geoseg.raster import open_dataset, read_errors

        if record.label is None:
            raise InputFileError(
                f"{self.root}: chip {record.name} has no label; tile with --labels to train"
            )
        with open_dataset(record.label, what="label chip") as src, read_errors(record.label):
            return src.read(1)


def _chip_class(value) -> int | None:
    """A chip_class field value: None for an empty field (or -1)."""
    import pandas

    if pandas.isna(value):
        return None
    number = int(value)
    if number != value or not -1 <= number < 255:
        raise ValueError(f"chip_class {value!r} is not a class id 0..254")
    return None if number < 0 else number


def check_info(info, path: Path) -> None:
    """Raise ``InputFileError`` naming what is missing or wrong in a dataset.json."""
    if not isinstance(info, dict):
        raise InputFileError(
            f"{path}: expected a JSON object, found {type(info).__name__}; re-run geoseg tile"
        )
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise InputFileError(
            f"{path}: not a geoseg chip-set description: key(s) {', '.join(map(repr, missing))} "
            f"missing; re-run geoseg tile to write it"
        )
    for key, kind in REQUIRED_KEYS.items():
        value = info[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputFileError(
                f"{path}: key {key!r} holds {value!r}, not a "
                f"{'list' if kind is list else 'number' if kind is int else 'list of classes'}; "
                f"re-run geoseg tile"
            )
    if info["format"] > FORMAT_VERSION:
        raise InputFileError(
            f"{path}: chip-set format {info['format']} is newer than this geoseg reads "
            f"({FORMAT_VERSION}); upgrade geoseg or re-run geoseg tile with this version"
        )
    if info["format"] < 1:
        raise InputFileError(
            f"{path}: unknown chip-set format {info['format']}; re-run geoseg tile"
        )
    if not info["bands"] or not all(isinstance(b, str) and b for b in info["bands"]):
        raise InputFileError(f"{path}: key 'bands' must list the band names; re-run geoseg tile")
    if info["chip_size"] < 1:
        raise InputFileError(f"{path}: key 'chip_size' must be positive; re-run geoseg tile")


def chip_path(root: Path, name, tiles: Path, number: int) -> Path:
    """``root / name`` for a chip or label named in tiles.gpkg; it must stay inside ``root``.

    ``root`` is resolved. A crafted set naming ``../x.tif``, an absolute path or a link
    out of the set would otherwise make training read files outside it.
    """
    if not isinstance(name, str) or not name:
        raise InputFileError(f"{tiles}: row {number} names no chip file; re-run geoseg tile")
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root):
        raise InputFileError(
            f"{tiles}: row {number} names {name!r}, outside the chip set {root}; chip sets "
            f"name their files relative to their folder (re-run geoseg tile)"
        )
    return path


def list_to_spec(names: tuple[str, ...] | list[str]) -> str:
    """An explicit band mapping (``red=1,green=2``) for bands named in file order."""
    return ",".join(f"{name}={i}" for i, name in enumerate(names, start=1))
