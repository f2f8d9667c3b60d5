"""Fractional Fourier transforms: the fast surrogate FRAME uses and an exact reference beside it.

- :func:`dft`, :func:`idft`: centered unitary DFT ``C`` and ``C^H``.
- :func:`frft`, :func:`frft_adjoint`, :func:`frft_right`: the three-shear chirp–FFT surrogate
  ``U_a`` (O(N log N), exactly unitary, not additive).
- :func:`dfrft`, :func:`dfrft_matrix`, :func:`dfrft_basis`: the exact Candan discrete FrFT.
- :func:`coherence`, :func:`coherence_matrix`: mutual coherence of two orders' bases, or of
  every pair of a list of orders.
- :func:`get_transform`: ``"chirp"`` or ``"exact"`` by name, as FRAME's config names them.

Conventions are in METHODS.md §1 and docs/transforms.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import Order
from .chirp import frft, frft_adjoint, frft_right
from .coherence import coherence, coherence_matrix
from .dft import dft, idft
from .exact import dfrft, dfrft_basis, dfrft_matrix


def dfrft_adjoint(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """``(F^a)^H = F^{-a}`` for the exact transform (it is additive and unitary)."""
    return dfrft(x, -order, dim=dim)


def get_transform(name: str) -> tuple[Callable, Callable]:
    """Return ``(forward, adjoint)`` for a transform name: ``"chirp"`` or ``"exact"``.

    Both transforms are complex symmetric, so ``forward`` on the last axis also right-multiplies
    rows (``x ↦ x T_a``).
    """
    if name == "chirp":
        return frft, frft_adjoint
    if name == "exact":
        return dfrft, dfrft_adjoint
    raise ValueError(f"unknown transform {name!r}; choose 'chirp' (fast surrogate) or 'exact'")


__all__ = [
    "coherence",
    "coherence_matrix",
    "dfrft",
    "dfrft_adjoint",
    "dfrft_basis",
    "dfrft_matrix",
    "dft",
    "frft",
    "frft_adjoint",
    "frft_right",
    "get_transform",
    "idft",
]
