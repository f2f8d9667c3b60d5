"""Shared plumbing for the transforms: validation, dtype rules, the centered grid.

Conventions (docs/methods.md §1): index ``i = 0..N-1`` stands for the coordinate ``c = i - N//2``
(the fftshift convention). Every transform computes in complex64, or complex128 for float64 /
complex128 inputs; bf16 and fp16 inputs are upcast because torch's FFT refuses them on CPU.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_all

Order = float | int | torch.Tensor

TWO_PI = 2.0 * math.pi


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64/complex128 inputs, complex64 for everything else."""
    if dtype in (torch.float64, torch.complex128):
        return torch.complex128
    return torch.complex64


def as_complex(x: torch.Tensor) -> torch.Tensor:
    """Validate ``x`` and return it as a complex tensor of the compute dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"transforms need a floating-point or complex tensor, got dtype {x.dtype}; "
            "cast it first, e.g. x.float()"
        )
    return x.to(complex_dtype_for(x.dtype))


def check_length(n: int) -> None:
    if n < 2:
        raise ValueError(f"a transform needs a length of at least 2 along `dim`, got {n}")


def prepare_order(order: Order, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return the order as a float64 tensor and the shape it broadcasts with (``dim`` moved last).

    A Python number or 0-d tensor applies to the whole input. A 1-d tensor of length E gives one
    order per entry of the leading axis of ``x`` (the expert axis), which must have length E.
    The float64 copy is differentiable, so gradients still reach a float32 ``order`` parameter.
    """
    if isinstance(order, torch.Tensor):
        if order.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"order has dtype {order.dtype}; keep orders in float32 or float64 (a bf16 "
                "order 0.37 rounds to 0.369, which moves the transform by over 70% at N=1024)"
            )
        if order.is_complex() or not order.is_floating_point():
            order = order.to(torch.float64) if not order.is_complex() else order
            if order.is_complex():
                raise ValueError("order must be real")
        if order.dim() > 1:
            raise ValueError(
                f"order must be a scalar or a 1-d tensor, got shape {tuple(order.shape)}"
            )
        check_all(
            torch.isfinite(order), lambda: f"order must be finite, got {order.detach().tolist()}"
        )
        a = order.to(device=x.device, dtype=torch.float64)
    else:
        a_f = float(order)
        if not math.isfinite(a_f):
            raise ValueError(f"order must be finite, got {order!r}")
        a = torch.tensor(a_f, dtype=torch.float64, device=x.device)
    if a.dim() == 0:
        return a, ()
    ndim = x.dim()
    if dim % ndim == 0:
        raise ValueError(
            "a 1-d order is one order per entry of the leading (expert) axis, so `dim` cannot "
            "be 0; move the transform axis elsewhere"
        )
    if ndim < 2 or x.shape[0] != a.shape[0]:
        raise ValueError(
            f"a 1-d order of length {a.shape[0]} needs an input whose leading (expert) axis has "
            f"that length; got input shape {tuple(x.shape)}"
        )
    # Shape of the order once the transform axis is moved last: (E, 1, ..., 1, 1).
    return a, (a.shape[0],) + (1,) * (ndim - 1)


def unit_phasor(phase: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """``exp(i·phase)`` with the phase reduced mod 2π in float64 before the cast.

    Chirp phases reach πN/4 radians; float32 phases would cost about 100× accuracy.
    ``remainder`` has gradient 1 almost everywhere, so the order still gets its gradient.
    """
    phase = torch.remainder(phase.to(torch.float64), TWO_PI)
    if cdtype == torch.complex64:
        # Once reduced to [0, 2π) a float32 phase is off by < 4e-7 rad, below complex64's own
        # rounding, and float32 cos/sin are several times faster than float64 ones.
        phase = phase.to(torch.float32)
    # cos/sin then complex: about 9x faster than torch.polar on CPU, same values.
    return torch.complex(torch.cos(phase), torch.sin(phase)).to(cdtype)


def reduce_order(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``a = 2m + a'`` with ``a' in [-1, 1]``; return ``(a', m odd)``.

    Periodicity (F⁴ = I) and F² = reversal mean only the parity of m matters. Tensor ops only:
    no Python branching on the value of the order.
    """
    m = torch.round(a / 2.0)
    return a - 2.0 * m, torch.remainder(m, 2.0) == 1.0
