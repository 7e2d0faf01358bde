"""Entry point of the geoseg-sam distribution: registers the SAM backend."""

from __future__ import annotations

from collections.abc import Callable

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    # backend.py imports no torch at module level, so listing backends stays fast.
    from geoseg_sam.backend import SamBackend

    register(SamBackend)
