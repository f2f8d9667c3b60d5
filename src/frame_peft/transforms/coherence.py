"""Mutual coherence between two fractional-Fourier bases.

``μ(T_a, T_b) = max_{i,j} |<col_i(T_a), col_j(T_b)>| = max |(T_a^H T_b)_{ij}|``. It is 1 for equal
orders and 1/√N (the floor for unitary N×N bases) for orders 0 and 1. Experts whose transforms have
low coherence see the input in incoherent bases: that is what "decorrelated experts" means in FRAME.
"""

from __future__ import annotations

from typing import Literal

import torch

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
    ``"chirp"`` uses FRAME's surrogate ``U_a``. Computed in float64 from the dense ``T_a^H T_b``.
    """
    eye = torch.eye(n, dtype=torch.complex128)
    if transform == "exact":
        gram = dfrft(eye, float(order_b) - float(order_a), dim=0)  # F^{-a} F^b = F^{b-a}
    elif transform == "chirp":
        gram = frft_adjoint(frft(eye, float(order_b), dim=0), float(order_a), dim=0)
    else:
        raise ValueError(f"transform must be 'exact' or 'chirp', got {transform!r}")
    return float(gram.abs().max())
