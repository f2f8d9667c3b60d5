"""The exact discrete fractional Fourier transform (Candan, Kutay, Ozaktas, IEEE TSP 2000).

``S`` (uncentered) has ``S[n,n] = 2cos(2πn/N) - 4`` and ``S[n, n±1 mod N] = 1``; it commutes with
the DFT. Its real orthonormal eigenvectors, taken separately in the even subspace
(``v[n] = v[-n]``) and the odd subspace (``v[n] = -v[-n]``) and sorted by descending eigenvalue,
are the discrete Hermite–Gaussians with indices ``k = 0, 2, 4, …`` (even) and ``1, 3, 5, …`` (odd);
for even N the index N-1 is skipped and the last even vector gets N. Then, centered,

    F^a = P · V diag(exp(-iπ a k / 2)) Vᵀ · Pᵀ        (P = fftshift as a permutation)

F^0 = I, F^1 = the centered unitary DFT, F^2 = reversal, F^4 = I, F^a F^b = F^{a+b}, unitary,
smooth in a. Costs O(N²) to apply and O(N²) once per N for V: in each parity subspace S is a
symmetric tridiagonal matrix, solved with LAPACK's MRRR (``scipy.linalg.eigh_tridiagonal``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ._common import Order, as_complex, check_length, prepare_order, unit_phasor

_CACHE_SIZE = 16
_cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_lock = threading.Lock()


def _parity_blocks(n: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Diagonals of S restricted to the even and odd subspaces, in the orthonormal bases
    ``e_0 = δ_0``, ``e_j = (δ_j + δ_{-j})/√2`` (and ``δ_{N/2}`` for even N) and
    ``o_j = (δ_j - δ_{-j})/√2``, ``1 <= j < N/2``."""
    h = n // 2
    c = 2.0 * np.cos(2.0 * np.pi * np.arange(h + 1) / n) - 4.0
    ev_d = c[: h + 1].copy()
    ev_e = np.ones(h)
    ev_e[0] = math.sqrt(2.0)
    od_d = c[1:h].copy() if n % 2 == 0 else c[1 : h + 1].copy()
    od_e = np.ones(max(len(od_d) - 1, 0))
    if n == 2:
        ev_e[0] = 2.0  # δ_0 and δ_1 are neighbours on both sides: S[0, 1] = 1 + 1
    elif n % 2 == 0:
        ev_e[-1] = math.sqrt(2.0)  # e_{N/2-1} couples to δ_{N/2} through two entries of S
    else:
        # e_h and o_h pair δ_h with its neighbour δ_{h+1} = δ_{-h}: S[h, h+1] adds ±1.
        ev_d[-1] += 1.0
        od_d[-1] -= 1.0
    return (ev_d, ev_e), (od_d, od_e)


def _solve(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    if len(d) == 1:
        return np.ones((1, 1))
    _, vecs = eigh_tridiagonal(d, e)
    return vecs[:, ::-1]  # descending eigenvalue = ascending Hermite–Gaussian index


def _build_basis(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centered eigenvectors ``V`` (n×n, float64, columns) and their indices ``k``."""
    (ev_d, ev_e), (od_d, od_e) = _parity_blocks(n)
    h = n // 2
    ue = _solve(ev_d, ev_e)
    vecs = np.zeros((n, n))
    j = np.arange(1, h + (1 if n % 2 else 0))  # paired coordinates in the even basis
    s = 1.0 / math.sqrt(2.0)
    ne = ue.shape[1]
    vecs[0, :ne] = ue[0]
    vecs[j, :ne] = ue[j] * s
    vecs[(-j) % n, :ne] = ue[j] * s
    if n % 2 == 0:
        vecs[h, :ne] = ue[h]
    ke = 2 * np.arange(ne)
    if n % 2 == 0:
        ke[-1] = n  # index N-1 is skipped for even N
    no = len(od_d)
    if no:
        uo = _solve(od_d, od_e)
        jo = np.arange(1, no + 1)
        vecs[jo, ne:] = uo * s
        vecs[(-jo) % n, ne:] = -uo * s
    ko = 2 * np.arange(no) + 1
    centered = np.fft.fftshift(vecs, axes=0)
    return centered, np.concatenate([ke, ko]).astype(np.float64)


def dfrft_basis(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached ``(V, k)``: centered real eigenvectors (columns) and Hermite–Gaussian indices.

    Computed once per ``n`` in float64, converted once per ``(n, dtype, device)``; the cache is
    bounded (LRU, 16 entries) and thread-safe.
    """
    check_length(n)
    device = torch.device(device)
    key = (n, dtype, device)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        base_key = (n, torch.float64, torch.device("cpu"))
        if base_key not in _cache:
            v, k = _build_basis(n)
            _cache[base_key] = (torch.from_numpy(v), torch.from_numpy(k))
        v64, k64 = _cache[base_key]
        entry = (v64.to(device=device, dtype=dtype), k64.to(device=device))
        _cache[key] = entry
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return entry


def _eigen_phases(
    a: torch.Tensor, oshape: tuple[int, ...], k: torch.Tensor, cdtype
) -> torch.Tensor:
    a = a.reshape(oshape) if oshape else a
    return unit_phasor(-(math.pi / 2.0) * a * k, cdtype)


def dfrft(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """Apply the exact centered discrete FrFT ``F^a`` along ``dim`` (dense, O(N²) per vector).

    Same input rules as :func:`frame_peft.transforms.frft`: real or complex input of any batch
    shape, an order that is a number, a 0-d tensor, or a 1-d tensor over the leading expert axis.
    Returns a complex tensor; differentiable with respect to ``x`` and ``order``.
    """
    z = as_complex(x)
    n = z.shape[dim]
    check_length(n)
    a, oshape = prepare_order(order, z, dim)
    rdtype = torch.float64 if z.dtype == torch.complex128 else torch.float32
    v, k = dfrft_basis(n, rdtype, z.device)
    z = z.movedim(dim, -1)
    # Vᵀ z on each vector (rows: z @ V); real V on real and imaginary parts separately.
    coef = torch.complex(z.real @ v, z.imag @ v) * _eigen_phases(a, oshape, k, z.dtype)
    y = torch.complex(coef.real @ v.T, coef.imag @ v.T)
    return y.movedim(-1, dim)


def dfrft_adjoint(x: torch.Tensor, order: Order, dim: int = -1) -> torch.Tensor:
    """``(F^a)^H = F^{-a}`` for the exact transform (it is additive and unitary)."""
    return dfrft(x, -order, dim=dim)


def dfrft_matrix(n: int, order: Order, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """The dense ``n×n`` matrix of the exact centered FrFT ``F^a`` (complex symmetric, unitary)."""
    rdtype = torch.float64 if dtype == torch.complex128 else torch.float32
    eye = torch.eye(n, dtype=rdtype)
    return dfrft(eye, order, dim=0).to(dtype)
