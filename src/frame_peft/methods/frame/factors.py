"""FRAME's effective factors for many layers at once: one transform call per group of rows.

Layer ℓ with orders a (E,) needs ``Ã = A T_a`` (rows of A, length d_in) and ``B̃ = T_a^H B``
(columns of B, length d_out). Both transforms are complex symmetric with ``T_a^H = conj(T_a)``,
so for real B ``B̃ = conj(T_a B)``: both sides are the *forward* transform of real rows, ``A_e``'s
r rows and ``B_eᵀ``'s r rows, and the real rank-2r factors are (E, r, n rows -> y)::

    A' = [Re y_A ; Im y_A]            (E, 2r, d_in)
    B' = [Re y_B ; Im y_B]ᵀ           (E, d_out, 2r)   (Re B̃ = Re y_B, −Im B̃ = Im y_B)

Rows of the same length, rank, dtype, device and transform are stacked, from every side of every
layer, with one order per (layer, expert), and transformed in **one** call: SmolLM2-135M's 210
adapted Linears need three calls (widths 192, 576, 1536) instead of 420. The transforms cost
O(E·r·d log d) per layer either way; grouping removes the per-call overhead (phasors, autograd
nodes, small FFT launches), which is most of the cost at these sizes.

:meth:`FrameAdapter.reference_factors` keeps the plain path (forward on A, adjoint on B, one
layer at a time); tests check the two agree in values and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ...transforms import CHIRP, get_transform
from ...transforms.chirp import frft_rows_packed

if TYPE_CHECKING:
    from .layer import FrameAdapter

Factors = tuple[torch.Tensor, torch.Tensor]

#: Most rows·length per transform call. Bigger calls save little per-call overhead but need
#: large fresh buffers, which the allocator maps and unmaps (page faults) at every step.
MAX_CALL_ELEMENTS = 1 << 19


def _transform_rows(transform: str, z: torch.Tensor, orders: torch.Tensor, unit: bool):
    """``[Re; Im]`` of ``T_{a_g}`` on the rows of ``z`` (G, r, n) -> (G, 2r, n)."""
    if transform == CHIRP:  # the chirp kernel writes [Re; Im] rows directly
        return frft_rows_packed(z, orders, unit_orders=unit)
    forward, _ = get_transform(transform)
    y = forward(z, orders, dim=-1)
    return torch.cat([y.real, y.imag], dim=1)


def _chunks(groups: dict[tuple, list]):
    """Split each group into consecutive runs of at most :data:`MAX_CALL_ELEMENTS` elements."""
    for key, items in groups.items():
        run: list = []
        size = 0
        for item in items:
            n = item[2].numel()
            if run and size + n > MAX_CALL_ELEMENTS:
                yield key, run
                run, size = [], 0
            run.append(item)
            size += n
        yield key, run


def grouped_factors(adapters: Sequence[FrameAdapter]) -> dict[str, Factors]:
    """``{layer name: (A', B')}`` for ``adapters``, with one transform call per row group.

    Shapes: A' (E_m, 2r, d_in) and B' (E_m, d_out, 2r) in each layer's parameter dtype, for the
    E_m experts not held at order 0 (all E usually). The result is differentiable in every
    layer's A, B and orders.
    """
    groups: dict[tuple, list[tuple[str, int, torch.Tensor, torch.Tensor]]] = {}
    unit: dict[tuple, bool] = {}
    for ad in adapters:
        orders, a_rows, b_rows = ad.orders(), ad.A, ad.B
        if ad.spatial_experts():  # experts held at order 0 are not transformed
            moving = ad.moving_experts()
            orders, a_rows, b_rows = (t.index_select(0, moving) for t in (orders, a_rows, b_rows))
        for side, rows in ((0, a_rows), (1, b_rows.transpose(1, 2))):
            key = (ad.transform_name, rows.shape[-1], rows.shape[1], rows.dtype, rows.device)
            groups.setdefault(key, []).append((ad.name, side, rows, orders))
            unit[key] = unit.get(key, True) and ad.learned  # sigmoid orders lie in (0, 1)
    out: dict[str, list[torch.Tensor | None]] = {ad.name: [None, None] for ad in adapters}
    for key, items in _chunks(groups):
        z = torch.cat([rows for _, _, rows, _ in items]) if len(items) > 1 else items[0][2]
        orders = torch.cat([o for *_, o in items]) if len(items) > 1 else items[0][3]
        eff = _transform_rows(key[0], z, orders, unit[key]).to(key[3])  # (G, 2r, n)
        sizes = [len(rows) for _, _, rows, _ in items]
        for (name, side, _, _), part in zip(items, eff.split(sizes), strict=True):
            out[name][side] = part if side == 0 else part.transpose(1, 2)
    return {name: (a, b) for name, (a, b) in out.items()}
