"""Package the QGIS plugin as a zip for Plugins > Manage and Install Plugins > Install from ZIP.

    python3 qgis/build_zip.py [OUT.zip]      (default: dist/geoseg_qgis.zip)

The zip holds one folder, ``geoseg_qgis/``, as QGIS expects; caches are left out.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "geoseg_qgis"


def build_zip(out: str | Path = "dist/geoseg_qgis.zip") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(PLUGIN.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, Path(PLUGIN.name) / path.relative_to(PLUGIN))
    return out


if __name__ == "__main__":
    print(build_zip(*sys.argv[1:2]))
