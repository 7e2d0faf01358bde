"""Hook specifications of geoseg's plugin system (pluggy project name ``geoseg``).

Plugins are Python modules named by an entry point in the ``geoseg`` group, e.g. in a
plugin's ``pyproject.toml``::

    [project.entry-points.geoseg]
    mybackend = "geoseg_mybackend"

and implement hooks with ``@hookimpl``. Every hook here is documented in
``docs/plugins.md``; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from geoseg.backend import Backend

__all__ = [
    "hookimpl",
]

PROJECT_NAME = "geoseg"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register backend classes by calling ``register(BackendSubclass)`` once for each.

    Called once per process, the first time geoseg needs the list of backends (``geoseg
    backends``, ``predict``, ``train``). Must not load weights or import heavy libraries
    eagerly: do that in ``Backend.load`` / ``Backend.train``. Returns nothing.
    """
