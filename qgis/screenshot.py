"""Render the README's QGIS screenshot: geoseg's outputs over the NAIP sample, in real QGIS.

Run with QGIS's Python (not geoseg's), on outputs of geoseg predict, prompts and tile::

    xvfb-run -a /usr/bin/python3 qgis/screenshot.py OUT_DIR SAMPLE.tif docs/qgis.png

OUT_DIR holds naip.tif (+ .qml), naip.gpkg, prompts.gpkg and chips/tiles.gpkg. Each layer
opens with the default style geoseg wrote; nothing is styled here.
"""

import sys

from qgis.core import (
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage


def main(out_dir: str, sample: str, png: str) -> None:
    app = QgsApplication([], False)
    app.initQgis()
    image = QgsRasterLayer(sample, "NAIP")
    layers = [
        QgsVectorLayer(f"{out_dir}/chips/tiles.gpkg|layername=tiles", "chips", "ogr"),
        QgsVectorLayer(f"{out_dir}/prompts.gpkg|layername=points", "points", "ogr"),
        QgsVectorLayer(f"{out_dir}/prompts.gpkg|layername=boxes", "boxes", "ogr"),
        QgsRasterLayer(f"{out_dir}/naip.tif", "water"),
        image,
    ]
    assert all(layer.isValid() for layer in layers), [x.name() for x in layers if not x.isValid()]
    full = image.extent()
    # the western half: lakes, prompts and chip seams large enough to read
    extent = QgsRectangle(
        full.xMinimum(), full.yMinimum() + full.height() * 0.2,
        full.xMinimum() + full.width() * 0.55, full.yMaximum(),
    )  # fmt: skip
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(image.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(720, int(720 * extent.height() / extent.width())))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    # an indexed palette keeps the PNG small; the image is photographic only in its texture
    job.renderedImage().convertToFormat(QImage.Format_Indexed8).save(png, "PNG")
    print(png)


if __name__ == "__main__":
    main(*sys.argv[1:4])
    import os

    os._exit(0)  # PyQGIS 3.22 may crash in its exit handlers
