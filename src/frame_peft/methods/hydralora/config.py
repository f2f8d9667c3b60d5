"""HydraLoRA config: one shared A, E output heads B_e, a dense softmax router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...core.config import AdapterConfig, _check_positive_int


@dataclass
class HydraLoRAConfig(AdapterConfig):
    """HydraLoRA (METHODS.md §4): ``Δy = (α/r) Σ_e g_e(x) B_e A x``, dense softmax gates ``g``.

    Defaults (choice, where METHODS.md is silent): ``num_experts = 3`` heads and ``rank = 8``,
    the small head count and LoRA-sized shared rank of the HydraLoRA paper's setups;
    ``alpha = None`` (= 2·rank, the library-wide convention); ``aux_loss = "none"``: HydraLoRA
    trains its router with the task loss only.

    Args:
        num_experts: E output heads B_e sharing one A (overridable per module). E = 1 is LoRA.
        aux_loss: ``"none"`` (default) or ``"switch"``: the Switch loss ``E · Σ_e f_e P_e`` with
            ``P`` the mean dense probabilities and ``f`` the share of tokens whose most probable
            head is e (the dense router uses every head, so the load is counted on each token's
            top head; counted over all heads, ``f`` would be uniform and the loss a constant 1).
        aux_loss_coef: coefficient of the balance loss (0.01), used when ``aux_loss="switch"``.
        z_loss_coef: coefficient of the router z-loss (0 = off).
        router_jitter: multiplicative input noise for the router in training (0 = off).
    """

    method: ClassVar[str] = "hydralora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("none", "switch")

    rank: int = 8
    num_experts: int = 3
    aux_loss: str = "none"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    router_jitter: float = 0.0

    def validate_settings(self, s: dict[str, Any]) -> None:
        super().validate_settings(s)
        _check_positive_int("num_experts", s["num_experts"])
        if s["aux_loss"] not in self.aux_kinds:
            raise ValueError(
                f"aux_loss must be one of {list(self.aux_kinds)}, got {s['aux_loss']!r}"
            )
        for key in ("aux_loss_coef", "z_loss_coef"):
            if isinstance(s[key], bool) or not isinstance(s[key], int | float) or s[key] < 0:
                raise ValueError(f"{key} must be a number >= 0, got {s[key]!r}")
        jitter = s["router_jitter"]
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ValueError(f"router_jitter must be in [0, 1), got {jitter!r}")
