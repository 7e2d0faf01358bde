"""Entry point of the ``geoseg-segformer`` distribution: registers the SegFormer backend."""

from __future__ import annotations

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register) -> None:
    from geoseg_segformer.backend import SegformerBackend

    register(SegformerBackend)
