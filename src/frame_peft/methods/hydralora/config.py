"""HydraLoRA config: one shared A, E output heads B_e, a dense softmax router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import RoutingConfig


@dataclass
class HydraLoRAConfig(RoutingConfig):
    """HydraLoRA (docs/methods.md §4.3): ``Δy = (α/r) Σ_e g_e(x) B_e A x``, dense softmax gates.

    Defaults are the authors' fine-tuning script (GitHub Clin0212/HydraLoRA,
    ``HydraLoRA/fine-tuning.sh``): ``num_experts = 4`` heads (``lora_b_nums=4``), ``rank = 4``,
    ``alpha = 32`` (scale α/r = 8), router initialised as their ``nn.Linear`` (Kaiming-uniform,
    no bias, no temperature); ``aux_loss = "none"``: HydraLoRA trains its router with the task
    loss only (their layer returns a zero balance term). ``top_k`` must stay ``None``: the router
    is dense. This library's earlier defaults were E = 3, r = 8, α = 2r and
    ``router_init="normal"``.

    Args:
        num_experts: E output heads B_e sharing one A (overridable per module). E = 1 is LoRA.
        alpha: scale numerator (α/r multiplies the update); 32 as in the authors' script, kept
            when ``rank`` is overridden per module (``None`` gives the library-wide 2·rank).
        router_init: ``"kaiming_uniform"`` (default): the router weight (E, d_in) drawn
            U(−1/√d_in, 1/√d_in), PyTorch's ``nn.Linear`` default the authors keep
            (``kaiming_uniform_(a=√5)``); ``"normal"``: N(0, 0.02), the library's router init.
        aux_loss: ``"none"`` (default) or ``"switch"``: the Switch loss ``E · Σ_e f_e P_e`` with
            ``P`` the mean dense probabilities and ``f`` the share of tokens whose most probable
            head is e (the dense router uses every head, so the load is counted on each token's
            top head; counted over all heads, ``f`` would be uniform and the loss a constant 1).
            Not in the authors' code: an option of this library.
        aux_loss_coef: coefficient of the balance loss (0.01), used when ``aux_loss="switch"``.
        z_loss_coef: coefficient of the router z-loss (0 = off).
        router_jitter: multiplicative input noise for the router in training (0 = off).
    """

    method: ClassVar[str] = "hydralora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("none", "switch")
    dense_only: ClassVar[bool] = True

    rank: int = 4
    alpha: float | None = 32.0
    num_experts: int = 4
    top_k: int | None = None
    aux_loss: str | None = "none"
    router_init: str = "kaiming_uniform"
