"""Options of the SegFormer backend (``--option key=value`` or a ``--config`` file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from geoseg.errors import OptionError
from geoseg.training import TrainingOptions

#: Base checkpoint when ``--model`` is not given to ``geoseg train``.
DEFAULT_CHECKPOINT = "nvidia/mit-b0"


@dataclass(frozen=True)
class SegformerOptions(TrainingOptions):
    """Fine-tuning and prediction settings (plus the training core's, e.g. ``warmup``).

    ``lora``: train LoRA adapters on the attention projections (True) or every weight
    (False). ``r``, ``alpha``, ``dropout``, ``bias``, ``target_modules``: the LoRA
    configuration; empty ``target_modules`` means the attention query and value
    projections, found by name in the loaded model.
    """

    lora: bool = True
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise OptionError(f"option r must be a positive integer (LoRA rank), got {self.r}")
        if self.alpha <= 0:
            raise OptionError(f"option alpha must be positive (LoRA scaling), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise OptionError(f"option dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise OptionError(f"option bias must be none, all or lora_only, got {self.bias!r}")
        if isinstance(self.target_modules, str):
            parts = [p.strip() for p in self.target_modules.split(",") if p.strip()]
            object.__setattr__(self, "target_modules", tuple(parts))
        if any(not name for name in self.target_modules):
            raise OptionError(
                "option target_modules must be comma-separated module names, e.g. q_proj,v_proj"
            )
