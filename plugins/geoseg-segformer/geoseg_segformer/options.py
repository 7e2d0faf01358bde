"""Options of the SegFormer backend (``--option key=value`` or a ``--config`` file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Base checkpoint when ``--model`` is not given to ``geoseg train``.
DEFAULT_CHECKPOINT = "nvidia/mit-b0"


@dataclass(frozen=True)
class SegformerOptions:
    """Fine-tuning and prediction settings.

    ``lora``: train LoRA adapters on the attention projections (True) or every weight
    (False). ``r``, ``alpha``, ``dropout``, ``bias``, ``target_modules``: the LoRA
    configuration; empty ``target_modules`` means the attention query and value
    projections, found by name in the loaded model. ``jitter``: strength of the per-band
    brightness/contrast augmentation, in standard deviations of each band.
    """

    lora: bool = True
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: tuple[str, ...] = ()
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    augment: bool = True
    jitter: float = 0.1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be a positive integer (LoRA rank), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive (LoRA scaling), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be none, all or lora_only, got {self.bias!r}")
        if isinstance(self.target_modules, str):
            parts = [p.strip() for p in self.target_modules.split(",") if p.strip()]
            object.__setattr__(self, "target_modules", tuple(parts))
        if any(not name for name in self.target_modules):
            raise ValueError(
                "target_modules must be comma-separated module names, e.g. q_proj,v_proj"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
