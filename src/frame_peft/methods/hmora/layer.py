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
from ...core.adapter import Adapter, NotMergeableError
from ...core.mixture import init_lora_factors, packed_mixture
from ...routing import Router, Routing, RoutingState
from .config import initial_beta

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


def top_k_gates(w: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gates, indices)``: w (T, E) itself when dense, else its k largest entries per row
    renormalised to sum to 1 (zero elsewhere); indices (T, k) sorted by weight."""
    num_experts = w.shape[-1]
    if top_k is None or top_k >= num_experts:
        return w, torch.arange(num_experts, device=w.device).expand(w.shape)
    top_w, indices = w.topk(top_k, dim=-1)
    gates = torch.zeros_like(w).scatter(-1, indices, top_w / top_w.sum(-1, keepdim=True))
    return gates, indices


def _sequence_shape(lead: torch.Size) -> tuple[int, int]:
    """(B, S) of a layer input of leading shape ``lead``: the last axis is the sequence."""
    if len(lead) == 0:
        return 1, 1
    if len(lead) == 1:
        return int(lead[0]), 1  # (B, d) inputs: each row is its own one-token sequence
    return math.prod(lead[:-1]), int(lead[-1])


class HMoRAAdapter(Adapter):
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
        self,
        in_features: int,
        out_features: int,
        settings: dict[str, Any],
        state: RoutingState,
        name: str,
    ) -> None:
        super().__init__(in_features, out_features, settings, state, name)
        e, r = settings["num_experts"], settings["rank"]
        self.num_experts, self.rank, self.top_k = e, r, settings["top_k"]
        self.scale = float(settings["alpha"]) / math.sqrt(r)
        self.A = nn.Parameter(torch.empty(e * r, in_features))
        self.B = nn.Parameter(torch.empty(out_features, e * r))
        init_lora_factors(self.A.data.view(e, r, in_features), self.B.data)
        self.router = Router(in_features, e, None)
        self.task_routing = bool(settings["task_routing"])
        self.num_tasks = settings["num_tasks"] if self.task_routing else None
        self.aux_coef = float(settings["aux_loss_coef"])
        if self.task_routing:
            d_task = settings["task_dim"]
            self.task_encoder = nn.Linear(in_features, d_task)
            self.task_router = Router(d_task, e, None)
            if self.num_tasks is not None:
                self.task_embedding = nn.Embedding(self.num_tasks, d_task)
            self.beta = nn.Parameter(torch.tensor(initial_beta(settings)))
        # Running (sum, count) of the causal pool per batch row after the latest forward.
        self._prefix: dict[str, Any] | None = None

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

    def route(self, route_x: torch.Tensor) -> Routing:
        """Route (..., d_in) tokens; record this forward's entropy aux loss with the state."""
        lead = route_x.shape[:-1]
        mask = self.state.token_mask(lead)
        w = self.routing_weights(route_x.reshape(-1, self.in_features), lead, mask)
        gates, indices = top_k_gates(w, self.top_k)
        routing = Routing(w.clamp_min(_EPS).log(), w, indices, gates)
        if self.aux_coef > 0:
            loss, _ = entropy_loss(w, mask)
            self.state.record_losses(self.name, {"entropy": self.aux_coef * loss}, mask, len(w))
        self.state.observe(self.name, routing, lead)
        return routing

    # Update ----------------------------------------------------------------------------------
    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked views ``(A, B)``: (E, r, d_in) and (E, d_out, r) of the packed parameters."""
        e, r = self.num_experts, self.rank
        a = self.A.view(e, r, self.in_features)
        b = self.B.view(self.out_features, e, r).permute(1, 0, 2)
        return a, b

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        routing = self.route(route_x)
        a, b = self.expert_factors()
        xf = x.reshape(-1, self.in_features)
        out = packed_mixture(xf, a.to(x.dtype), b.to(x.dtype), routing.gates)
        return (self.scale * out).reshape(*lead, self.out_features)

    def delta_weight(self) -> torch.Tensor:
        if self.num_experts != 1:
            raise NotMergeableError(
                f"{self.name}: HMoRA routes each token over {self.num_experts} experts, so it "
                "has no single ΔW to merge; only one-expert modules merge"
            )
        return self.scale * (self.B @ self.A)

    def active_parameters(self) -> int:
        k = self.num_experts if self.top_k is None else min(self.top_k, self.num_experts)
        experts = k * self.rank * (self.in_features + self.out_features)
        routing = sum(p.numel() for n, p in self.named_parameters() if n not in ("A", "B"))
        if self.num_tasks is not None:  # a token uses one embedding row, not the table
            routing -= self.task_embedding.weight.numel() - self.task_embedding.weight.shape[1]
        return experts + routing
