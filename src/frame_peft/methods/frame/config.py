"""FRAME config: a mixture of low-rank experts, each at its own fractional-Fourier order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..moe_lora.config import MoELoRAConfig


@dataclass
class FrameConfig(MoELoRAConfig):
    """FRAME (METHODS.md §2). Defaults: E = 8, k = 2, r = 4, α = 2r, dropout 0.05.

    Args:
        transform: ``"chirp"`` (the O(d log d) surrogate ``U_a``; needs even layer widths) or
            ``"exact"`` (the Candan discrete FrFT, O(d²); any width).
        order_mode: ``"learned"`` (``a_e = sigmoid(θ_e)``, θ trained by the separate order
            optimizer) or ``"fixed"`` (orders are a buffer).
        init_orders: ``None``/``"spread"`` for ``a_e = (e - 0.5)/E``, ``"zeros"`` (fixed mode
            only: FRAME then equals MoE-LoRA), or a list of E orders. Learned orders must lie in
            (0, 1): at exactly 0 the order's gradient vanishes and it never moves.
        aux_loss: ``"grouped"`` (order-grouped Switch loss, default), ``"switch"`` or ``"none"``.
        num_order_groups: G groups for the grouped loss (``None`` -> E/2, at least 1).
    """

    method: ClassVar[str] = "frame"
    aux_kinds: ClassVar[tuple[str, ...]] = ("grouped", "switch", "none")

    aux_loss: str = "grouped"
    transform: str = "chirp"
    order_mode: str = "learned"
    init_orders: list[float] | str | None = None
    num_order_groups: int | None = None

    def validate_settings(self, s: dict[str, Any]) -> None:
        super().validate_settings(s)
        if s["transform"] not in ("chirp", "exact"):
            raise ValueError(f"transform must be 'chirp' or 'exact', got {s['transform']!r}")
        if s["order_mode"] not in ("learned", "fixed"):
            raise ValueError(f"order_mode must be 'learned' or 'fixed', got {s['order_mode']!r}")
        orders = initial_orders(s)
        if s["order_mode"] == "learned" and not all(0.0 < a < 1.0 for a in orders):
            raise ValueError(
                f"learned orders are sigmoid(θ) and must start inside (0, 1), got {orders}; an "
                "order of exactly 0 gets zero gradient and never moves. Use order_mode='fixed' "
                "for orders at 0, 1 or outside"
            )
        g = s["num_order_groups"]
        if g is not None and (not isinstance(g, int) or not 1 <= g <= s["num_experts"]):
            raise ValueError(
                "num_order_groups must be None or an integer in "
                f"[1, num_experts={s['num_experts']}], got {g!r}"
            )


def initial_orders(s: dict[str, Any]) -> list[float]:
    """The E starting orders a module with settings ``s`` gets."""
    e, init = s["num_experts"], s["init_orders"]
    if init is None or init == "spread":
        return [(i + 0.5) / e for i in range(e)]
    if init == "zeros":
        return [0.0] * e
    if isinstance(init, str):
        raise ValueError(f"init_orders must be None, 'spread', 'zeros' or a list, got {init!r}")
    if not isinstance(init, list | tuple) or len(init) != e:
        raise ValueError(
            f"init_orders must list one order per expert ({e} here, after per-module overrides), "
            f"got {init!r}"
        )
    if not all(isinstance(a, int | float) and math.isfinite(a) for a in init):
        raise ValueError(f"init_orders must be finite numbers, got {init!r}")
    return [float(a) for a in init]
