"""Entry point of the ``geoseg-onnx`` distribution: registers the ONNX Runtime backend."""

from __future__ import annotations

from geoseg.hookspecs import hookimpl


@hookimpl
def register_backends(register) -> None:
    from geoseg_onnx.backend import OnnxBackend

    register(OnnxBackend)
