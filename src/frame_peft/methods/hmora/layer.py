"""HMoRA: hierarchical token + task routing over a packed mixture of low-rank experts.

For a module at depth l with input tokens h_t (the clean input, (T, d_in)) and adapter input x_t::

    p_t  = softmax(W_l h_t)                                   (T, E)  token router, fp32
    c_t  = Σ_{s≤t} m_s h_s / max(1, Σ_{s≤t} m_s)              (T, d_in) causal masked mean-pool
    z_t  = tanh(W_enc c_t + b_enc)                            (T, d_task) task encoder
           (or z_t = Emb[task_id of t's sequence] when ids are given and ``num_tasks`` is set)
    q_t  = softmax(W_s z_t)                                   (T, E)  task router
    w_t  = (1 − σ(β_l)) p_t + σ(β_l) q_t                      (T, E)  hierarchical mix
    g_t  = w_t, or top-k of w_t renormalised to sum to 1      (T, E)  gates
    Δy_t = s · B((A x_t) ⊙ expand(g_t)),  s = α/√r            (T, d_out)

with the packed experts A (E·r, d_in) (rows e·r … e·r+r−1 are expert e's A_e) and B (d_out, E·r);
``expand`` repeats each gate r times. m is the 0/1 token mask (padding = 0).

Why the pool is causal (a prefix mean), not a mean over the whole sequence: in a causal LM a
whole-sequence mean lets every position see the future tokens through z (a label leak in
training), and it cannot be made consistent with a KV cache (the cached keys/values of the early
positions were computed with an older z). The prefix mean has neither problem; at the last
position of a sequence it is the whole-sequence mean.

Cached generation: during a decoding step the module input holds only the newest S positions of a
longer attention mask (B, L). The adapter keeps, per module, the running masked sum and count of
each batch row after the previous forward (detached; never saved) and continues the prefix mean
from them, so ``generate()`` with and without the KV cache route identically. A decoding step whose
prefix was not seen (different batch size or length) raises instead of silently routing on the
new tokens alone. Cached decoding is detected from the attention mask, which ``generate`` always
passes; cache reordering (beam search) is not tracked, so use greedy or sampling decoding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..._checks import check_all
from ...core.adapter import LayerContext
from ...core.mixture import LowRankMixture, init_lora_factors
from ...routing import Router, Routing, top_k_gates
from .config import HMoRAConfig, initial_beta

_EPS = 1e-12


def entropy_loss(w: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``L = −H(w̄) + (1/n) Σ_t m_t H(w_t)`` over valid tokens; returns ``(L, n)``.

    Shapes: w (T, E) routing weights (rows sum to 1), mask (T,) 0/1 or None (all valid).
    ``w̄ = Σ_t m_t w_t / n``, ``H(v) = −Σ_e v_e log v_e``, ``n = max(1, Σ_t m_t)``. Minimising
    it spreads the batch over the experts while making each token's choice sharp.
    """
    w = w.float()
    m = torch.ones(w.shape[0], device=w.device) if mask is None else mask.float().reshape(-1)
    m = m.to(w.device)
    n = m.sum().clamp_min(1.0)
    mean_w = (w * m.unsqueeze(-1)).sum(0) / n
    h_mean = -(mean_w * mean_w.clamp_min(_EPS).log()).sum()
    h_tok = -(w * w.clamp_min(_EPS).log()).sum(-1)
    return -h_mean + (h_tok * m).sum() / n, n


def _sequence_shape(lead: torch.Size) -> tuple[int, int]:
    """(B, S) of a layer input of leading shape ``lead``: the last axis is the sequence."""
    if len(lead) == 0:
        return 1, 1
    if len(lead) == 1:
        return int(lead[0]), 1  # (B, d) inputs: each row is its own one-token sequence
    return math.prod(lead[:-1]), int(lead[-1])


class HMoRAAdapter(LowRankMixture):
    """E packed low-rank experts with a hierarchical token/task router (see module docstring)."""

    fp32_parameters = (
        "router.weight",
        "task_router.weight",
        "task_encoder.weight",
        "task_encoder.bias",
        "task_embedding.weight",
        "beta",
    )

    def __init__(
        self, in_features: int, out_features: int, config: HMoRAConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        e, r = self.num_experts, self.rank
        self.scale = float(config.alpha) / math.sqrt(r)
        self.task_routing = bool(config.task_routing)
        self.num_tasks = config.num_tasks if self.task_routing else None
        if self.task_routing:
            d_task = config.task_dim
            self.task_encoder = nn.Linear(in_features, d_task)
            self.task_router = Router(d_task, e, None)
            if self.num_tasks is not None:
                self.task_embedding = nn.Embedding(self.num_tasks, d_task)
            beta = initial_beta(config, context.layer_index, context.num_layers)
            self.beta = nn.Parameter(torch.tensor(beta))
        # Running (sum, count) of the causal pool per batch row after the latest forward.
        self._prefix: dict[str, Any] | None = None

    def make_factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """Packed experts: ``A`` (E·r, d_in), rows e·r … e·r+r−1 are A_e; ``B`` (d_out, E·r)."""
        e, r, d_in = self.num_experts, self.rank, self.in_features
        a = nn.Parameter(torch.empty(e * r, d_in))
        b = nn.Parameter(torch.empty(self.out_features, e * r))
        init_lora_factors(a.data.view(e, r, d_in), b.data)
        return a, b

    def make_router(self, in_features: int | None = None) -> Router:
        return Router(self.in_features, self.num_experts, None, self.config.router_jitter)

    # Routing ---------------------------------------------------------------------------------
    def _task_ids(self, num_seqs: int, device: torch.device) -> torch.Tensor | None:
        ids = self.state.current.task_ids
        if ids is None or self.num_tasks is None:
            return None  # without num_tasks, ids are ignored (as other methods do): encoder
        ids = torch.as_tensor(ids, device=device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
            raise ValueError(
                f"{self.name}: task_ids must be a 1-D integer tensor (one id per sequence), "
                f"got dtype {ids.dtype} and shape {tuple(ids.shape)}"
            )
        if ids.shape[0] != num_seqs:
            raise ValueError(
                f"{self.name}: got {ids.shape[0]} task ids for a batch of {num_seqs} sequences"
            )
        bad = (ids < 0) | (ids >= self.num_tasks)
        check_all(
            ~bad,
            lambda: (
                f"{self.name}: task ids {ids[bad].tolist()} are out of range for "
                f"num_tasks={self.num_tasks} (valid ids: 0..{self.num_tasks - 1})"
            ),
        )
        return ids

    def _causal_pool(
        self, h: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Prefix mean ``c_t`` (T, d_in) of fp32 h (T, d_in), continued across decode steps."""
        b, s = _sequence_shape(lead)
        h = h.view(b, s, -1)
        m = torch.ones(b, s, device=h.device) if mask is None else mask.float().view(b, s)
        csum = torch.cumsum(h * m.unsqueeze(-1), dim=1)
        count = torch.cumsum(m, dim=1)
        full = self.state.current.attention_mask
        decoding = (
            full is not None
            and len(lead) == 2
            and lead[0] == full.shape[0]
            and lead[1] < full.shape[1]
        )
        length = s
        if decoding:
            length = int(full.shape[1])
            prev = self._prefix
            if prev is None or prev["batch"] != b or prev["length"] != length - s:
                seen = None if prev is None else (prev["batch"], prev["length"])
                raise RuntimeError(
                    f"{self.name}: cached decoding step of {s} new token(s) after {length - s} "
                    f"cached positions, but this HMoRA module last saw (batch, length) = {seen}. "
                    "The task encoder pools over the whole prefix, so run the prompt through "
                    "this model first (as generate() does) or decode without a KV cache"
                )
            csum = csum + prev["sum"].to(csum.dtype).unsqueeze(1)
            count = count + prev["count"].to(count.dtype).unsqueeze(1)
        self._prefix = {
            "batch": b,
            "length": length,
            "sum": csum[:, -1].detach(),
            "count": count[:, -1].detach(),
        }
        return (csum / count.clamp_min(1.0).unsqueeze(-1)).reshape(b * s, -1)

    def routing_weights(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``w`` (T, E) float32 for route_x (T, d_in) of a layer input with leading shape lead."""
        h = route_x.float()
        p = torch.softmax(self.router.logits(h), dim=-1)
        if not self.task_routing:
            return p
        b, s = _sequence_shape(lead)
        ids = self._task_ids(b, h.device)
        if ids is not None:
            self._prefix = None  # the pool was not tracked: a later id-less decode step raises
            z = self.task_embedding.weight.float()[ids].repeat_interleave(s, dim=0)
        else:
            enc = self.task_encoder
            z = torch.tanh(
                nn.functional.linear(
                    self._causal_pool(h, lead, mask), enc.weight.float(), enc.bias.float()
                )
            )
        q = torch.softmax(self.task_router.logits(z), dim=-1)
        g = torch.sigmoid(self.beta.float())
        return (1.0 - g) * p + g * q

    def routing(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> Routing:
        """The mix ``w`` (T, E) as probabilities, its top-k (or all) as gates."""
        w = self.routing_weights(route_x, lead, mask)
        indices, gates = top_k_gates(w, self.top_k)
        return Routing(w.clamp_min(_EPS).log(), w, indices, gates)

    def aux_losses(self, routing: Routing, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"entropy": c · L}`` (:func:`entropy_loss` of the mix w), nothing when off."""
        if self.aux_kind == "none" or self.aux_coef <= 0:
            return {}
        loss, _ = entropy_loss(routing.probs, mask)
        return {"entropy": self.aux_coef * loss}

    # Update ----------------------------------------------------------------------------------
    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked views ``(A, B)``: (E, r, d_in) and (E, d_out, r) of the packed parameters."""
        e, r = self.num_experts, self.rank
        a = self.A.view(e, r, self.in_features)
        b = self.B.view(self.out_features, e, r).permute(1, 0, 2)
        return a, b

    def active_parameters(self) -> int:
        k = self.num_experts if self.top_k is None else min(self.top_k, self.num_experts)
        experts = k * self.rank * (self.in_features + self.out_features)
        routing = sum(p.numel() for n, p in self.named_parameters() if n not in ("A", "B"))
        if self.num_tasks is not None:  # a token uses one embedding row, not the table
            routing -= self.task_embedding.weight.numel() - self.task_embedding.weight.shape[1]
        return experts + routing
