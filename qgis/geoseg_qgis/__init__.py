"""geoseg for QGIS: a Processing provider that runs the geoseg command line.

Install the zip of this folder from Plugins > Manage and Install Plugins > Install from
ZIP, then set the geoseg executable in Processing > Options > Providers > geoseg.
"""


def classFactory(iface):  # noqa: N802 (QGIS plugin entry point)
    from .plugin import GeosegPlugin

    return GeosegPlugin(iface)
