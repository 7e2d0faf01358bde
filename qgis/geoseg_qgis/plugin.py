"""The QGIS plugin: registers the geoseg Processing provider."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import GeosegProvider


class GeosegPlugin:
    def __init__(self, iface=None) -> None:
        self.iface = iface
        self.provider: GeosegProvider | None = None

    def initProcessing(self):  # noqa: N802 (QGIS plugin API; qgis_process calls it)
        self.provider = GeosegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
