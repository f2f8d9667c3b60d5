"""MoE-LoRA config (MoLA style, one router per adapted Linear): E LoRA experts behind a softmax
top-k router."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import RoutingConfig


@dataclass
class MoELoRAConfig(RoutingConfig):
    """E LoRA experts per target module, softmax top-k router with renormalisation.

    The routing fields and their checks come from :class:`~frame_peft.core.config.RoutingConfig`.

    Args:
        num_experts: E experts per module (overridable per module). Default 8.
        top_k: experts per token, ``1 <= top_k <= num_experts`` (``top_k == num_experts`` is the
            dense softmax router). Default 2.
        aux_loss: ``"switch"`` (per-expert Switch loss, default here) or ``"none"``.
        aux_loss_coef: coefficient of the balance loss (0.01).
        z_loss_coef: coefficient of the router z-loss (0 = off).
        router_jitter: multiplicative input noise for the router in training (0 = off).
    """

    method: ClassVar[str] = "moe-lora"

    rank: int = 4
