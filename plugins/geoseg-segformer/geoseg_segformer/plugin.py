"""Entry point of the ``geoseg-segformer`` distribution: registers the ``hf`` backend and
``segformer``, its earlier name."""

from __future__ import annotations

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register) -> None:
    from geoseg_segformer.backend import HFSegmentationBackend, SegformerBackend

    register(HFSegmentationBackend)
    register(SegformerBackend)
