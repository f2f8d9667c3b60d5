"""HydraLoRA config: one shared A, E output heads B_e, a dense softmax router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import RoutingConfig


@dataclass
class HydraLoRAConfig(RoutingConfig):
    """HydraLoRA (docs/methods.md §4): ``Δy = (α/r) Σ_e g_e(x) B_e A x``, dense softmax gates.

    Defaults (choice, where the spec is silent): ``num_experts = 3`` heads and ``rank = 8``,
    the small head count and LoRA-sized shared rank of the HydraLoRA paper's setups;
    ``alpha = None`` (= 2·rank, the library-wide convention); ``aux_loss = "none"``: HydraLoRA
    trains its router with the task loss only. ``top_k`` must stay ``None``: the router is dense.

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
    dense_only: ClassVar[bool] = True

    rank: int = 8
    num_experts: int = 3
    top_k: int | None = None
    aux_loss: str | None = "none"
