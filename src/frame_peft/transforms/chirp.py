"""The three-shear chirp–FFT fractional Fourier surrogate ``U_a`` (FRAME's default transform).

With ``φ = aπ/2`` and centered coordinates ``c`` (METHODS.md §1)::

    D_a = diag(exp(-iπ tan(φ/2) c²/N)),   K_a = diag(exp(-iπ sin(φ) c²/N))
    U_a = e^{iφ/2} · D_a · C^H · K_a · C · D_a

a chirp product, a chirp convolution done with two FFTs, and a chirp product: O(N log N), no
branches for ``|a| <= 1``. Orders outside ``[-1, 1]`` use the exact reversal ``F² = R``:
``U_a = R^m U_{a-2m}`` with ``m = round(a/2)``.

Properties (tested): unitary for every real a; ``U_0 = I``; ``U_1 = C`` exactly for even N; for odd
N the discrete chirp identity fails and ``U_1`` differs from C by O(1), so odd lengths also jump at
odd integer orders beyond ±1. ``U_{-a} = U_a^H = conj(U_a)`` and ``U_a`` is complex symmetric, so
right-multiplying rows, ``x ↦ x U_a``, is the same as applying ``U_a`` to each row.

It is **not** the exact discrete FrFT (:func:`frame_peft.transforms.dfrft`): it is not additive
(``U_a U_b != U_{a+b}``) and on full-band vectors it differs from ``F^a`` by order one. It agrees
with ``F^a`` on smooth, band-limited vectors (e.g. low Hermite–Gaussian modes). Never compare the
two on random vectors at non-integer orders. Invert with :func:`frft_adjoint`, never ``U_{-a}``
(they coincide mathematically, but the adjoint is the documented inverse).
"""

from __future__ import annotations

import math

import torch

from ._common import (
    Order,
    as_complex,
    centered_coords,
    check_length,
    prepare_order,
    reduce_order,
    reverse_centered,
    unit_phasor,
)


def _apply(x: torch.Tensor, order: Order, dim: int, adjoint: bool) -> torch.Tensor:
    z = as_complex(x)
    n = z.shape[dim]
    check_length(n)
    a, oshape = prepare_order(order, z, dim)
    z = z.movedim(dim, -1)
    # Python-number orders inside [-1, 1] skip the reversal select; tensors never branch on value.
    static_inside = not isinstance(order, torch.Tensor) and abs(float(order)) <= 1.0
    a_red, odd = reduce_order(a)
    a_red = a_red.reshape(oshape + (1,)) if oshape else a_red
    odd = odd.reshape(oshape + (1,)) if oshape else odd

    phi = a_red * (math.pi / 2.0)
    # Chirps in the uncentered (ifftshift-ed) index order, so the FFTs need no extra shifts.
    c2 = torch.fft.ifftshift(centered_coords(n, z.device) ** 2) / n
    sign = 1.0 if adjoint else -1.0
    d_phase = sign * math.pi * torch.tan(phi / 2.0) * c2
    k_phase = sign * math.pi * torch.sin(phi) * c2
    d = unit_phasor(d_phase, z.dtype)
    k = unit_phasor(k_phase, z.dtype)
    d_out = unit_phasor(d_phase - sign * phi / 2.0, z.dtype)  # folds in e^{±iφ/2}

    y = torch.fft.ifftshift(z, dim=-1) * d
    y = torch.fft.fft(y, dim=-1, norm="ortho") * k
    y = torch.fft.ifft(y, dim=-1, norm="ortho") * d_out
    y = torch.fft.fftshift(y, dim=-1)
    if not static_inside:
        y = torch.where(odd, reverse_centered(y), y)
    return y.movedim(-1, dim)


def frft(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """Apply the surrogate ``U_a`` along ``dim``.

    Args:
        x: real or complex tensor of any shape ``(..., N, ...)``; bf16/fp16 are upcast.
        order: a number, a 0-d tensor, or a 1-d tensor of E orders, one per entry of the leading
            (expert) axis of ``x`` (then ``x.shape[0] == E`` and ``dim != 0``).
        dim: the transform axis.

    Returns:
        complex tensor of the same shape (complex64, or complex128 for 64-bit inputs).
        Differentiable with respect to ``x`` and ``order``.
    """
    return _apply(x, order, dim, adjoint=False)


def frft_adjoint(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """Apply ``U_a^H`` (the inverse of :func:`frft`) along ``dim``; same arguments."""
    return _apply(x, order, dim, adjoint=True)


def frft_right(x: torch.Tensor, order: Order) -> torch.Tensor:
    """Right-multiply the rows of ``x`` by ``U_a``: ``x ↦ x U_a`` for ``x`` of shape ``(..., r, N)``.

    Equivalent to ``U_a^T`` on each row; since ``U_a`` is complex symmetric this is ``U_a`` on the
    last axis. FRAME's factor path uses it for ``Ã_e = A_e U_{a_e}`` without building ``U_a``.
    """
    return _apply(x, order, -1, adjoint=False)
