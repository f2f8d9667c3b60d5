"""HydraLoRA: one shared down-projection A and E up-projection heads B_e, densely gated.

Shapes: A (r, d_in) Kaiming-uniform, B (E, d_out, r) zero, router W_g (E, d_in) float32, no bias,
initialised U(−1/√d_in, 1/√d_in) as the authors' ``nn.Linear`` router (``router_init="normal"``:
N(0, 0.02)). For T tokens with adapter input x (T, d_in) (after dropout) and clean router input
x̄ (T, d_in), dense softmax gates ``g = softmax(x̄ W_gᵀ)`` (T, E), no temperature::

    Δy_t = (α/r) Σ_e g_{t,e} · B_e A x_t         (defaults E = 4, r = 4, α = 32)

Fast path (no loop over heads): ``h = x Aᵀ`` (T, r) once, since A is shared; then the gate-scaled
copies ``h̃ = (h[:, None, :] ⊙ g[..., None]).reshape(T, E·r)`` and one matmul with the packed
heads ``[B_1 … B_E]`` (d_out, E·r): ``Δy = (α/r) h̃ [B_1 … B_E]ᵀ``. Cost 2·T·r·(d_in + E·d_out)
flops. :meth:`HydraLoRAAdapter.reference_forward` is the plain per-head loop the tests compare.

With E = 1 the gate is 1 and HydraLoRA is LoRA exactly (mergeable: ΔW = (α/r) B_1 A).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.adapter import LayerContext, NotMergeableError
from ...core.mixture import shared_a_mixture
from ...core.routed import RoutedAdapter
from .config import HydraLoRAConfig


class HydraLoRAAdapter(RoutedAdapter):
    """Shared ``A`` (r, d_in), heads ``B`` (E, d_out, r), dense ``router``; the optional Switch
    loss counts each token's most probable head (see
    :func:`~frame_peft.routing.load_and_importance`)."""

    fp32_parameters = ("router.weight",)

    def __init__(
        self, in_features: int, out_features: int, config: HydraLoRAConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        e, r = self.num_experts, config.rank
        self.rank = r
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(e, out_features, r))
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.router = self.make_router()  # the authors' nn.Linear(d_in, E, bias=False) init

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` per head: the shared A repeated, (E, r, d_in), and the heads (E, d_out, r)."""
        return self.A.unsqueeze(0).expand(self.num_experts, *self.A.shape), self.B

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """x, route_x (..., d_in) -> Δy (..., d_out)."""
        lead = x.shape[:-1]
        gates = self.route(route_x).gates  # (T, E), dense
        xf = x.reshape(-1, self.in_features)
        e, r = self.num_experts, self.rank
        b = self.B.to(x.dtype).permute(1, 0, 2).reshape(self.out_features, e * r)  # [B_1 … B_E]
        out = shared_a_mixture(xf, self.A.to(x.dtype), b, gates)
        return (self.scale * out).reshape(*lead, self.out_features)

    def reference_forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """Plain loop over heads: ``(α/r) Σ_e g_e · B_e A x`` (for tests; records no losses)."""
        lead = x.shape[:-1]
        gates = self.router(route_x.reshape(-1, self.in_features)).gates
        xf = x.reshape(-1, self.in_features)
        out = sum(
            gates[:, e : e + 1].to(x.dtype) * (xf @ self.A.T @ self.B[e].T)
            for e in range(self.num_experts)
        )
        return (self.scale * out).reshape(*lead, self.out_features)

    def delta_weight(self) -> torch.Tensor:
        if self.num_experts != 1:
            raise NotMergeableError(
                f"{self.name}: HydraLoRA with {self.num_experts} heads gates each token "
                "differently, so it has no single ΔW to merge; only one-head HydraLoRA merges"
            )
        return self.scale * (self.B[0] @ self.A)

    def active_parameters(self) -> int:
        """Shared A, every head (the dense router uses all E) and the router."""
        return self.A.numel() + self.B.numel() + self.router.weight.numel()
