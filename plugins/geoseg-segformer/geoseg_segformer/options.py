"""Options of the Hugging Face segmentation backends (``--option key=value`` or ``--config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from geoseg.config import option
from geoseg.errors import OptionError
from geoseg.training import TrainingOptions

#: Base checkpoint when ``--model`` is not given to ``geoseg train``.
DEFAULT_CHECKPOINT = "nvidia/mit-b0"


@dataclass(frozen=True)
class SegmentationOptions(TrainingOptions):
    """Fine-tuning settings: LoRA's, plus the training core's (``warmup``, ...)."""

    lora: bool = option(
        True, applies="train", help="Train LoRA adapters (True) or every weight (False)."
    )
    r: int = option(16, applies="train", help="LoRA rank.")
    alpha: float = option(16.0, applies="train", help="LoRA scaling (alpha / r).")
    dropout: float = option(0.05, applies="train", help="Dropout on the LoRA layers.")
    bias: Literal["none", "all", "lora_only"] = option(
        "none", applies="train", help="Biases LoRA trains: none, all or those of the LoRA layers."
    )
    lora_targets: tuple[str, ...] = option(
        (),
        applies="train",
        help="Module names that get LoRA adapters, comma-separated; empty: the attention "
        "query and value projections (or a convolutional backbone's pointwise layers), "
        "found by name in the loaded model.",
    )
    normalization: Literal["chips", "checkpoint"] = option(
        "chips",
        applies="train",
        help="Band normalisation: chips (mean and std of each band over the training chips) "
        "or checkpoint (the base checkpoint's image processor, as it was pretrained).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise OptionError(f"option r must be a positive integer (LoRA rank), got {self.r}")
        if self.alpha <= 0:
            raise OptionError(f"option alpha must be positive (LoRA scaling), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise OptionError(f"option dropout must be in [0, 1), got {self.dropout}")
        if self.normalization not in ("chips", "checkpoint"):
            raise OptionError(
                f"option normalization must be chips or checkpoint, got {self.normalization!r}"
            )
        if self.bias not in ("none", "all", "lora_only"):
            raise OptionError(f"option bias must be none, all or lora_only, got {self.bias!r}")
        if isinstance(self.lora_targets, str):
            parts = [p.strip() for p in self.lora_targets.split(",") if p.strip()]
            object.__setattr__(self, "lora_targets", tuple(parts))
        if any(not name for name in self.lora_targets):
            raise OptionError(
                "option lora_targets must be comma-separated module names, e.g. q_proj,v_proj"
            )


#: The options' earlier name (the ``segformer`` backend is the ``hf`` backend).
SegformerOptions = SegmentationOptions
