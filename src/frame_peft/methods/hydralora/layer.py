"""HydraLoRA: one shared down-projection A and E up-projection heads B_e, densely gated.

Shapes: A (r, d_in) Kaiming-uniform, B (E, d_out, r) zero, router W_g (E, d_in) float32. For T
tokens x (T, d_in) with dense softmax gates ``g = softmax(x W_gᵀ)`` (T, E)::

    Δy_t = (α/r) Σ_e g_{t,e} · B_e A x_t

Fast path (no loop over heads): ``h = x Aᵀ`` (T, r) once, since A is shared; then the gate-scaled
copies ``h̃ = (h[:, None, :] ⊙ g[..., None]).reshape(T, E·r)`` and one matmul with the packed
heads ``[B_1 … B_E]`` (d_out, E·r): ``Δy = (α/r) h̃ [B_1 … B_E]ᵀ``. Cost 2·T·r·(d_in + E·d_out)
flops. :meth:`HydraLoRAAdapter.reference_forward` is the plain per-head loop the tests compare.

With E = 1 the gate is 1 and HydraLoRA is LoRA exactly (mergeable: ΔW = (α/r) B_1 A).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...core.adapter import Adapter, NotMergeableError
from ...routing import Router, Routing, RoutingState, balance_and_z_losses, switch_loss


class HydraLoRAAdapter(Adapter):
    fp32_parameters = ("router.weight",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        settings: dict[str, Any],
        state: RoutingState,
        name: str,
    ) -> None:
        super().__init__(in_features, out_features, settings, state, name)
        e, r = settings["num_experts"], settings["rank"]
        self.num_experts, self.rank = e, r
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(e, out_features, r))
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.router = Router(in_features, e, None, settings.get("router_jitter", 0.0))
        self.aux_kind = settings.get("aux_loss", "none")
        self.aux_coef = float(settings.get("aux_loss_coef", 0.01))
        self.z_coef = float(settings.get("z_loss_coef", 0.0))

    def aux_losses(self, routing: Routing, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Optional Switch loss (the load of a dense router counts each token's most probable
        head, see :func:`~frame_peft.routing.load_and_importance`) and z-loss."""
        balance = switch_loss if self.aux_kind == "switch" else None
        return balance_and_z_losses(routing, mask, self.aux_coef, self.z_coef, balance)

    def route(self, route_x: torch.Tensor) -> Routing:
        """Dense routing of (..., d_in) tokens; records this forward's aux losses, if any."""
        routing = self.router(route_x.reshape(-1, self.in_features))
        mask = self.state.token_mask(route_x.shape[:-1])
        self.state.record_losses(
            self.name, self.aux_losses(routing, mask), mask, len(routing.probs)
        )
        self.state.observe(self.name, routing, route_x.shape[:-1])
        return routing

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """x, route_x (..., d_in) -> Δy (..., d_out)."""
        lead = x.shape[:-1]
        gates = self.route(route_x).gates  # (T, E), dense
        xf = x.reshape(-1, self.in_features)
        h = xf @ self.A.to(x.dtype).T  # (T, r)
        e, r = self.num_experts, self.rank
        h = (h.unsqueeze(1) * gates.to(h.dtype).unsqueeze(-1)).reshape(-1, e * r)  # (T, E·r)
        b = self.B.to(x.dtype).permute(1, 0, 2).reshape(self.out_features, e * r)  # [B_1 … B_E]
        return (self.scale * (h @ b.T)).reshape(*lead, self.out_features)

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
