"""Entry point of the ``geoseg-segformer`` distribution: registers the ``hf`` backend,
``segformer`` (its earlier name) and ``hf-classifier`` (one class per chip)."""

from __future__ import annotations

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register) -> None:
    from geoseg_segformer.backend import HFSegmentationBackend, SegformerBackend

    register(HFSegmentationBackend)
    register(SegformerBackend)
    from geoseg_segformer.classify import HFClassifierBackend

    register(HFClassifierBackend)
