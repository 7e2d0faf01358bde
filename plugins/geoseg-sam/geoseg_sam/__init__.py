"""geoseg-sam: a geoseg backend that segments with Segment Anything (SAM).

The vision and prompt encoders stay frozen; ``geoseg train --backend sam`` tunes only the
mask decoder on a chip dataset, with the encoder's image embeddings cached on disk.
"""

from __future__ import annotations

__version__ = "0.1.0"
