"""MixLoRA: a sparse mixture of LoRA-adapted copies of a frozen gated FFN block.

For a LLaMA/Qwen2 block ``FFN(x) = W_d (act(W_g x) ⊙ W_u x)`` (W_g, W_u (m, d), W_d (d, m)),
expert e = 1..E has LoRA factors ``A_{p,e}`` (stored stacked, (E, r, d_in_p)) and ``B_{p,e}``
((E, d_out_p, r)) on each targeted projection p ∈ {g, u, d} (untargeted ones stay frozen),
s = α / r::

    W_{p,e} = W_p + s · B_{p,e} A_{p,e}
    FFN_e(x) = W_{d,e} (act(W_{g,e} x) ⊙ W_{u,e} x)                        (d,)

One router per block, ``logits = W_r x`` (W_r (E, d), no bias, N(0, 0.02), float32)::

    p = softmax(logits)  (T, E);  S = top-k(p);  ĝ_e = p_e / Σ_{j∈S} p_j for e ∈ S, else 0
    y_t = Σ_{e∈S_t} ĝ_{t,e} · FFN_e(x_t)                                      (T, d)

Fast path (:meth:`MixLoRAAdapter.forward`, as the authors' ``MixtralSparseMoe``): the frozen
W_g x and W_u x once for all T tokens, then per expert only the tokens that selected it (sorted
once, one host sync), their LoRA terms and W_d, scattered back with their gates (float32 sum).
:meth:`MixLoRAAdapter.reference_forward` runs every expert on every token densely (tests).

Balance loss ``"mixtral"`` (MoE-PEFT ``_mixtral_load_balancing_loss_func``), over the n valid
(non-padding) tokens of the block with mask m::

    c_e = (1/n) Σ_t m_t · [e ∈ S_t]        P_e = (1/n) Σ_t m_t · p_{t,e}        L = E · Σ_e c_e P_e

(c has no gradient; L = k at perfect balance), times ``aux_loss_coef`` (0.001).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.adapter import LayerContext, NotMergeableError
from ...core.blocks import BlockAdapter
from ...core.mixture import init_lora_factors
from ...core.routed import RoutedAdapter
from ...routing import Routing, mixtral_balance_loss, switch_loss
from .config import MixLoRAConfig


class MixLoRAAdapter(BlockAdapter, RoutedAdapter):
    """MixLoRA on one gated FFN block (see the module docstring).

    Parameters: ``A[p]`` (E, r, d_in_p) Kaiming-uniform and ``B[p]`` (E, d_out_p, r) zero for each
    targeted projection p, ``router.weight`` (E, d) N(0, 0.02) float32. Dropout is applied to each
    LoRA's own input (independent masks per expert and projection, as the authors' ``Lora``).
    """

    block_kind = "gated-ffn"
    linear_method = "lora"
    fp32_parameters = ("router.weight",)

    def __init__(
        self,
        block: nn.Module,
        targets: tuple[str, ...],
        config: MixLoRAConfig,
        context: LayerContext,
    ) -> None:
        super().__init__(block, targets, config, context)
        self.rank = config.rank
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for proj in self.targets:
            d_in, d_out = self.shapes[proj]
            a = nn.Parameter(torch.empty(self.num_experts, self.rank, d_in))
            b = nn.Parameter(torch.empty(self.num_experts, d_out, self.rank))
            init_lora_factors(a, b)
            self.A[proj], self.B[proj] = a, b
        self.router = self.make_router()
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    # Routing -----------------------------------------------------------------------------------
    def balance_loss(self, routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
        if self.aux_kind == "switch":
            return switch_loss(routing, mask)
        return mixtral_balance_loss(routing, mask)

    # Experts -----------------------------------------------------------------------------------
    def _proj(
        self, block: nn.Module, proj: str, expert: int, x: torch.Tensor, base: torch.Tensor | None
    ) -> torch.Tensor:
        """``W_p x + s · B_{p,e} A_{p,e} dropout(x)`` for x (n, d_in_p) -> (n, d_out_p); ``base``
        is ``W_p x`` when already computed."""
        y = getattr(block, proj)(x) if base is None else base
        if proj not in self.A:
            return y
        a, b = self.A[proj][expert].to(x.dtype), self.B[proj][expert].to(x.dtype)
        return y + self.scale * F.linear(F.linear(self.lora_dropout(x), a), b)

    def expert_output(
        self,
        block: nn.Module,
        expert: int,
        x: torch.Tensor,
        base_gate: torch.Tensor | None = None,
        base_up: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``FFN_e(x)`` for x (n, d) -> (n, d)."""
        gate = self._proj(block, "gate_proj", expert, x, base_gate)
        up = self._proj(block, "up_proj", expert, x, base_up)
        return self._proj(block, "down_proj", expert, block.act_fn(gate) * up, None)

    # Forward -----------------------------------------------------------------------------------
    def forward(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Sparse path: each expert runs on the tokens that selected it. x (..., d) -> (..., d)."""
        lead = x.shape[:-1]
        routing = self.route(x)
        flat = x.reshape(-1, self.in_features)
        num_tokens, k = routing.indices.shape
        base_gate, base_up = block.gate_proj(flat), block.up_proj(flat)
        experts = routing.indices.reshape(-1)  # (T·k,)
        order = torch.argsort(experts, stable=True)
        tokens = torch.arange(num_tokens, device=x.device).repeat_interleave(k)[order]
        weights = routing.gates[tokens, experts[order]]  # (T·k,) renormalised top-k gates
        counts = torch.bincount(experts, minlength=self.num_experts).tolist()
        out = torch.zeros(num_tokens, self.out_features, device=x.device, dtype=torch.float32)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            tok, w = tokens[start : start + count], weights[start : start + count]
            start += count
            y = self.expert_output(block, e, flat[tok], base_gate[tok], base_up[tok])
            out.index_add_(0, tok, y.float() * w.unsqueeze(-1))
        return out.to(x.dtype).reshape(*lead, self.out_features)

    def reference_forward(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Dense path: ``Σ_e ĝ_e FFN_e(x)`` with every expert on every token (no aux record)."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        gates = self.routing(flat, lead, self.state.token_mask(lead)).gates
        out = sum(
            gates[:, e : e + 1] * self.expert_output(block, e, flat).float()
            for e in range(self.num_experts)
        )
        return out.to(x.dtype).reshape(*lead, self.out_features)

    # Protocol ----------------------------------------------------------------------------------
    def block_deltas(self) -> dict[str, torch.Tensor]:
        """One expert (top-1 of 1, gate 1): ``{p: s · B_{p,1} A_{p,1}}``; else not mergeable."""
        if self.num_experts != 1:
            raise NotMergeableError(
                f"{self.name}: MixLoRA with {self.num_experts} experts routes each token to "
                "different FFN experts, so the block has no fixed weights to merge; only "
                "one-expert MixLoRA merges"
            )
        return {p: self.scale * (self.B[p][0] @ self.A[p][0]) for p in self.targets}

    def active_parameters(self) -> int:
        """k experts' LoRA factors plus the router."""
        per_expert = sum(self.A[p].numel() + self.B[p].numel() for p in self.targets)
        k = min(self.top_k, self.num_experts)
        return k * per_expert // self.num_experts + self.router.weight.numel()
