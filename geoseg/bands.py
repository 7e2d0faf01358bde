"""Band mapping: a name for every band of a raster.

Indices, prompts and backends ask for bands by name (``green``, ``nir``, ``swir1``), never
by position, so one call works on NAIP, Sentinel-2 and Landsat files whose band orders
differ. A mapping comes from a preset (``naip``), an explicit form
(``red=1,green=2,blue=3,nir=4``), or the raster itself (band descriptions written by
geoseg, or the colour interpretation of an RGB file).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geoseg.errors import BandError

__all__ = [
    "BandMap",
    "band_map",
    "BAND_PRESETS",
    "KNOWN_BAND_NAMES",
]

#: Presets, in file order. Landsat and Sentinel-2 presets name the bands of the sensor's
#: standard band order. A file needs at least ``PRESET_MIN_BANDS`` bands (default: all of
#: them) for the preset to apply; Landsat files often hold only the reflective bands 1-7.
BAND_PRESETS: dict[str, tuple[str, ...]] = {
    "naip": ("red", "green", "blue", "nir"),
    "rgb": ("red", "green", "blue"),
    "rgbn": ("red", "green", "blue", "nir"),
    "sentinel2": (
        "coastal",  # B1
        "blue",  # B2
        "green",  # B3
        "red",  # B4
        "rededge1",  # B5
        "rededge2",  # B6
        "rededge3",  # B7
        "nir",  # B8
        "nir08",  # B8A
        "watervapour",  # B9
        "cirrus",  # B10
        "swir1",  # B11
        "swir2",  # B12
    ),
    "landsat8": (
        "coastal",  # B1
        "blue",  # B2
        "green",  # B3
        "red",  # B4
        "nir",  # B5
        "swir1",  # B6
        "swir2",  # B7
        "pan",  # B8
        "cirrus",  # B9
        "tirs1",  # B10
        "tirs2",  # B11
    ),
}
BAND_PRESETS["landsat9"] = BAND_PRESETS["landsat8"]
PRESET_MIN_BANDS: dict[str, int] = {"landsat8": 7, "landsat9": 7}

#: Every name a preset uses: band descriptions made of these are trusted as a mapping.
KNOWN_BAND_NAMES = frozenset(name for names in BAND_PRESETS.values() for name in names) | {
    "gray",
    "alpha",
}

_COLORINTERP_NAMES = {"red": "red", "green": "green", "blue": "blue", "gray": "gray"}


@dataclass(frozen=True)
class BandMap:
    """Band names in file order: ``names[i]`` is the name of band ``i + 1``."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in self.names:
            if not name or not name.replace("_", "").isalnum():
                raise BandError(f"band name {name!r} must be letters, digits or '_'")
            if name in seen:
                raise BandError(f"band name {name!r} is given twice in the band mapping")
            seen.add(name)

    @property
    def count(self) -> int:
        return len(self.names)

    def index(self, name: str, *, source: str = "the raster") -> int:
        """The 1-based band index of ``name``."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise BandError(
                f"{source} has no band named {name!r} (bands: {', '.join(self.names)}); "
                f"name the bands with --bands, e.g. --bands red=1,green=2,blue=3,nir=4"
            ) from None

    def indexes(self, names: Iterable[str], *, source: str = "the raster") -> list[int]:
        """1-based band indexes for ``names``, in the order asked."""
        return [self.index(name, source=source) for name in names]

    def has(self, *names: str) -> bool:
        return all(name in self.names for name in names)

    def select(self, names: Iterable[str]) -> BandMap:
        """The mapping of a raster holding only ``names``, in that order."""
        return BandMap(tuple(names))

    def as_dict(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.names)}


def parse_band_spec(spec: str, count: int, *, source: str = "the raster") -> BandMap:
    """Parse a preset name or an explicit ``name=index,...`` mapping for ``count`` bands.

    Bands the mapping leaves unnamed are called ``band<i>``.
    """
    spec = spec.strip()
    if spec.lower() in BAND_PRESETS:
        preset = BAND_PRESETS[spec.lower()]
        needed = PRESET_MIN_BANDS.get(spec.lower(), len(preset))
        if count < needed:
            # Naming the first bands only would silently give, say, band 1 the name red.
            raise BandError(
                f"--bands {spec.lower()} names {needed} bands ({', '.join(preset[:needed])}) "
                f"but {source} has {count}; name the bands it holds instead, e.g. "
                f"--bands {','.join(f'{n}={i}' for i, n in enumerate(preset[:count], 1))}"
            )
        names = list(preset[:count]) + [f"band{i}" for i in range(len(preset) + 1, count + 1)]
        return BandMap(tuple(names))
    if "=" not in spec:
        raise BandError(
            f"unknown band preset {spec!r}; use one of {', '.join(sorted(BAND_PRESETS))} "
            f"or an explicit mapping such as red=1,green=2,blue=3,nir=4"
        )
    names: dict[int, str] = {}
    for part in spec.split(","):
        name, _, index_text = part.partition("=")
        name = name.strip().lower()
        try:
            index = int(index_text)
        except ValueError:
            raise BandError(
                f"band mapping entry {part.strip()!r} must be NAME=INDEX with a 1-based index, "
                f"e.g. nir=4"
            ) from None
        if not 1 <= index <= count:
            raise BandError(
                f"band mapping names band {index} ({name}) but {source} has {count} band(s); "
                f"use indexes 1..{count}"
            )
        if index in names:
            raise BandError(f"band mapping names band {index} twice ({names[index]}, {name})")
        names[index] = name
    return BandMap(tuple(names.get(i, f"band{i}") for i in range(1, count + 1)))


def band_map(
    spec: str | Mapping[str, int] | BandMap | None,
    count: int,
    *,
    descriptions: Iterable[str | None] = (),
    colorinterp: Iterable[str] = (),
    source: str = "the raster",
) -> BandMap:
    """The band mapping for a raster of ``count`` bands.

    Without ``spec``: band descriptions when they are all known band names (chips that
    geoseg writes carry them), else the colour interpretation of RGB(A) files, else
    ``band1..bandN``.
    """
    if isinstance(spec, BandMap):
        if spec.count != count:
            raise BandError(f"band mapping has {spec.count} names but {source} has {count} bands")
        return spec
    if isinstance(spec, Mapping):
        text = ",".join(f"{name}={index}" for name, index in spec.items())
        return parse_band_spec(text, count, source=source)
    if spec:
        return parse_band_spec(spec, count, source=source)

    described = [(d or "").strip().lower() for d in descriptions]
    if (
        len(described) == count
        and all(d in KNOWN_BAND_NAMES for d in described)
        and len(set(described)) == count
    ):
        return BandMap(tuple(described))
    interp = [_COLORINTERP_NAMES.get(str(c).lower().split(".")[-1]) for c in colorinterp]
    if len(interp) == count and count >= 3 and interp[:3] == ["red", "green", "blue"]:
        names = ["red", "green", "blue"] + [f"band{i}" for i in range(4, count + 1)]
        return BandMap(tuple(names))
    if count == 1 and interp == ["gray"]:
        return BandMap(("gray",))
    return BandMap(tuple(f"band{i}" for i in range(1, count + 1)))
