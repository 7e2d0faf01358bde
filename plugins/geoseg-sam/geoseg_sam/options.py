"""Options of the SAM backend (``--option key=value`` on ``geoseg train`` and ``predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from geoseg.config import option
from geoseg.errors import OptionError
from geoseg.training import TrainingOptions

PROMPT_KINDS = ("points", "boxes")
MULTIMASK_MODES = ("mean", "best", "single")
STRETCH_MODES = ("percentile", "off")
LOSSES = ("dice", "dicece", "focal")
#: Erosion radius (pixels) used by ``erode=true``.
DEFAULT_ERODE = 3
#: ``cache=off`` recomputes the image embeddings every epoch.
CACHE_OFF = "off"


@dataclass(frozen=True)
class SamOptions(TrainingOptions):
    """Options of the ``sam`` backend (plus the training core's, e.g. ``warmup``)."""

    warmup: float = option(
        0.1,
        applies="train",
        help="Fraction of the optimizer steps with a linearly rising learning rate.",
    )
    augment: bool = option(
        False,
        applies="train",
        help="Off by default: a flipped chip is a new embedding, so augmenting would defeat "
        "the embedding cache.",
    )

    bands: tuple[str, ...] = option(
        ("red", "green", "blue"), help="Three band names fed to SAM as R, G, B."
    )
    prompt: Literal["points", "boxes"] = option(
        "points", applies="train", help="Kind of training prompt drawn from the labels."
    )
    positive: int = option(
        3,
        applies="train",
        help="Positive points per water component; each becomes one prompt, with the chip's "
        "negative points attached.",
    )
    negative: int = option(
        0, applies="train", help="Negative points per chip, attached to each positive prompt."
    )
    erode: bool | int = option(
        True,
        applies="train",
        help="Keep positive points this many pixels from the bank (true: 3, false: 0).",
    )
    perturb: int = option(
        10, applies="train", help="Move training boxes' edges by up to this many pixels."
    )
    multimask: Literal["mean", "best", "single"] = option(
        "mean",
        help="How SAM's three masks per prompt become one: the mean of their logits, the "
        "best-scored one, or SAM's single-mask output.",
    )
    loss: Literal["dice", "dicece", "focal"] = option(
        "dicece", applies="train", help="Training loss: dice, dice plus cross-entropy, or focal."
    )
    cache: str | None = option(
        None,
        applies="train",
        help="Folder of the image-embedding cache (default $XDG_CACHE_HOME/geoseg/"
        "sam-embeddings); off recomputes the embeddings every epoch.",
    )
    max_prompts: int = option(
        8,
        applies="train",
        help="Prompts per chip and step, drawn at random from all of the chip's prompts "
        "(decoder work per step grows with it; a new draw every epoch covers the rest).",
    )
    percentiles: tuple[float, float] = option(
        (2.0, 98.0), help="Low and high percentiles of the 8-bit stretch."
    )
    stretch: Literal["percentile", "off"] | None = option(
        None,
        help="8-bit stretch: percentile (between percentiles) or off (values as 8-bit as "
        "they are, as SAM's own pipeline reads them); default: percentile, except zero-shot "
        "on 8-bit rasters.",
    )
    target: str | None = option(
        None, applies="train", help="The class to segment when the chip set has more than one."
    )
    index: str | None = option(
        None,
        applies="predict",
        help="Water index of --prompts auto (default: the backend's prompt settings).",
    )
    threshold: str | None = option(
        None, applies="predict", help="Threshold of --prompts auto's water index."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        bands = self.bands
        if isinstance(bands, str):
            bands = tuple(part.strip() for part in bands.split(","))
        bands = tuple(str(b).strip().lower() for b in bands)
        if len(bands) != 3 or not all(bands):
            raise OptionError(
                f"option bands must name three bands, e.g. bands=nir,red,green; got {self.bands!r}"
            )
        if len(set(bands)) != 3:
            raise OptionError(f"option bands names a band twice: {','.join(bands)}")
        object.__setattr__(self, "bands", bands)
        for name, choices in (
            ("prompt", PROMPT_KINDS),
            ("multimask", MULTIMASK_MODES),
            ("loss", LOSSES),
        ):
            if getattr(self, name) not in choices:
                raise OptionError(
                    f"option {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.stretch is not None and self.stretch not in STRETCH_MODES:
            raise OptionError(
                f"option stretch must be one of {', '.join(STRETCH_MODES)}, got {self.stretch!r}"
            )
        for name in ("positive", "negative", "perturb", "max_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(f"option {name} must be a whole number >= 0, got {value!r}")
        if self.prompt == "points" and self.positive < 1:
            raise OptionError("option positive must be at least 1 with prompt=points")
        if self.max_prompts < 1:
            raise OptionError("option max_prompts must be at least 1")
        if not isinstance(self.erode, (bool, int)) or (
            not isinstance(self.erode, bool) and self.erode < 0
        ):
            raise OptionError(
                f"option erode must be true, false or a radius in pixels, got {self.erode!r}"
            )
        low, high = (float(v) for v in self.percentiles)
        if not 0 <= low < high <= 100:
            raise OptionError(
                f"option percentiles must be LOW,HIGH with 0 <= LOW < HIGH <= 100, "
                f"got {self.percentiles!r}"
            )
        object.__setattr__(self, "percentiles", (low, high))

    @property
    def erode_radius(self) -> int:
        """Erosion radius in pixels."""
        if isinstance(self.erode, bool):
            return DEFAULT_ERODE if self.erode else 0
        return int(self.erode)

    @property
    def cache_enabled(self) -> bool:
        return (self.cache or "").strip().lower() != CACHE_OFF
