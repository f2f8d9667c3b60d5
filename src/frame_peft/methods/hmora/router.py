"""HMoRA's router: token router, task router and their mix, for one module or a shared group.

As the authors' ``TokenRouter`` (which holds its ``TaskRouter``), for T tokens h (T, d_in) of B
sequences (S tokens each) and a task representation z (B, d_z) or (T, d_z)::

    p = softmax(W drop(h) + c)          (T, E)   token router (absent in task-only layers)
    q = softmax(V drop(z) + d)          (B, E)   task router (absent in token-only layers)
    w = (1 − σ(β)) p + σ(β) q           (T, E)   mixed layers; w = p or w = q otherwise

``drop`` is dropout ``router_dropout``; with ``router_bias=False`` the Linears have no bias and are
initialised N(0, 0.02) (this library's earlier router), else as ``nn.Linear`` (the authors').

``task_encoder="prefix_mean"`` keeps this library's earlier per-router causal encoder::

    c_t = Σ_{s≤t} m_s h_s / max(1, Σ_{s≤t} m_s),   z_t = tanh(W_enc c_t + b_enc)   (T, task_dim)

continued across cached decoding steps from the running (sum, count) of each batch row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...routing import RoutingState
from .config import HMoRAConfig


def _linear(d_in: int, d_out: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    if not bias:
        with torch.no_grad():
            layer.weight.normal_(0.0, 0.02)
    return layer


def routing_mode(config: HMoRAConfig, beta: float) -> str:
    """``"token"``, ``"task"`` or ``"mixed"`` for a layer whose β starts at ``beta``."""
    if not config.task_routing:
        return "token"
    share = 1.0 / (1.0 + math.exp(-beta))
    if share < config.token_only_below:
        return "token"
    if share > config.task_only_above:
        return "task"
    return "mixed"


class HMoRARouter(nn.Module):
    """Token and/or task router of one routing group (see the module docstring)."""

    def __init__(
        self, d_in: int, task_in: int, config: HMoRAConfig, mode: str, beta: float
    ) -> None:
        super().__init__()
        e = config.num_experts
        self.mode = mode
        self.jitter = float(config.router_jitter)
        self.drop = nn.Dropout(config.router_dropout)
        self.token = _linear(d_in, e, config.router_bias) if mode != "task" else None
        self.task = _linear(task_in, e, config.router_bias) if mode != "token" else None
        self.beta = nn.Parameter(torch.tensor(float(beta))) if mode == "mixed" else None
        self.prefix_mean = mode != "token" and config.task_encoder == "prefix_mean"
        if self.prefix_mean:
            self.task_encoder = nn.Linear(d_in, config.task_dim)
        if mode != "token" and config.num_tasks is not None:
            self.task_embedding = nn.Embedding(config.num_tasks, task_in)
        self._prefix: dict[str, Any] | None = None  # running causal pool (prefix_mean)

    def token_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(T, E) float32 logits of the token router for h (T, d_in)."""
        h = self.drop(h.float())
        if self.training and self.jitter > 0:
            h = h * torch.empty_like(h).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        bias = None if self.token.bias is None else self.token.bias.float()
        return F.linear(h, self.token.weight.float(), bias)

    def task_probs(self, z: torch.Tensor) -> torch.Tensor:
        """q = softmax(V drop(z) + d): (N, E) for z (N, d_z)."""
        bias = None if self.task.bias is None else self.task.bias.float()
        return torch.softmax(F.linear(self.drop(z.float()), self.task.weight.float(), bias), -1)

    def mix(self, p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor:
        """w (T, E) from p (T, E) and q (T, E), either absent in token/task-only layers."""
        if q is None:
            return p
        if p is None:
            return q
        g = torch.sigmoid(self.beta.float())
        return (1.0 - g) * p + g * q

    # The earlier per-router causal prefix-mean encoder ----------------------------------------
    def prefix_representation(
        self,
        h: torch.Tensor,
        b: int,
        s: int,
        lead: torch.Size,
        mask: torch.Tensor | None,
        state: RoutingState,
        name: str,
    ) -> torch.Tensor:
        """z_t (T, task_dim) = tanh(W_enc c_t + b_enc) with c_t the causal masked prefix mean."""
        h = h.float().view(b, s, -1)
        m = torch.ones(b, s, device=h.device) if mask is None else mask.float().view(b, s)
        csum = torch.cumsum(h * m.unsqueeze(-1), dim=1)
        count = torch.cumsum(m, dim=1)
        full = state.current.attention_mask
        decoding = (
            full is not None and len(lead) == 2 and lead[0] == full.shape[0] and s < full.shape[1]
        )
        length = s
        if decoding:
            length = int(full.shape[1])
            prev = self._prefix
            if prev is None or prev["batch"] != b or prev["length"] != length - s:
                seen = None if prev is None else (prev["batch"], prev["length"])
                raise RuntimeError(
                    f"{name}: cached decoding step of {s} new token(s) after {length - s} "
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
        c = (csum / count.clamp_min(1.0).unsqueeze(-1)).reshape(b * s, -1)
        enc = self.task_encoder
        return torch.tanh(F.linear(c, enc.weight.float(), enc.bias.float()))

    def forget_prefix(self) -> None:
        self._prefix = None
