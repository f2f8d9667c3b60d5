"""The transforms by name: the one place that maps ``"chirp"`` and ``"exact"`` to functions.

FRAME's config, its factor and order-fit code, the coherence functions and the experiments name a
transform by string; they check and resolve it here (:func:`check_transform_name`,
:func:`get_transform`) and compare against :data:`CHIRP` / :data:`EXACT` where a transform has a
path of its own (the chirp surrogate's batched kernels).
"""

from __future__ import annotations

from collections.abc import Callable

from .chirp import frft, frft_adjoint
from .exact import dfrft, dfrft_adjoint

__all__ = ["CHIRP", "EXACT", "TRANSFORMS", "check_transform_name", "get_transform"]

#: The three-shear chirp–FFT surrogate ``U_a`` (O(N log N), FRAME's default; even lengths).
CHIRP = "chirp"
#: The exact Candan discrete FrFT ``F^a`` (dense, O(N²); any length).
EXACT = "exact"
#: Every transform name, in the order error messages list them.
TRANSFORMS = (CHIRP, EXACT)

_BY_NAME: dict[str, tuple[Callable, Callable]] = {
    CHIRP: (frft, frft_adjoint),
    EXACT: (dfrft, dfrft_adjoint),
}


def check_transform_name(name: object) -> str:
    """``name`` if it is one of :data:`TRANSFORMS`; else a ``ValueError`` listing them."""
    if not isinstance(name, str) or name not in _BY_NAME:
        raise ValueError(
            f"unknown transform {name!r}; choose one of {', '.join(map(repr, TRANSFORMS))} "
            f"({CHIRP!r}: the fast surrogate, {EXACT!r}: the exact discrete FrFT)"
        )
    return name


def get_transform(name: str) -> tuple[Callable, Callable]:
    """Return ``(forward, adjoint)`` for a transform name: ``"chirp"`` or ``"exact"``.

    Both transforms are complex symmetric, so ``forward`` on the last axis also right-multiplies
    rows (``x ↦ x T_a``).
    """
    return _BY_NAME[check_transform_name(name)]
