"""Entry point of the geoseg-spectral distribution: registers the spectral backend."""

from __future__ import annotations

from collections.abc import Callable

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    from geoseg_spectral.backend import SpectralBackend

    register(SpectralBackend)
