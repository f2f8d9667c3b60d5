"""Mutual coherence between two fractional-Fourier bases.

``μ(T_a, T_b) = max_{i,j} |<col_i(T_a), col_j(T_b)>| = max |(T_a^H T_b)_{ij}|``. It is 1 for equal
orders and 1/√N (the floor for unitary N×N bases) for orders 0 and 1. Experts whose transforms have
low coherence see the input in incoherent bases: that is what "decorrelated experts" means in FRAME.

Computed exactly and cheaply: both transforms commute with the index reversal R (every chirp and
every Hermite–Gaussian is even or odd), so ``G = T_a^H T_b`` satisfies ``G[Ri, Rj] = G[i, j]`` and
the columns ``j ≤ ⌊n/2⌋`` hold every entry's modulus. For the chirp surrogate each order's ``T_b``
is built once on those columns (O(n² log n)) and each pair costs one adjoint transform of it; the
exact transform depends only on ``b − a`` (``F^{-a} F^b = F^{b−a}``), computed once per distinct
difference. Both are in float64.
"""

from __future__ import annotations

from typing import Literal

import torch

from .by_name import CHIRP, EXACT, check_transform_name
from .chirp import frft, frft_adjoint
from .exact import dfrft


def coherence(
    order_a: float,
    order_b: float,
    n: int,
    transform: Literal["exact", "chirp"] = "exact",
) -> float:
    """Mutual coherence of the length-``n`` transforms at ``order_a`` and ``order_b``.

    ``transform="exact"`` uses the Candan FrFT (then it depends only on ``order_b - order_a``);
    ``"chirp"`` uses FRAME's surrogate ``U_a``. Computed in float64 (see the module docstring).
    """
    matrix = coherence_matrix([float(order_a), float(order_b)], n, transform)
    return matrix[0][1]


def coherence_matrix(
    orders: list[float], n: int, transform: str, cache: dict[tuple, float] | None = None
) -> list[list[float]]:
    """E×E mutual coherences ``max |T_{a_e}^H T_{a_f}|`` of length-n transforms (float64).

    Entry (e, f) is :func:`coherence` of orders e and f (the diagonal is 1: ``T^H T = I``);
    ``cache`` maps ``(transform, n, key)`` to values across calls.
    """
    check_transform_name(transform)
    cache = {} if cache is None else cache
    num_experts = len(orders)
    # Row j of ``unit`` is e_j for j <= n//2 (one column of every reversal orbit); transforms act
    # on the last axis, so ``T(unit)`` holds the columns T e_j as rows (contiguous, no copies).
    unit = torch.eye(n // 2 + 1, n, dtype=torch.float64)

    def key(e: int, f: int) -> tuple:
        a, b = orders[e], orders[f]
        if transform == EXACT:
            return (EXACT, n, abs(b - a))
        return (CHIRP, n, min(a, b), max(a, b))

    todo = [(e, f) for e in range(num_experts) for f in range(e + 1, num_experts)
            if key(e, f) not in cache]  # fmt: skip
    if transform == EXACT:
        for e, f in todo:
            if key(e, f) not in cache:  # F^{-a} F^b = F^{b-a}, on the kept columns
                cache[key(e, f)] = float(dfrft(unit, orders[f] - orders[e]).abs().max())
    elif todo:
        needed = sorted({f for _, f in todo})
        basis = frft(
            unit.expand(len(needed), *unit.shape),
            torch.tensor([orders[f] for f in needed], dtype=torch.float64),
        )  # (F, n//2+1, n): row j of block i is (T_{a_f} e_j)ᵀ, f = needed[i]
        where = {f: i for i, f in enumerate(needed)}
        for e in sorted({e for e, _ in todo}):
            fs = [f for e2, f in todo if e2 == e and key(e, f) not in cache]
            if fs:
                gram = frft_adjoint(basis[[where[f] for f in fs]], orders[e])  # (T_a^H T_b e_j)ᵀ
                for f, value in zip(fs, gram.abs().amax(dim=(1, 2)).tolist(), strict=True):
                    cache[key(e, f)] = value
    out = [[1.0] * num_experts for _ in range(num_experts)]  # T^H T = I: coherence 1
    for e in range(num_experts):
        for f in range(e + 1, num_experts):
            out[e][f] = out[f][e] = cache[key(e, f)]
    return out
