"""The mixture of low-rank experts that MoE-LoRA and FRAME share.

Experts e = 1..E are stored stacked, ``A`` (E, r, d_in) and ``B`` (E, d_out, r). A method may
transform them first (:meth:`LowRankMixture.expert_factors` returns effective factors of rank R;
FRAME returns R = 2r). For T tokens and gates ``g`` (T, E) from the router::

    Δy_t = s · Σ_e g_{t,e} · B_e A_e x_t,        s = α / r

Fast path (:func:`packed_mixture`): all experts in two matmuls, as one LoRA of rank E·R whose
middle activations are scaled by the gates: ``h = x [A_1; …; A_E]ᵀ`` (T, E·R), ``h ⊙ expand(g)``,
then ``[B_1 … B_E]``. Unselected experts have zero gate, so this equals the top-k sum exactly; it
costs 2·T·E·R·(d_in + d_out) flops, a few percent of the base layer for E·R ≪ d, with no gather,
scatter or Python loop. :meth:`LowRankMixture.reference_forward` keeps the plain per-expert loop
that tests compare against.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .adapter import LayerContext, NotMergeableError
from .config import RoutingConfig
from .routed import RoutedAdapter


def packed_mixture(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gates: torch.Tensor
) -> torch.Tensor:
    """``Σ_e gates[:, e] · B_e A_e x``.

    Shapes: x (T, d_in), a (E, R, d_in), b (E, d_out, R), gates (T, E) -> (T, d_out).
    """
    num_experts, rank, d_in = a.shape
    h = x @ a.reshape(num_experts * rank, d_in).T
    h = (h.view(-1, num_experts, rank) * gates.to(h.dtype).unsqueeze(-1)).reshape(
        -1, num_experts * rank
    )
    return h @ b.permute(1, 0, 2).reshape(b.shape[1], num_experts * rank).T


def slotted_mixture(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gates: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """``Σ_s gates[:, slots[s]] · b[:, s] a[s]ᵀ x``: the packed mixture when experts have
    different ranks (FRAME experts held at order 0 use rank r, the others 2r).

    Shapes: x (T, d_in), a (S, d_in), b (d_out, S), gates (T, E), slots (S,) the expert of each
    of the S rank-one slots -> (T, d_out). With ``slots = arange(E).repeat_interleave(R)`` it is
    :func:`packed_mixture`.
    """
    h = x @ a.T
    h = h * gates.index_select(1, slots).to(h.dtype)
    return h @ b.T


def shared_a_mixture(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gates: torch.Tensor
) -> torch.Tensor:
    """``Σ_e gates[:, e] · B_e A x`` when every expert shares one A (HydraLoRA's heads, HMoRA's
    shared-A variant): ``h = x Aᵀ`` once, then the gate-scaled copies
    ``(h[:, None, :] ⊙ g[..., None]).reshape(T, E·r)`` and one matmul with ``[B_1 … B_E]``.

    Shapes: x (T, d_in), a (r, d_in), b (d_out, E·r) (columns e·r … e·r+r−1 are B_e),
    gates (T, E) -> (T, d_out). Cost ``2·T·r·(d_in + E·d_out)`` flops.
    """
    num_experts, rank = gates.shape[-1], a.shape[0]
    h = x @ a.T
    h = (h.unsqueeze(1) * gates.to(h.dtype).unsqueeze(-1)).reshape(-1, num_experts * rank)
    return h @ b.T


def init_lora_factors(a: torch.Tensor, b: torch.Tensor) -> None:
    """A Kaiming-uniform (as PEFT and torch's Linear: a=√5) per expert, B zero."""
    with torch.no_grad():
        for a_e in a.reshape(-1, *a.shape[-2:]):
            nn.init.kaiming_uniform_(a_e, a=math.sqrt(5))
        b.zero_()


class LowRankMixture(RoutedAdapter):
    """E low-rank experts behind a top-k router, with explicit auxiliary losses.

    Parameters ``A`` (E, r, d_in) Kaiming-uniform, ``B`` (E, d_out, r) zero (a method may store
    them in another layout: :meth:`make_factors`, :meth:`expert_factors`) and ``router``.
    """

    fp32_parameters = ("router.weight",)

    def __init__(
        self, in_features: int, out_features: int, config: RoutingConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        self.rank = config.rank
        self.A, self.B = self.make_factors()
        self.router = self.make_router()

    # What a method changes -------------------------------------------------------------------
    def make_factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The expert parameters: stacked ``A`` (E, r, d_in) and ``B`` (E, d_out, r)."""
        e, r = self.num_experts, self.rank
        a = nn.Parameter(torch.empty(e, r, self.in_features))
        b = nn.Parameter(torch.empty(e, self.out_features, r))
        init_lora_factors(a, b)
        return a, b

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective ``(A, B)``: (E, R, d_in) and (E, d_out, R). Plain MoE-LoRA: the parameters."""
        return self.A, self.B

    def mixture_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the forward multiplies: ``(A, B, None)`` as :meth:`expert_factors` gives them, or
        flat ``(A (S, d_in), B (d_out, S), slots (S,))`` for :func:`slotted_mixture` when the
        experts' ranks differ. Same maths either way."""
        a, b = self.expert_factors()
        return a, b, None

    # Shared machinery ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        routing = self.route(route_x)
        out = self.mix(x.reshape(-1, self.in_features), routing.gates)
        return out.reshape(*lead, self.out_features)

    def mix(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``s · Σ_e gates[:, e] · ΔW_e x`` for flat x (T, d_in) and gates (T, E) -> (T, d_out)."""
        a, b, slots = self.mixture_factors()
        a, b = a.to(x.dtype), b.to(x.dtype)
        if slots is None:
            out = packed_mixture(x, a, b, gates)
        else:
            out = slotted_mixture(x, a, b, gates, slots)
        return self.scale * out

    def reference_forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """Plain dense-gated path: every expert's ``B_e A_e x`` times its gate, summed (tests)."""
        lead = x.shape[:-1]
        flat = route_x.reshape(-1, self.in_features)
        gates = self.routing(flat, lead, self.state.token_mask(lead)).gates
        a, b = self.expert_factors()
        xf = x.reshape(-1, self.in_features)
        out = sum(
            gates[:, e : e + 1].to(x.dtype) * (xf @ a[e].T @ b[e].T)
            for e in range(self.num_experts)
        )
        return (self.scale * out).reshape(*lead, self.out_features)

    def delta_weight(self) -> torch.Tensor:
        if self.num_experts != 1:
            raise NotMergeableError(
                f"{self.name}: a mixture of {self.num_experts} experts routes each token "
                "differently, so it has no single ΔW to merge; only one-expert mixtures merge"
            )
        a, b = self.expert_factors()
        return self.scale * (b[0] @ a[0])

    def active_parameters(self) -> int:
        per_expert = (self.A.numel() + self.B.numel()) // self.num_experts
        k = self.num_experts if self.top_k is None else min(self.top_k, self.num_experts)
        return k * per_expert + self.router.weight.numel()
