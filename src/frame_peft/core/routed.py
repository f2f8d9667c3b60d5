"""The routed-adapter base: route → record auxiliary losses → notify observers, once for all.

Every method with a router (MoE-LoRA, FRAME, HydraLoRA, FourierMoE, HMoRA) subclasses
:class:`RoutedAdapter` and says only how its routing is computed (:meth:`~RoutedAdapter.routing`)
and, when it differs from the Switch loss, what its balance loss is. For T tokens of a layer input
with leading shape ``lead`` (T = prod(lead))::

    routing = self.routing(route_x (T, d_in), lead, mask)   # logits, probs, gates (T, E)
    losses  = {"balance": c_b · balance_loss, "z": c_z · z_loss}   # zero coefficients left out
    state.record_losses(name, losses, mask, T); state.observe(name, routing, lead)

``mask`` (T,) is the 0/1 token mask of this forward (padding = 0) or None; every loss averages
over valid tokens only (:mod:`frame_peft.routing.losses`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..routing import Router, Routing, balance_and_z_losses, switch_loss
from .adapter import Adapter, LayerContext
from .config import RoutingConfig


class RoutedAdapter(Adapter):
    """An adapter whose update is gated per token by a router (see the module docstring).

    Sets ``num_experts``, ``top_k``, ``aux_kind``, ``aux_coef`` and ``z_coef`` from the
    :class:`~.config.RoutingConfig`; :meth:`make_router` builds the default linear router.
    """

    has_router = True

    def __init__(
        self, in_features: int, out_features: int, config: RoutingConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        self.aux_kind = config.balance_kind()
        self.aux_coef = float(config.aux_loss_coef)
        self.z_coef = float(config.z_loss_coef)

    def make_router(self, in_features: int | None = None) -> Router:
        """The linear top-k router of the config: weight (E, d_in), float32, initialised as
        ``config.router_init`` says (N(0, 0.02), or Kaiming-uniform as ``nn.Linear``)."""
        router = Router(
            in_features or self.in_features, self.num_experts, self.top_k,
            self.config.router_jitter,
        )  # fmt: skip
        if self.config.router_init == "kaiming_uniform":
            with torch.no_grad():
                nn.init.kaiming_uniform_(router.weight, a=math.sqrt(5))
        return router

    # What a method changes -------------------------------------------------------------------
    def routing(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> Routing:
        """The routing of flat tokens ``route_x`` (T, d_in); default: ``self.router``."""
        return self.router(route_x)

    def balance_loss(self, routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
        """The balance loss (before its coefficient); default the per-expert Switch loss."""
        return switch_loss(routing, mask)

    def aux_losses(self, routing: Routing, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"balance": c_b · balance_loss, "z": c_z · z_loss}`` without zero-coefficient terms
        (no balance term with ``aux_loss="none"``)."""
        balance = None if self.aux_kind == "none" else self.balance_loss
        return balance_and_z_losses(routing, mask, self.aux_coef, self.z_coef, balance)

    # Shared machinery ------------------------------------------------------------------------
    def route(self, route_x: torch.Tensor) -> Routing:
        """Route (..., d_in) tokens; record this forward's aux losses and tell the observers."""
        lead = route_x.shape[:-1]
        mask = self.state.token_mask(lead)
        routing = self.routing(route_x.reshape(-1, self.in_features), lead, mask)
        self.state.record_losses(
            self.name, self.aux_losses(routing, mask), mask, len(routing.probs)
        )
        self.state.observe(self.name, routing, lead)
        return routing
