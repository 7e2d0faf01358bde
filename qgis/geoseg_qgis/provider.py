"""The geoseg Processing provider: its setting (the geoseg executable) and algorithms."""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog, QgsProcessingProvider

from .algorithms import ALGORITHMS
from .runner import GeosegCommandError, backends, find_executable

#: Processing setting holding the geoseg executable of the environment geoseg runs in.
EXECUTABLE_SETTING = "GEOSEG_EXECUTABLE"
#: Backends offered when ``geoseg backends --json`` cannot be asked.
FALLBACK_BACKENDS = ["spectral"]
#: Offered for chip classification when ``geoseg backends --json`` cannot be read.
FALLBACK_CHIP_BACKENDS = ["hf-classifier"]


class GeosegProvider(QgsProcessingProvider):
    def __init__(self) -> None:
        super().__init__()
        self._backends: dict[str, dict] | None = None

    def id(self):
        return "geoseg"

    def name(self):
        return "geoseg"

    def longName(self):  # noqa: N802
        return "geoseg: water and land-cover segmentation"

    def load(self):
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "geoseg executable (in the environment geoseg is installed in, e.g. "
                "/path/to/.venv/bin/geoseg; empty: $GEOSEG_EXECUTABLE or geoseg on PATH)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def executable(self) -> str:
        """The geoseg executable to run; ``GeosegCommandError`` when it is not found."""
        from processing.core.ProcessingConfig import ProcessingConfig

        return find_executable(ProcessingConfig.getSetting(EXECUTABLE_SETTING))

    def backend_names(self, trains: bool = False, kind: str | None = "pixels") -> list[str]:
        """Installed backends (those that train; of ``kind`` pixels or chips, None: both),
        read once from ``geoseg backends --json``."""
        if self._backends is None:
            try:
                self._backends = backends(self.executable())
            except (GeosegCommandError, OSError, ValueError, KeyError) as exc:
                QgsMessageLog.logMessage(
                    f"geoseg backends --json failed ({exc}); offering {FALLBACK_BACKENDS}",
                    "geoseg",
                    Qgis.Warning,
                )
                self._backends = {}
        names = [
            name
            for name, record in self._backends.items()
            if (not trains or record.get("capabilities", {}).get("trains"))
            and kind in (None, record.get("capabilities", {}).get("kind", "pixels"))
        ]
        fallback = FALLBACK_CHIP_BACKENDS if kind == "chips" else FALLBACK_BACKENDS
        return names or list(fallback)

    def loadAlgorithms(self):  # noqa: N802
        self._backends = None  # refreshed with the algorithms (e.g. after a setting change)
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm(self))
