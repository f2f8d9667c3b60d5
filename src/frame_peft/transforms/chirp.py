"""The three-shear chirp–FFT fractional Fourier surrogate ``U_a`` (FRAME's default transform).

With ``φ = aπ/2`` and centered coordinates ``c`` (docs/methods.md §1)::

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

Implementation. ``C^H K C`` is a circular convolution, which commutes with cyclic shifts, so the
``fftshift``/``ifftshift`` pair around it cancels: the data stay in centered index order and only
``K`` is laid out in FFT-bin order. The whole map is one :class:`torch.autograd.Function` whose
backward applies the adjoint (two FFTs) and, only when the order needs a gradient, reduces three
saved intermediates against the analytic phase derivatives. Reversal for tensor orders is an
index gather whose index is selected on the tensor (no Python branch on the order's value).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_all
from ._common import (
    Order,
    as_complex,
    check_length,
    complex_dtype_for,
    prepare_order,
    reduce_order,
    unit_phasor,
)

_HALF_PI = math.pi / 2.0


@lru_cache(maxsize=64)
def _grid(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 ``c²/N`` in centered order, ``f²/N`` in FFT-bin order, and the reversal index.

    The reversal ``c -> -c`` maps index ``i`` to ``(2·(N//2) - i) mod N``.
    """
    c = torch.arange(n, dtype=torch.float64, device=device) - (n // 2)
    c2 = c * c / n
    f2 = torch.fft.ifftshift(c2)
    rev = (2 * (n // 2) - torch.arange(n, device=device)) % n
    return c2, f2, rev


def _phasors(
    a_red: torch.Tensor, n: int, device: torch.device, cdtype: torch.dtype, sign: float
) -> tuple[torch.Tensor, ...]:
    """The three diagonal factors (phases in float64, reduced mod 2π, then cast)."""
    c2, f2, _ = _grid(n, device)
    phi = a_red * _HALF_PI
    d_phase = (sign * math.pi) * torch.tan(phi / 2.0) * c2
    d = unit_phasor(d_phase, cdtype)
    k = unit_phasor((sign * math.pi) * torch.sin(phi) * f2, cdtype)
    d_out = d * unit_phasor(-sign * phi / 2.0, cdtype)  # folds in e^{∓iφ/2}: one per order
    return d, k, d_out


# Rows are processed in blocks of about this many elements: the block's temporaries stay in
# cache and are recycled by the allocator, instead of touching fresh full-size buffers per step.
_BLOCK = 1 << 18


def _blocks(e: int, m: int, n: int):
    """Yield ``(e0, e1, r0, r1)`` blocks over an ``(E, M, N)`` array, each about ``_BLOCK`` big."""
    if m * n >= _BLOCK or e == 1:
        rows = max(1, _BLOCK // n)
        for i in range(e):
            for r0 in range(0, m, rows):
                yield i, i + 1, r0, min(m, r0 + rows)
    else:
        per = max(1, _BLOCK // (m * n))
        for e0 in range(0, e, per):
            yield e0, min(e, e0 + per), 0, m


def _reverse(y: torch.Tensor, idx: torch.Tensor | None, e0: int, e1: int) -> torch.Tensor:
    """Apply the (per-expert) reversal index ``idx`` of shape ``(E, 1, N)`` to a block."""
    if idx is None:
        return y
    return torch.gather(y, -1, idx[e0:e1].expand(y.shape))


def _im_dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Im Σ conj(u_j)·v_j`` for each leading index j of ``(J, M, N)`` blocks, float64 (J,).

    ``v`` may be real. One batched dot product for the whole block, not a loop over j.
    """
    u, v = u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1)
    if v.is_complex():
        return torch.linalg.vecdot(u, v).imag.double()
    return -torch.linalg.vecdot(u.imag, v).double()


class _Surrogate(torch.autograd.Function):
    """``y = R^{odd} · d_out ⊙ ifft(k ⊙ fft(d ⊙ z))`` on ``z`` of shape ``(E, M, N)``.

    ``a`` is a float64 tensor of shape ``(E,)`` (one order per expert; ``E = 1`` for a scalar).
    ``static_odd`` is ``None`` for tensor orders (reversal selected on the tensor, no Python
    branch on its value) or a Python bool for Python-number orders.

    Backward (``g`` the output gradient, ``h = R g``): ``grad_z = conj(d) ⊙ ifft(conj(k) ⊙
    fft(conj(d_out) ⊙ h))`` and, with ``p_d, p_k, p_out`` the phases of the three factors,
    ``dL/dφ = -Σ p_out'·Im Σ conj(g)·y - Σ p_k'·Im Σ conj(B2)·w2 - Σ p_d'·Im Σ conj(grad_z)·z``
    where ``w2 = k ⊙ fft(d ⊙ z)`` (saved only when the order needs a gradient) and
    ``B2 = fft(conj(d_out) ⊙ h)``. The reversal drops out of the first sum because the chirp
    phases are even in the centered coordinate.

    ``pack=True`` returns ``y`` as real ``(E, 2, M, N)`` (real parts, then imaginary parts) and
    takes the gradient in that form, so callers that need ``[Re y; Im y]`` (FRAME's factors) get
    it without separate real/imag/cat ops and their backward passes.
    """

    @staticmethod
    def forward(ctx, z, a, sign, static_odd, pack=False):
        e, m, n = z.shape
        cdtype = complex_dtype_for(z.dtype)
        a_red, odd = reduce_order(a.reshape(-1, 1, 1))
        d, k, d_out = _phasors(a_red, n, z.device, cdtype, sign)
        if static_odd is None:
            rev = _grid(n, z.device)[2]
            idx = torch.where(odd, rev, torch.arange(n, device=z.device))
        else:
            idx = _grid(n, z.device)[2].reshape(1, 1, n).expand(e, 1, n) if static_odd else None
        need_a = ctx.needs_input_grad[1]
        if pack:
            rdtype = torch.float64 if cdtype == torch.complex128 else torch.float32
            out = torch.empty((e, 2, m, n), dtype=rdtype, device=z.device)
        else:
            out = torch.empty((e, m, n), dtype=cdtype, device=z.device)
        w2_all = torch.empty((e, m, n), dtype=cdtype, device=z.device) if need_a else None
        for e0, e1, r0, r1 in _blocks(e, m, n):
            zb = z[e0:e1, r0:r1]
            w = torch.fft.fft(zb * d[e0:e1], dim=-1, norm="ortho")
            if need_a:
                w = torch.mul(w, k[e0:e1], out=w2_all[e0:e1, r0:r1])
            else:
                w.mul_(k[e0:e1])
            y = _reverse(torch.fft.ifft(w, dim=-1, norm="ortho"), idx, e0, e1)
            if pack:
                y = y.mul_(d_out[e0:e1])
                out[e0:e1, 0, r0:r1] = y.real
                out[e0:e1, 1, r0:r1] = y.imag
            else:
                torch.mul(y, d_out[e0:e1], out=out[e0:e1, r0:r1])
        ctx.sign = sign
        ctx.pack = pack
        ctx.need_a = need_a
        ctx.z_real = not z.is_complex()
        ctx.z_dtype = z.dtype
        if need_a:
            ctx.save_for_backward(a, idx, d, k, d_out, z, out, w2_all)
        else:
            ctx.save_for_backward(a, idx, d, k, d_out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        if ctx.need_a:
            a, idx, d, k, d_out, z, out, w2_all = ctx.saved_tensors
        else:
            a, idx, d, k, d_out = ctx.saved_tensors
        e, m, n = g.shape[0], g.shape[-2], g.shape[-1]
        sign = ctx.sign
        need_z = ctx.needs_input_grad[0]
        a_red, _ = reduce_order(a.reshape(-1, 1, 1))
        d_c, k_c, dout_c = d.conj(), k.conj(), d_out.conj()
        g = g.contiguous()
        rdtype = torch.float64 if g.dtype in (torch.complex128, torch.float64) else torch.float32
        grad_z = None
        if need_z:
            grad_z = torch.empty(
                (e, m, n), dtype=rdtype if ctx.z_real else g.dtype, device=g.device
            )
        if ctx.need_a:
            # Phase derivatives (float64, then cast): p_d' = p_out' + s/2, p_k'.
            c2, f2, _ = _grid(n, g.device)
            phi = a_red * _HALF_PI
            t = torch.tan(phi / 2.0)
            dd = (sign * math.pi * 0.5) * (1.0 + t * t) * c2
            w_out = (dd - 0.5 * sign).to(rdtype)
            w_k = ((sign * math.pi) * torch.cos(phi) * f2).to(rdtype)
            w_d = dd.to(rdtype)
            acc = torch.zeros(e, dtype=torch.float64, device=g.device)
        for e0, e1, r0, r1 in _blocks(e, m, n):
            gb = _block(g, ctx.pack, e0, e1, r0, r1)
            b2 = torch.fft.fft(_reverse(gb, idx, e0, e1) * dout_c[e0:e1], dim=-1, norm="ortho")
            if ctx.need_a:
                ob = _block(out, ctx.pack, e0, e1, r0, r1) * w_out[e0:e1]
                wb = w2_all[e0:e1, r0:r1] * w_k[e0:e1]
                acc[e0:e1] += _im_dots(gb, ob) + _im_dots(b2, wb)
            gz = torch.fft.ifft(b2.mul_(k_c[e0:e1]), dim=-1, norm="ortho").mul_(d_c[e0:e1])
            if ctx.need_a:
                acc[e0:e1] += _im_dots(gz, z[e0:e1, r0:r1] * w_d[e0:e1])
            if need_z:
                grad_z[e0:e1, r0:r1] = gz.real if ctx.z_real else gz
        grad_a = None
        if ctx.need_a:
            grad_a = (-_HALF_PI * acc).reshape(a.shape)
        if need_z and grad_z.dtype != ctx.z_dtype:
            grad_z = grad_z.to(ctx.z_dtype)
        return grad_z, grad_a, None, None, None


def _block(t: torch.Tensor, packed: bool, e0: int, e1: int, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[e0:e1, r0:r1]`` of ``t`` as complex (``t`` real ``(E, 2, M, N)`` if packed)."""
    if packed:
        return torch.complex(t[e0:e1, 0, r0:r1], t[e0:e1, 1, r0:r1])
    return t[e0:e1, r0:r1]


def _apply(
    x: torch.Tensor,
    order: Order,
    dim: int,
    adjoint: bool,
    unit_orders: bool = False,
    pack: bool = False,
) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    # Real inputs stay real into the kernel (the first chirp product makes them complex); half
    # precision is upcast to float32 (CPU FFTs refuse it), other dtypes are validated and made
    # complex here.
    if x.dtype in (torch.float32, torch.float64):
        z = x
    elif x.dtype in (torch.float16, torch.bfloat16):
        z = x.float()
    else:
        z = as_complex(x)
    n = z.shape[dim]
    check_length(n)
    a, oshape = prepare_order(order, z, dim)
    z = z.movedim(dim, -1)
    shape = z.shape
    e = a.numel() if oshape else 1
    z3 = z.reshape(e, -1, n)
    # Python-number orders pick the reversal statically; tensors never branch on their value.
    static_odd = None
    if not isinstance(order, torch.Tensor):
        static_odd = bool(round(float(order) / 2.0) % 2)
    elif unit_orders:  # |a| <= 1 rounds to m = 0 (half to even at ±1): no reversal
        check_all(a.abs() <= 1.0, "unit_orders=True needs every order in [-1, 1]")
        static_odd = False
    sign = 1.0 if adjoint else -1.0
    y = _Surrogate.apply(z3, a.reshape(e), sign, static_odd, pack)
    if pack:  # only for (G, M, N) rows on the last axis
        return y.reshape(shape[0], 2 * shape[1], shape[2])
    return y.reshape(shape).movedim(-1, dim)


def frft_rows_packed(
    z: torch.Tensor, orders: torch.Tensor, *, unit_orders: bool = False
) -> torch.Tensor:
    """``U_{a_g}`` on the rows of real ``z`` (G, M, N), returned as real ``[Re; Im]`` (G, 2M, N).

    Row ``m`` of block ``g`` gives output rows ``m`` (real part) and ``M + m`` (imaginary part).
    ``orders`` has shape (G,), one per block. Same values and gradients as
    ``torch.cat([y.real, y.imag], 1)`` of ``frft(z, orders, dim=-1)``, in fewer passes.
    """
    if z.dim() != 3 or z.is_complex():
        raise ValueError(f"expected real rows of shape (G, M, N), got {z.dtype} {tuple(z.shape)}")
    return _apply(z, orders, -1, adjoint=False, unit_orders=unit_orders, pack=True)


def frft(
    x: torch.Tensor, order: Order, dim: int = -1, *, unit_orders: bool = False
) -> torch.Tensor:
    """Apply the surrogate ``U_a`` along ``dim``.

    Args:
        x: real or complex tensor of any shape ``(..., N, ...)``; bf16/fp16 are upcast.
        order: a number, a 0-d tensor, or a 1-d tensor of E orders, one per entry of the leading
            (expert) axis of ``x`` (then ``x.shape[0] == E`` and ``dim != 0``).
        dim: the transform axis.
        unit_orders: declare that every order lies in [-1, 1] (FRAME's sigmoid orders do), so
            no reversal is needed and a per-call index gather is skipped. Checked (a host sync
            on CPU only; an asynchronous assert on accelerators).

    Returns:
        complex tensor of the same shape (complex64, or complex128 for 64-bit inputs).
        Differentiable with respect to ``x`` and ``order``.
    """
    return _apply(x, order, dim, adjoint=False, unit_orders=unit_orders)


def frft_adjoint(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """Apply ``U_a^H`` (the inverse of :func:`frft`) along ``dim``; same arguments."""
    return _apply(x, order, dim, adjoint=True)


def frft_right(x: torch.Tensor, order: Order) -> torch.Tensor:
    """Right-multiply rows by ``U_a``: ``x ↦ x U_a`` for ``x`` of shape ``(..., r, N)``.

    Equivalent to ``U_a^T`` on each row; since ``U_a`` is complex symmetric this is ``U_a`` on the
    last axis. FRAME's factor path uses it for ``Ã_e = A_e U_{a_e}`` without building ``U_a``.
    """
    return _apply(x, order, -1, adjoint=False)
