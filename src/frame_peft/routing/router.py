"""The one router every mixture adapter uses: fp32 logits, softmax, top-k with renormalisation.

For T tokens of width d and E experts::

    logits = x W_gᵀ            (T, E), float32 whatever the model dtype
    p      = softmax(logits)   (T, E)
    top-k:  keep the k largest p per token, renormalise them to sum to 1 -> gates (T, E), zero
            elsewhere; k = E (or ``top_k=None``) is the dense softmax router.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Routing:
    """What a router decided for T tokens.

    Attributes:
        logits: (T, E) float32 router logits.
        probs: (T, E) softmax probabilities (before top-k).
        indices: (T, k) selected experts, sorted by probability.
        gates: (T, E) renormalised weights of the selected experts, zero elsewhere.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    indices: torch.Tensor
    gates: torch.Tensor


def top_k_gates(probs: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices (T, k), gates (T, E))``: the k most probable experts of each row of ``probs``
    (T, E), sorted, and their probabilities renormalised to sum to 1 (zero elsewhere). Dense
    (``top_k`` None or >= E): every expert, ``gates = probs``."""
    num_experts = probs.shape[-1]
    if top_k is None or top_k >= num_experts:
        return torch.arange(num_experts, device=probs.device).expand(probs.shape), probs
    top_p, indices = probs.topk(top_k, dim=-1)
    weights = top_p / top_p.sum(dim=-1, keepdim=True)
    return indices, torch.zeros_like(probs).scatter(-1, indices, weights)


def select_experts(logits: torch.Tensor, top_k: int | None) -> Routing:
    """Softmax then top-k with renormalisation (dense softmax when ``top_k`` is None or >= E)."""
    probs = torch.softmax(logits.float(), dim=-1)
    indices, gates = top_k_gates(probs, top_k)
    return Routing(logits, probs, indices, gates)


class Router(nn.Module):
    """Linear router without bias, weight (E, d) initialised N(0, 0.02), computed in float32.

    ``jitter`` > 0 multiplies the router input by U(1 - jitter, 1 + jitter) noise in training
    (Switch Transformer); evaluation is deterministic.
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int | None, jitter: float = 0.0):
        super().__init__()
        self.top_k = top_k
        self.jitter = float(jitter)
        self.weight = nn.Parameter(torch.empty(num_experts, in_features).normal_(0.0, 0.02))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        return F.linear(x, self.weight.float())

    def forward(self, x: torch.Tensor) -> Routing:
        """x: (T, d) -> :class:`Routing` over E experts."""
        return select_experts(self.logits(x), self.top_k)
