"""How geoseg outputs describe themselves: GeoTIFF colour table and tags, QGIS styles.

A mask written by geoseg carries its classes twice: as a colour table (any GIS shows the
colours) and as the ``GEOSEG_CLASSES`` tag holding the classes as JSON (geoseg reads the
names back, e.g. for ``geoseg vectorize``). A QGIS ``.qml`` style beside the mask (same
stem) makes QGIS open it as a labelled, paletted layer with the background transparent,
so the mask can lie over the imagery it was made from.

GeoPackages (polygons, prompts, chip footprints) carry their default QGIS style in a
``layer_styles`` table created exactly as QGIS creates it, so QGIS applies it on load.
They are written as GeoPackage ``GPKG_VERSION``, which QGIS LTR releases built on older
GDAL (3.6, Debian bookworm) read without warnings; GDAL >= 3.9 would write 1.4 otherwise.

A GeoTIFF colour table has no alpha channel (TIFF palettes are RGB), so the background's
transparency and the classes' opacity live in the ``.qml``; the colour table records the
intent (alpha 0 for the background) for formats that keep it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import rasterio

from geoseg.classes import IGNORE_INDEX, ClassInfo, ClassMap
from geoseg.errors import ClassError

CLASSES_TAG = "GEOSEG_CLASSES"

#: GeoPackage version geoseg writes: what GDAL 3.6 (QGIS 3.22/3.28 LTR) writes itself.
GPKG_VERSION = "1.2"
#: Dataset creation options for every GeoPackage geoseg writes (pyogrio ``dataset_options``).
GPKG_OPTIONS = {"VERSION": GPKG_VERSION}

#: Class names drawn transparent: nothing to see there.
BACKGROUND_NAMES = frozenset({"background", "nodata", "none", "unlabeled", "unlabelled"})
#: Opacity (0..255) of class colours in the raster style: the imagery shows through.
CLASS_ALPHA = 191
#: Opacity (0..255) of polygon fills; outlines stay opaque.
FILL_ALPHA = 128

#: Colours of prompt points by label, and of prompt boxes.
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = "#00e5ff", "#ff1744", "#ffd600"
#: Outline colours of chip footprints by split.
SPLIT_COLORS = {"train": "#00e676", "val": "#ff9100", "test": "#d500f9"}


def is_background(info: ClassInfo) -> bool:
    """Whether a class is drawn transparent (named background, nodata, ...)."""
    return info.name.lower() in BACKGROUND_NAMES


def colormap(classes: ClassMap) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: class colours, transparent background and ignore value 255."""
    table = {c.id: (*c.rgb, 0 if is_background(c) else 255) for c in classes}
    table[IGNORE_INDEX] = (0, 0, 0, 0)
    return table


def write_class_metadata(dataset: rasterio.io.DatasetWriter, classes: ClassMap) -> None:
    """Set colour table, class tags and band description of an open uint8 mask."""
    dataset.write_colormap(1, colormap(classes))
    dataset.update_tags(
        **{
            CLASSES_TAG: json.dumps(classes.to_json()),
            "CLASS_NAMES": ",".join(f"{c.id}:{c.name}" for c in classes),
            "IGNORE_VALUE": str(IGNORE_INDEX),
        }
    )
    dataset.set_band_description(1, "class")


def read_class_metadata(dataset: rasterio.io.DatasetReader) -> ClassMap | None:
    """The classes recorded in a mask's tags, or None when it carries none."""
    text = dataset.tags().get(CLASSES_TAG)
    if not text:
        return None
    try:
        return ClassMap.from_json(json.loads(text), source=f"{dataset.name} ({CLASSES_TAG} tag)")
    except (json.JSONDecodeError, ClassError):
        return None


def mask_classes(path: str | Path, classes: ClassMap | None = None) -> ClassMap | None:
    """``classes`` if given, else the classes in the tags of the mask at ``path``."""
    if classes is not None:
        return classes
    with rasterio.open(path) as dataset:
        return read_class_metadata(dataset)


def qml_path(mask_path: str | Path) -> Path:
    """Where QGIS looks for a raster's default style: same folder and stem, ``.qml``."""
    return Path(mask_path).with_suffix(".qml")


def raster_qml(classes: ClassMap) -> str:
    """A QGIS paletted-renderer style (text of a ``.qml`` file) labelling each class.

    Background classes are transparent, the others ``CLASS_ALPHA``; the ignore value 255
    is the mask's nodata, which QGIS draws transparent itself.
    """
    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{c.color}" '
        f'alpha="{0 if is_background(c) else CLASS_ALPHA}" label={quoteattr(c.name)}/>'
        for c in classes
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories">
  <pipe>
    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255" colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def write_raster_qml(mask_path: str | Path, classes: ClassMap) -> Path:
    """Write the ``.qml`` style beside ``mask_path`` and return its path."""
    from geoseg.atomic import atomic_output

    path = qml_path(mask_path)
    with atomic_output(path) as tmp:
        tmp.write_text(raster_qml(classes), encoding="utf-8")
    return path


# Vector styles ---------------------------------------------------------------------------


def _rgba(color: str, alpha: int) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"{r},{g},{b},{alpha}"


def _symbol(kind: str, name: str, layer_class: str, props: Mapping[str, str]) -> str:
    """One QGIS symbol with one symbol layer, its properties written both ways QGIS reads."""
    options = "".join(f'<Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items())
    legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (
        f'      <symbol type="{kind}" name="{name}" alpha="1" clip_to_extent="1" '
        f'force_rhr="0">\n'
        f'        <layer class="{layer_class}" enabled="1" locked="0" pass="0">\n'
        f'          <Option type="Map">{options}</Option>\n'
        f"          {legacy}\n"
        f"        </layer>\n"
        f"      </symbol>"
    )


def _fill(
    name: str,
    fill: str,
    fill_alpha: int,
    outline: str,
    outline_alpha: int = 255,
    width: str = "0.4",
) -> str:
    return _symbol(
        "fill",
        name,
        "SimpleFill",
        {
            "color": _rgba(fill, fill_alpha),
            "outline_color": _rgba(outline, outline_alpha),
            "outline_width": width,
            "outline_width_unit": "MM",
            "style": "solid" if fill_alpha else "no",
            "outline_style": "solid" if outline_alpha else "no",
            "joinstyle": "miter",
        },
    )


def _marker(name: str, color: str, size: str = "2.6") -> str:
    return _symbol(
        "marker",
        name,
        "SimpleMarker",
        {
            "name": "circle",
            "color": _rgba(color, 255),
            "outline_color": "255,255,255,255",
            "outline_width": "0.3",
            "outline_width_unit": "MM",
            "outline_style": "solid",
            "size": size,
            "size_unit": "MM",
        },
    )


def _qml(renderer: str) -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="Symbology">\n' + renderer + "</qgis>\n"
    )


def _categorized(field: str, categories: Iterable[tuple[str, str, str]]) -> str:
    """A categorized renderer over ``field`` from (value, label, symbol xml) triples."""
    rows, symbols = [], []
    for n, (value, label, symbol) in enumerate(categories):
        rows.append(
            f'      <category value={quoteattr(value)} symbol="{n}" '
            f'label={quoteattr(label)} render="true"/>'
        )
        symbols.append(symbol.replace('name="_"', f'name="{n}"', 1))
    return (
        f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        "    <categories>\n" + "\n".join(rows) + "\n    </categories>\n"
        "    <symbols>\n" + "\n".join(symbols) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
    )


def _single(symbol: str) -> str:
    return (
        '  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" '
        'forceraster="0">\n'
        "    <symbols>\n" + symbol.replace('name="_"', 'name="0"', 1) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
    )


def vector_qml(classes: ClassMap, field: str = "class_name") -> str:
    """A QGIS categorized-renderer style (``.qml`` text) for class polygons.

    Each class is filled with its colour at ``FILL_ALPHA`` and outlined opaque; the
    background, when vectorized, is drawn as nothing.
    """
    categories = []
    for c in classes:
        hidden = is_background(c)
        symbol = _fill("_", c.color, 0 if hidden else FILL_ALPHA, c.color, 0 if hidden else 255)
        categories.append((c.name, c.name, symbol))
    return _qml(_categorized(field, categories))


def prompt_points_qml() -> str:
    """Prompt points by ``label``: positive (water) and negative in two colours."""
    return _qml(
        _categorized(
            "label",
            [
                ("1", "positive (water)", _marker("_", POSITIVE_COLOR)),
                ("0", "negative (not water)", _marker("_", NEGATIVE_COLOR)),
            ],
        )
    )


def prompt_boxes_qml() -> str:
    """Prompt boxes as outlines."""
    return _qml(_single(_fill("_", BOX_COLOR, 0, BOX_COLOR, width="0.5")))


def tiles_qml(splits: Iterable[str] = SPLIT_COLORS) -> str:
    """Chip footprints as outlines coloured by ``split``."""
    categories = []
    for split in splits:
        color = SPLIT_COLORS.get(split, "#bdbdbd")
        categories.append((split, split, _fill("_", color, 0, color, width="0.5")))
    return _qml(_categorized("split", categories))


# layer_styles in GeoPackages ---------------------------------------------------------------

#: The table as QGIS (through GDAL's GeoPackage driver) creates it, column for column.
LAYER_STYLES_SQL = (
    'CREATE TABLE "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)
_COUNT_TRIGGERS = (
    'CREATE TRIGGER "trigger_insert_feature_count_layer_styles" AFTER INSERT ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count + 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
    'CREATE TRIGGER "trigger_delete_feature_count_layer_styles" AFTER DELETE ON '
    '"layer_styles" BEGIN UPDATE gpkg_ogr_contents SET feature_count = feature_count - 1 '
    "WHERE lower(table_name) = lower('layer_styles'); END",
)
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"


@dataclass(frozen=True)
class LayerStyle:
    """One row of ``layer_styles``: the default style of a layer of the GeoPackage."""

    layer: str
    qml: str
    name: str = ""
    description: str = "geoseg"
    sld: str = ""
    default: bool = True


def write_gpkg_styles(gpkg: str | Path, styles: Iterable[LayerStyle]) -> None:
    """Store QGIS styles in the ``layer_styles`` table of a GeoPackage (created if missing).

    A default style replaces the default of the same layer, as saving it in QGIS does.
    """
    styles = list(styles)
    with contextlib.closing(sqlite3.connect(gpkg)) as db, db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "layer_styles" not in tables:
            db.execute(LAYER_STYLES_SQL)
            db.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                f"last_change, srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                f"'', {_NOW}, 0)"
            )
            if "gpkg_ogr_contents" in tables:
                db.execute(
                    "INSERT INTO gpkg_ogr_contents (table_name, feature_count) "
                    "VALUES ('layer_styles', 0)"
                )
                for trigger in _COUNT_TRIGGERS:
                    db.execute(trigger)
        geometry_columns = dict(
            db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns").fetchall()
        )
        for style in styles:
            if style.default:
                db.execute(
                    "DELETE FROM layer_styles WHERE f_table_name = ? AND useAsDefault",
                    (style.layer,),
                )
            db.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, ?, ?, '', NULL)",
                (
                    style.layer,
                    geometry_columns.get(style.layer, ""),
                    style.name or style.layer,
                    style.qml,
                    style.sld,
                    int(style.default),
                    style.description,
                ),
            )
        db.execute(
            f"UPDATE gpkg_contents SET last_change = {_NOW} WHERE table_name = 'layer_styles'"
        )


def read_gpkg_styles(gpkg: str | Path) -> list[LayerStyle]:
    """The styles in a GeoPackage's ``layer_styles`` table (none when it has no table)."""
    with contextlib.closing(sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)) as db:
        if not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'layer_styles'"
        ).fetchone():
            return []
        rows = db.execute(
            "SELECT f_table_name, styleQML, styleName, description, styleSLD, useAsDefault "
            "FROM layer_styles ORDER BY id"
        ).fetchall()
    return [
        LayerStyle(layer, qml or "", name or "", description or "", sld or "", bool(default))
        for layer, qml, name, description, sld, default in rows
    ]


def write_vector_style(gpkg: str | Path, layer: str, classes: ClassMap) -> None:
    """Store the class polygons' default QGIS style in the GeoPackage's ``layer_styles``."""
    write_gpkg_styles(gpkg, [LayerStyle(layer, vector_qml(classes), description="geoseg classes")])


def write_prompt_styles(gpkg: str | Path, points: str = "points", boxes: str = "boxes") -> None:
    """Store the default styles of a prompts GeoPackage's point and box layers."""
    write_gpkg_styles(
        gpkg,
        [
            LayerStyle(points, prompt_points_qml(), description="geoseg prompt points"),
            LayerStyle(boxes, prompt_boxes_qml(), description="geoseg prompt boxes"),
        ],
    )


def write_tiles_style(gpkg: str | Path, layer: str, splits: Iterable[str] = ()) -> None:
    """Store the default style of a chip-footprint layer: outlines coloured by split."""
    names = list(dict.fromkeys([*SPLIT_COLORS, *splits]))
    write_gpkg_styles(gpkg, [LayerStyle(layer, tiles_qml(names), description="geoseg chips")])
