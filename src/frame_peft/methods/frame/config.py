"""FRAME config: a mixture of low-rank experts, each at its own fractional-Fourier order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import check_positive_int, is_number
from ...transforms.by_name import TRANSFORMS
from ..moe_lora.config import MoELoRAConfig


@dataclass
class FrameConfig(MoELoRAConfig):
    """FRAME (docs/methods.md §2). Defaults: E = 8, k = 2, r = 4, α = 2r, dropout 0.05.

    Args:
        transform: ``"chirp"`` (the O(d log d) surrogate ``U_a``; needs even layer widths) or
            ``"exact"`` (the Candan discrete FrFT, O(d²); any width).
        order_mode: ``"learned"`` (``a_e = sigmoid(θ_e)``, θ trained by the separate order
            optimizer) or ``"fixed"`` (orders are a buffer).
        init_orders: ``None``/``"spread"`` for ``a_e = (e - 0.5)/E``, ``"zeros"`` (FRAME then
            equals MoE-LoRA), or a list of E orders. With gradient-only orders, learned orders
            must lie in (0, 1): at exactly 0 the order's gradient vanishes and it would never
            move. With the scan, learned orders at exactly 0 or 1 are *held* there until a scan
            moves them (``"zeros"``: every expert starts as a LoRA expert and the first scan
            moves only those whose update is more compact elsewhere).
        aux_loss: ``"grouped"`` (order-grouped Switch loss), ``"switch"`` (per-expert) or
            ``"none"``; ``None`` (default): ``"grouped"`` with gradient-only orders, ``"switch"``
            with the order scan (with it the scan put every expert of 10 seeds at its task's
            order; with the grouped loss 37 of 40 tasks: ``docs/experiments.md``).
        num_order_groups: G groups for the grouped loss (``None`` -> E/2, at least 1).
        order_search: how orders are found. ``"gradient"``: by the order optimizer alone (the
            paper's description); ``"scan"``: the order scan (:mod:`.scan`) jumps every expert
            to the order where its update is most compact at the fractions ``scan_at`` of
            training (the first a scan, later ones rescans), and the order optimizer refines.
        scan_at: fractions of training at which the scan runs, increasing, in (0, 1); the first
            is the scan, later ones rescans (default one scan at 10 %: rescans measured no gain,
            ``docs/experiments.md``).
        scan_batches: training batches of each scan's statistics pass.
        scan_tokens: tokens recorded per module over those batches (memory: tokens ·
            (d_in + d_out + E) floats per module).
        scan_sketch_rank: q, the rank each module's targets are sketched to.
        scan_basis: ``"expert"`` (one sketch basis per expert, the default) or ``"shared"`` (one
            per module: cheaper, but its screen sees only the module's leading directions, so
            experts with distinct targets can be missed: measured in ``docs/experiments.md``).
        scan_grid: screen candidates per 1/d (2: orders j/(2d), d = max(d_in, d_out)).
        scan_margin: a rescan moves an expert only if its best order fits this much better.
    """

    method: ClassVar[str] = "frame"
    aux_kinds: ClassVar[tuple[str, ...]] = ("grouped", "switch", "none")

    aux_loss: str | None = None
    transform: str = "chirp"
    order_mode: str = "learned"
    init_orders: list[float] | str | None = None
    num_order_groups: int | None = None
    order_search: str = "gradient"
    scan_at: list[float] = field(default_factory=lambda: [0.1])
    scan_batches: int = 8
    scan_tokens: int = 1024
    scan_sketch_rank: int = 16
    scan_basis: str = "expert"
    scan_grid: float = 1.0
    scan_margin: float = 0.05

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        """Also ``transform``: e.g. ``"exact"`` for the odd-width modules the chirp cannot take."""
        return (*super().overridable(), "transform")

    def balance_kind(self) -> str:
        """``aux_loss=None`` resolves to ``"switch"`` with the scan, ``"grouped"`` without."""
        if self.aux_loss is not None:
            return self.aux_loss
        return "switch" if self.order_search == "scan" else "grouped"

    def validate(self) -> None:
        super().validate()
        if self.transform not in TRANSFORMS:
            names = " or ".join(map(repr, TRANSFORMS))
            raise ValueError(f"transform must be {names}, got {self.transform!r}")
        if self.order_mode not in ("learned", "fixed"):
            raise ValueError(f"order_mode must be 'learned' or 'fixed', got {self.order_mode!r}")
        _validate_scan(self)
        orders = initial_orders(self)
        if self.order_mode == "learned":
            scan = self.order_search == "scan"
            ok = all(0.0 <= a <= 1.0 for a in orders) if scan else all(0 < a < 1 for a in orders)
            if not ok:
                raise ValueError(
                    f"learned orders are sigmoid(θ) and must start inside (0, 1), got {orders}; "
                    "an order of exactly 0 gets zero gradient and never moves. Use "
                    "order_mode='fixed' for orders at 0, 1 or outside, or order_search='scan' "
                    "(which holds orders at 0 or 1 until a scan moves them)"
                )
        g = self.num_order_groups
        if g is not None and (
            isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= self.num_experts
        ):
            raise ValueError(
                "num_order_groups must be None or an integer in "
                f"[1, num_experts={self.num_experts}], got {g!r}"
            )


def _validate_scan(c: FrameConfig) -> None:
    if c.order_search not in ("gradient", "scan"):
        raise ValueError(
            f"order_search must be 'gradient' (order optimizer only) or 'scan' (the order scan), "
            f"got {c.order_search!r}"
        )
    at = c.scan_at
    if (
        not isinstance(at, list | tuple)
        or not at
        or not all(is_number(f) and 0 < f < 1 for f in at)
        or any(b <= a for a, b in itertools.pairwise(at))
    ):
        raise ValueError(
            f"scan_at must be a non-empty increasing list of fractions of training in (0, 1), "
            f"e.g. [0.1, 0.25, 0.4]; got {at!r}"
        )
    for key in ("scan_batches", "scan_tokens", "scan_sketch_rank"):
        check_positive_int(key, getattr(c, key))
    if c.scan_basis not in ("shared", "expert"):
        raise ValueError(f"scan_basis must be 'shared' or 'expert', got {c.scan_basis!r}")
    if not is_number(c.scan_grid) or not c.scan_grid >= 0.5:
        raise ValueError(
            f"scan_grid (candidates per 1/d) must be a finite number >= 0.5, got {c.scan_grid!r}"
        )
    if not is_number(c.scan_margin) or c.scan_margin < 0:
        raise ValueError(f"scan_margin must be a finite number >= 0, got {c.scan_margin!r}")


def initial_orders(c: FrameConfig) -> list[float]:
    """The E starting orders a module with config ``c`` (after :meth:`for_module`) gets."""
    e, init = c.num_experts, c.init_orders
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
    if not all(is_number(a) for a in init):
        raise ValueError(f"init_orders must be finite numbers, got {init!r}")
    return [float(a) for a in init]
