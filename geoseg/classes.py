"""Classes: id, name and colour of each class a mask can hold.

Class ids are uint8 values 0..254; 255 is reserved for "ignore" (nodata, unlabelled). A
classes file is JSON, either a list of ``{"id": 1, "name": "water", "color": "#1f78b4"}``
objects (colour optional) or a plain ``{"0": "background", "1": "water"}`` mapping.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from geoseg.errors import ClassError

__all__ = [
    "ClassMap",
    "ClassInfo",
    "IGNORE_INDEX",
]

IGNORE_INDEX = 255

#: Colours for classes that do not name one; water-like names get blue.
_PALETTE = (
    "#000000",
    "#1f78b4",
    "#33a02c",
    "#e31a1c",
    "#ff7f00",
    "#6a3d9a",
    "#b15928",
    "#a6cee3",
    "#b2df8a",
    "#fb9a99",
    "#fdbf6f",
    "#cab2d6",
    "#ffff99",
)
_NAMED_COLOURS = {
    "background": "#000000",
    "water": "#1f78b4",
    "river": "#1f78b4",
    "vegetation": "#33a02c",
    "forest": "#1b7837",
    "urban": "#e31a1c",
    "built": "#e31a1c",
}


@dataclass(frozen=True)
class ClassInfo:
    """One class: uint8 id, name and colour as ``#rrggbb``."""

    id: int
    name: str
    color: str

    def __post_init__(self) -> None:
        if not 0 <= self.id < IGNORE_INDEX:
            raise ClassError(f"class id {self.id} ({self.name}) must be 0..254; 255 means ignore")
        if not self.name:
            raise ClassError(f"class {self.id} needs a name")
        if not (len(self.color) == 7 and self.color.startswith("#")):
            raise ClassError(f"class {self.name!r}: colour {self.color!r} must be #rrggbb")

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def default_color(class_id: int, name: str = "") -> str:
    return _NAMED_COLOURS.get(name.lower(), _PALETTE[class_id % len(_PALETTE)])


@dataclass(frozen=True)
class ClassMap:
    """An ordered set of classes, looked up by id or name."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        names = [c.name for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ClassError(f"class ids repeat in {ids}")
        if len(set(names)) != len(names):
            raise ClassError(f"class names repeat in {names}")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ClassMap:
        """Classes numbered 0.. in the order given."""
        return cls(tuple(ClassInfo(i, n, default_color(i, n)) for i, n in enumerate(names)))

    @classmethod
    def from_ids(cls, ids: Iterable[int]) -> ClassMap:
        """Classes for bare ids, named ``class_<id>`` (0 is ``background``)."""
        infos = []
        for i in sorted(set(int(i) for i in ids)):
            name = "background" if i == 0 else f"class_{i}"
            infos.append(ClassInfo(i, name, default_color(i, name)))
        return cls(tuple(infos))

    @classmethod
    def from_json(cls, data: object, *, source: str = "classes") -> ClassMap:
        """Classes from parsed JSON: a list of objects or an ``{id: name}`` mapping."""
        if isinstance(data, Mapping) and "classes" in data:
            data = data["classes"]
        infos: list[ClassInfo] = []
        try:
            if isinstance(data, Mapping):
                for key, value in data.items():
                    class_id = int(key)
                    if isinstance(value, Mapping):
                        name = str(value["name"])
                        color = str(value.get("color") or default_color(class_id, name))
                    else:
                        name, color = str(value), default_color(class_id, str(value))
                    infos.append(ClassInfo(class_id, name, color))
            elif isinstance(data, list):
                for item in data:
                    class_id, name = int(item["id"]), str(item["name"])
                    color = str(item.get("color") or default_color(class_id, name))
                    infos.append(ClassInfo(class_id, name, color))
            else:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ClassError(
                f'{source}: expected a list of {{"id": 1, "name": "water"}} objects or an '
                f'{{"1": "water"}} mapping'
            ) from None
        if not infos:
            raise ClassError(f"{source} defines no classes")
        return cls(tuple(sorted(infos, key=lambda c: c.id)))

    @classmethod
    def read(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClassError(f"{path}: classes file not found") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ClassError(f"{path}: not a readable JSON classes file ({exc})") from None
        return cls.from_json(data, source=str(path))

    def to_json(self) -> list[dict[str, object]]:
        return [{"id": c.id, "name": c.name, "color": c.color} for c in self.classes]

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def by_id(self, class_id: int) -> ClassInfo:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise ClassError(f"unknown class id {class_id}; known ids: {list(self.ids)}")

    def id_of(self, name: str, *, source: str = "labels") -> int:
        for c in self.classes:
            if c.name == name:
                return c.id
        raise ClassError(
            f"{source}: unknown class name {name!r}; known classes: {', '.join(self.names)}. "
            f"Add it to the --classes file"
        )

    def with_ids(self, ids: Iterable[int]) -> ClassMap:
        """These classes plus generic ones for any id not yet known."""
        known = set(self.ids)
        extra = ClassMap.from_ids(i for i in ids if i not in known and i != IGNORE_INDEX)
        return ClassMap(tuple(sorted(self.classes + extra.classes, key=lambda c: c.id)))


#: The classes of a binary water mask.
WATER = ClassMap((ClassInfo(0, "background", "#000000"), ClassInfo(1, "water", "#1f78b4")))
