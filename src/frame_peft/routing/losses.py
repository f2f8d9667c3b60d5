"""Auxiliary routing losses, as explicit functions of one module's routing.

All take a token mask ``m`` (T,) of 0/1 floats (padding = 0) or ``None`` (all tokens count), and
average over valid tokens only, ``n = Σ m``. With ``f`` the share of routed slots and ``P`` the
mean router probability:

- per-expert Switch:   ``L = E · Σ_e f_e P_e``   (1 at perfect balance)
- order-grouped Switch: experts sorted by order, cut into G contiguous groups;
  ``L = G · Σ_g f_g P_g`` with ``f_g, P_g`` summed over the group (1 at balance across groups)
- router z-loss:       ``L = (1/n) Σ_t m_t · logsumexp(logits_t)²``

``f`` counts are not differentiable (as in Switch); gradients flow through ``P`` and the logits.

Convention (which normalisation, and what a coefficient means). For T valid tokens routed to k of
E experts, with ``c_e`` the number of tokens that chose e among their k (``Σ_e c_e = T·k``):

- ours: ``f_e = c_e / (T·k)`` (share of routed slots), ``L = E · Σ_e f_e P_e``. It is 1 at
  perfect balance for every k, and exactly the Switch Transformer loss (Fedus et al. 2021,
  top-1, ``α = 10⁻²``) at k = 1. A dense router (k = E) counts each token's most probable expert
  (k = 1), since its slot shares are uniform by construction.
- Mixtral / MoE-PEFT (``load_balancing_loss_func`` in Hugging Face ``modeling_mixtral.py``;
  ``_mixtral_load_balancing_loss_func`` in TUDB-Labs/MoE-PEFT ``moe_peft/adapters/mixlora/
  model.py``): ``tokens_per_expert`` is the mean over tokens of the (T, k, E) one-hot choices,
  i.e. ``c_e / T`` summed over the k positions, so ``L_mixtral = E · Σ_e (c_e/T) P_e
  = k · L_ours`` exactly (k at perfect balance; tests/test_loss_conventions.py). MoE-PEFT also
  pools the router logits of all layers before the loss (one ``f``, ``P`` over every layer's
  tokens) where we take the mean of per-module losses; the factor k holds per module.

So a coefficient c on their loss equals ``k · c`` on ours: MoE-PEFT's default
``router_aux_loss_coef = 0.001`` (k = 2) is 0.002 here, and our 0.01 (the Switch value, the default
of MoE-LoRA, FRAME, FourierMoE and HydraLoRA's optional Switch loss) is 0.005 on Mixtral's scale.
We keep the Switch normalisation and its 0.01 (it does not change with k, and the recorded
synthetic results use it); a method ported with the Mixtral loss says so and keeps its authors'
coefficient on their own normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .router import Routing


def _mask_and_count(mask: torch.Tensor | None, num_tokens: int, ref: torch.Tensor):
    if mask is None:
        mask = torch.ones(num_tokens, dtype=torch.float32, device=ref.device)
    mask = mask.to(dtype=torch.float32, device=ref.device).reshape(-1)
    return mask, mask.sum().clamp_min(1.0)


def load_and_importance(
    routing: Routing, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, P)``, each (E,): share of valid routed slots per expert and mean probability.

    A dense router (k = E) sends every token to every expert, so its slot share is uniform by
    construction and would give the loss no gradient; its load counts each token's most
    probable expert instead.
    """
    probs, indices = routing.probs, routing.indices
    if indices.shape[-1] == probs.shape[-1] and probs.shape[-1] > 1:
        indices = probs.argmax(dim=-1, keepdim=True)
    counts, n, p = _slot_counts(probs, indices, mask)
    f = counts / (n * indices.shape[-1])
    return f.detach(), p


def _slot_counts(
    probs: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c, n, P)``: c (E,) valid tokens that chose each expert among their k (``indices``
    (T, k)), n the valid-token count (>= 1), P (E,) the mean probability over valid tokens."""
    m, n = _mask_and_count(mask, probs.shape[0], probs)
    k = indices.shape[-1]
    slot_weights = m.unsqueeze(-1).expand(-1, k).reshape(-1)
    counts = torch.zeros(probs.shape[-1], device=probs.device).scatter_add(
        0, indices.reshape(-1), slot_weights
    )
    return counts, n, (probs * m.unsqueeze(-1)).sum(dim=0) / n


def switch_loss(routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-expert Switch load-balancing loss ``E · Σ_e f_e P_e``."""
    f, p = load_and_importance(routing, mask)
    return f.numel() * (f * p).sum()


def mixtral_balance_loss(routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
    """Mixtral / MoE-PEFT's load-balance loss ``E · Σ_e (c_e/n) P_e`` (= k · :func:`switch_loss`
    for k < E; see the convention above): c_e the valid tokens with e among their k choices
    (every one of the k counted, also for a dense router), P_e the mean probability."""
    counts, n, p = _slot_counts(routing.probs, routing.indices, mask)
    return p.numel() * ((counts / n).detach() * p).sum()


def grouped_switch_loss(
    routing: Routing, mask: torch.Tensor | None, orders: torch.Tensor, num_groups: int
) -> torch.Tensor:
    """Order-grouped Switch loss: balance across G groups of experts with neighbouring orders.

    ``orders`` (E,) decides the grouping only (it is detached): experts are sorted by order and
    position ``j`` of the sort goes to group ``j·G // E``.
    """
    f, p = load_and_importance(routing, mask)
    num_experts = f.numel()
    rank = torch.argsort(torch.argsort(orders.detach()))
    group = (rank * num_groups) // num_experts
    f_g = torch.zeros(num_groups, device=f.device).scatter_add(0, group, f)
    p_g = torch.zeros(num_groups, device=p.device, dtype=p.dtype).scatter_add(0, group, p)
    return num_groups * (f_g * p_g).sum()


def balance_and_z_losses(
    routing: Routing,
    mask: torch.Tensor | None,
    balance_coef: float,
    z_coef: float,
    balance_fn: Callable[[Routing, torch.Tensor | None], torch.Tensor] | None = switch_loss,
) -> dict[str, torch.Tensor]:
    """``{"balance": c_b · balance_fn, "z": c_z · z_loss}``, leaving out terms whose coefficient
    is 0 (or the balance term when ``balance_fn`` is None)."""
    losses = {}
    if balance_fn is not None and balance_coef > 0:
        losses["balance"] = balance_coef * balance_fn(routing, mask)
    if z_coef > 0:
        losses["z"] = z_coef * z_loss(routing, mask)
    return losses


def z_loss(routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
    """Router z-loss: mean over valid tokens of ``logsumexp(logits)²``."""
    logits = routing.logits
    m, n = _mask_and_count(mask, logits.shape[0], logits)
    return (torch.logsumexp(logits, dim=-1).square() * m).sum() / n
