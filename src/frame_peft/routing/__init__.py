"""The routing core shared by every mixture adapter: router, losses, per-forward context."""

from .context import AuxTerm, RoutingObserver, RoutingState, routing_context
from .losses import (
    balance_and_z_losses,
    grouped_switch_loss,
    load_and_importance,
    mixtral_balance_loss,
    switch_loss,
    z_loss,
)
from .router import Router, Routing, select_experts, top_k_gates

__all__ = [
    "AuxTerm",
    "Router",
    "Routing",
    "RoutingObserver",
    "RoutingState",
    "balance_and_z_losses",
    "grouped_switch_loss",
    "load_and_importance",
    "mixtral_balance_loss",
    "routing_context",
    "select_experts",
    "switch_loss",
    "top_k_gates",
    "z_loss",
]
