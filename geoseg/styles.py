"""How class masks describe themselves: GeoTIFF colour table and tags, QGIS styles.

A mask written by geoseg carries its classes twice: as a colour table (any GIS shows the
colours) and as the ``GEOSEG_CLASSES`` tag holding the classes as JSON (geoseg reads the
names back, e.g. for ``geoseg vectorize``). A QGIS ``.qml`` style beside the mask (same
stem) makes QGIS open it as a labelled, paletted layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import rasterio

from geoseg.classes import IGNORE_INDEX, ClassMap
from geoseg.errors import ClassError

CLASSES_TAG = "GEOSEG_CLASSES"


def colormap(classes: ClassMap) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: class colours, and transparent for the ignore value 255."""
    table = {c.id: (*c.rgb, 255) for c in classes}
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
    """A QGIS paletted-renderer style (text of a ``.qml`` file) labelling each class."""
    entries = "\n".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"{c.color}\" alpha=\"255\" "
        f"label={quoteattr(c.name)}/>"
        for c in classes
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="AllStyleCategories">
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


def vector_qml(classes: ClassMap, field: str = "class_name") -> str:
    """A QGIS categorized-renderer style (``.qml`` text): one fill colour per class."""
    categories, symbols = [], []
    for n, c in enumerate(classes):
        r, g, b = c.rgb
        categories.append(
            f'      <category value={quoteattr(c.name)} symbol="{n}" label={quoteattr(c.name)} '
            f'render="true"/>'
        )
        props = {
            "color": f"{r},{g},{b},160",
            "outline_color": f"{r},{g},{b},255",
            "outline_width": "0.4",
            "outline_width_unit": "MM",
            "style": "solid",
            "outline_style": "solid",
        }
        options = "".join(
            f'<Option name="{k}" type="QString" value="{v}"/>' for k, v in props.items()
        )
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        symbols.append(
            f'      <symbol type="fill" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            f'        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            f'          <Option type="Map">{options}</Option>\n'
            f"          {legacy}\n"
            f"        </layer>\n"
            f"      </symbol>"
        )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        "    <categories>\n" + "\n".join(categories) + "\n    </categories>\n"
        "    <symbols>\n" + "\n".join(symbols) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
        "</qgis>\n"
    )


def write_vector_style(gpkg: str | Path, layer: str, classes: ClassMap) -> None:
    """Store the layer's default QGIS style in the GeoPackage's ``layer_styles`` table.

    QGIS applies it when the layer is opened, the way it stores styles itself.
    """
    import pandas as pd
    import pyogrio

    geometry_column = pyogrio.read_info(str(gpkg), layer=layer).get("geometry_name") or "geom"

    record = pd.DataFrame(
        {
            "f_table_catalog": [""],
            "f_table_schema": [""],
            "f_table_name": [layer],
            "f_geometry_column": [geometry_column],
            "styleName": [layer],
            "styleQML": [vector_qml(classes)],
            "styleSLD": [""],
            "useAsDefault": [True],
            "description": ["geoseg classes"],
            "owner": [""],
            "ui": [""],
        }
    )
    pyogrio.write_dataframe(record, str(gpkg), layer="layer_styles", driver="GPKG",
                            append=False, layer_options={"FID": "id"})
