"""MoE-LoRA: ``Δy = (α/r) Σ_{e∈topk(x)} ĝ_e(x) B_e A_e x`` with the per-expert Switch loss.

Everything lives in :class:`frame_peft.core.mixture.LowRankMixture`; MoE-LoRA is that mixture
with untransformed experts.
"""

from __future__ import annotations

from ...core.mixture import LowRankMixture


class MoELoRAAdapter(LowRankMixture):
    pass
