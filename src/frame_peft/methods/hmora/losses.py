"""HMoRA's auxiliary routing losses: the authors' generalised Jensen–Shannon (GJS) loss and the
earlier entropy loss of this library.

GJS (authors' ``TokenRouter.divergence_loss`` / ``TaskRouter.divergence_loss``), for routing
distributions P (N, E) over N items (tokens of a batch, or sequences for the task router) with a
0/1 mask m (N,) (all ones for sequences), n = Σ m, ε = 1e-9::

    H_max = log E,  H_m⁺ = γ_b · H_max,  H_p⁻ = γ_c · H_max,  D_max = H_m⁺ − H_p⁻
    m̄     = Σ_i m_i P_i / n                                           (E,)  mean distribution
    H_m   = min(−Σ_e m̄_e log(m̄_e + ε), H_m⁺)                          balance, clamped above
    H_p   = Σ_i m_i · max(−Σ_e P̃_ie log(P̃_ie + ε), H_p⁻) / n,  P̃ = m·P   certainty, clamped below
    L     = relu(D_max − (H_m − H_p)) / H_max

L is 0 once the batch is spread enough (H_m near γ_b log E) and each item is confident enough
(H_p near γ_c log E); with E = 1 there is nothing to balance and L = 0.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-12
_GJS_EPS = 1e-9  # the authors' epsilon inside the logarithms


def gjs_loss(
    probs: torch.Tensor, mask: torch.Tensor | None, gamma_balance: float, gamma_certain: float
) -> torch.Tensor:
    """The GJS loss (module docstring) of ``probs`` (N, E) with ``mask`` (N,) or None; scalar."""
    p = probs.float()
    num_experts = p.shape[-1]
    if num_experts < 2:
        return p.sum() * 0.0
    m = torch.ones(p.shape[0], device=p.device) if mask is None else mask.float().reshape(-1)
    m = m.to(p.device)
    h_max = math.log(num_experts)
    h_m_max, h_p_min = gamma_balance * h_max, gamma_certain * h_max
    p = p * m.unsqueeze(-1)
    n = m.sum().clamp_min(1.0)  # the authors divide by Σm unclamped (NaN on an empty batch)
    mean = p.sum(0) / n
    h_m = torch.clamp(-(mean * torch.log(mean + _GJS_EPS)).sum(-1), max=h_m_max)
    h_p = torch.clamp(-(p * torch.log(p + _GJS_EPS)).sum(-1), min=h_p_min) * m
    h_p = h_p.sum() / n
    return torch.relu((h_m_max - h_p_min) - (h_m - h_p)) / h_max


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
