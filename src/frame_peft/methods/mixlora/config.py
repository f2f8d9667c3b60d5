"""MixLoRA config (Li et al. 2024, arXiv:2404.15159; TUDB-Labs/MixLoRA, TUDB-Labs/MoE-PEFT).

MixLoRA adapts whole FFN blocks: one router per block, each expert the block's own FFN with LoRA
on its gate/up/down projections, plus plain LoRA on the attention projections. It differs from
``moe-lora`` (MoLA style: one router and E LoRA experts per adapted Linear).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import RoutingConfig

# MoE-PEFT templates/mixlora.json (commit 40f8cb7): q, k, v, o, gate, down, up all true.
MIXLORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class MixLoRAConfig(RoutingConfig):
    """E FFN experts per gated-FFN block (LoRA on gate/up/down), LoRA on the other targets.

    Targets that are ``gate_proj``/``up_proj``/``down_proj`` of a LLaMA/Qwen2-style gated MLP make
    that block a MixLoRA block (experts get LoRA on the targeted projections only, as in the
    authors' code); every other target (attention) gets one plain LoRA with the same r, α and
    dropout. Defaults follow MoE-PEFT's ``templates/mixlora.json`` and ``MixLoraConfig``:

    Args:
        target_modules: default q, k, v, o, gate, up, down (template).
        rank: r = 16, alpha: α = 32 (``None`` = 2r), dropout: 0.05 (template).
        num_experts: E = 8; top_k: k = 2 (template; ``top_k`` config default 2).
        aux_loss: ``"mixtral"`` (default; MoE-PEFT's ``_mixtral_load_balancing_loss_func``:
            ``E · Σ_e c_e P_e`` with ``c_e`` the share of tokens that picked e in any of their k
            slots, so k at perfect balance), ``"switch"`` (the library's slot-share Switch loss,
            1 at balance) or ``"none"`` (``router_loss: false``).
        aux_loss_coef: 0.001 (``router_aux_loss_coef`` default in MoE-PEFT's config.py; the
            README's example uses 0.01).
        router_jitter: 0 (``jitter_noise`` 0.0); applied to the router input only.
    """

    method: ClassVar[str] = "mixlora"
    aux_kinds: ClassVar[tuple[str, ...]] = ("mixtral", "switch", "none")

    target_modules: list[str] | str = field(default_factory=lambda: list(MIXLORA_TARGETS))
    rank: int = 16
    aux_loss: str | None = "mixtral"
    aux_loss_coef: float = 0.001
