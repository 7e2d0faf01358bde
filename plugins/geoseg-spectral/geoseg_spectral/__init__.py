"""geoseg-spectral: a geoseg backend that thresholds spectral indices (no model weights)."""

from __future__ import annotations

__version__ = "0.1.0"
