"""MoE-LoRA config (MixLoRA / MoLA style): E LoRA experts behind a softmax top-k router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...core.config import AdapterConfig, _check_positive_int


@dataclass
class MoELoRAConfig(AdapterConfig):
    """E LoRA experts per target module, softmax top-k router with renormalisation.

    Args:
        num_experts: E experts per module (overridable per module).
        top_k: experts per token, ``1 <= top_k <= num_experts`` (``top_k == num_experts`` is the
            dense softmax router).
        aux_loss: ``"switch"`` (per-expert Switch loss, default here) or ``"none"``.
        aux_loss_coef: coefficient of the balance loss (0.01).
        z_loss_coef: coefficient of the router z-loss (0 = off).
        router_jitter: multiplicative input noise for the router in training (0 = off).
    """

    method: ClassVar[str] = "moe-lora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("switch", "none")

    rank: int = 4
    num_experts: int = 8
    top_k: int = 2
    aux_loss: str = "switch"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    router_jitter: float = 0.0

    def validate_settings(self, s: dict[str, Any]) -> None:
        super().validate_settings(s)
        _check_positive_int("num_experts", s["num_experts"])
        _check_positive_int("top_k", s["top_k"])
        if s["top_k"] > s["num_experts"]:
            raise ValueError(
                f"top_k ({s['top_k']}) cannot exceed num_experts ({s['num_experts']}); lower "
                "top_k or add experts"
            )
        if s["aux_loss"] not in self.aux_kinds:
            raise ValueError(
                f"aux_loss must be one of {list(self.aux_kinds)}, got {s['aux_loss']!r}"
            )
        for key in ("aux_loss_coef", "z_loss_coef"):
            if not isinstance(s[key], int | float) or s[key] < 0:
                raise ValueError(f"{key} must be a number >= 0, got {s[key]!r}")
        if not isinstance(s["router_jitter"], int | float) or not 0 <= s["router_jitter"] < 1:
            raise ValueError(f"router_jitter must be in [0, 1), got {s['router_jitter']!r}")
