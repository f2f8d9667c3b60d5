"""The exact Candan discrete FrFT: unitarity, inverse, additivity, eigenvectors, S, the cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frame_peft.transforms import dfrft, dfrft_basis, dfrft_matrix, dft
from frame_peft.transforms import exact as exact_mod


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic inputs (and gradcheck's random projections) for every test here."""
    torch.manual_seed(0)


def tol64(n: int) -> float:
    return 1e-12 * max(1.0, math.log2(n))


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


DENSE_SIZES = [2, 3, 4, 5, 8, 9, 16, 17, 64, 65, 255, 256]
ALL_SIZES = [*DENSE_SIZES, 1023, 1024]


@pytest.mark.parametrize("n", DENSE_SIZES)
def test_unitary_dense(n: int) -> None:
    eye = torch.eye(n, dtype=torch.complex128)
    for a in (0.3, -0.77, 1.5, 2.9):
        f = dfrft_matrix(n, a)
        assert (f.conj().T @ f - eye).abs().max() < tol64(n)
        assert (f - f.T).abs().max() < tol64(n)  # complex symmetric


@pytest.mark.parametrize("n", ALL_SIZES)
def test_unitary_inverse_additive(n: int) -> None:
    x = torch.randn(16, n, dtype=torch.complex128)
    gram = x.conj() @ x.T
    for a, b in ((0.3, 0.45), (-0.77, 1.9), (1.5, 1.25), (0.999, 0.002)):
        y = dfrft(x, a)
        assert (y.conj() @ y.T - gram).abs().max() / gram.abs().max() < tol64(n)  # unitary
        assert rel(dfrft(y, -a), x) < tol64(n)  # F^-a F^a = I
        assert rel(dfrft(y, b), dfrft(x, a + b)) < tol64(n)  # F^b F^a = F^(a+b)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 16, 17, 64, 65, 256, 257])
def test_eigenvectors_are_dft_eigenvectors(n: int) -> None:
    v, k = dfrft_basis(n)
    expected_k = list(range(n)) if n % 2 else [*range(n - 1), n]
    assert sorted(k.long().tolist()) == expected_k
    assert (v.T @ v - torch.eye(n, dtype=torch.float64)).abs().max() < tol64(n)
    vc = v.to(torch.complex128)
    lam = torch.exp(-0.5j * math.pi * k.to(torch.complex128))  # (-i)^k
    assert (dft(vc, dim=0) - vc * lam).abs().max() < tol64(n)
    # parity: v_k(-c) = (-1)^k v_k(c)
    idx = [(2 * (n // 2) - i) % n for i in range(n)]
    sign = 1.0 - 2.0 * (k % 2)
    assert (v[idx] - v * sign).abs().max() < tol64(n)


@pytest.mark.parametrize("n", [64, 65, 256])
def test_hermite_gaussian_index(n: int) -> None:
    """k is the Hermite–Gaussian index: v_k has k sign changes (low k) and, for k <= 3, is the
    sampled continuous Hermite–Gaussian H_k(√(2π) t) exp(-π t²), t = c/√n."""
    v, k = dfrft_basis(n)
    t = (torch.arange(n, dtype=torch.float64) - n // 2) / math.sqrt(n)
    u = math.sqrt(2 * math.pi) * t
    hermite = [torch.ones_like(u), 2 * u, 4 * u**2 - 2, 8 * u**3 - 12 * u]
    for kk in range(12):
        col = v[:, int((k == kk).nonzero())]
        big = col[col.abs() > 1e-8 * col.abs().max()]
        assert int((big[1:] * big[:-1] < 0).sum()) == kk
        if kk <= 3:
            psi = hermite[kk] * torch.exp(-math.pi * t**2)
            overlap = abs(float(col @ psi)) / float(psi.norm())
            assert overlap > 1 - 1e-3


@pytest.mark.parametrize("n", [3, 4, 16, 17])
def test_matrix_is_spectral_formula(n: int) -> None:
    v, k = dfrft_basis(n)
    for a in (0.37, -1.3):
        ref = (v * torch.exp(-0.5j * math.pi * a * k)) @ v.T.to(torch.complex128)
        assert (dfrft_matrix(n, a) - ref).abs().max() < tol64(n)
    # and the basis comes from S: V^T S V is diagonal (uncentered S, centered V)
    s = _dense_s(n)
    vu = np.fft.ifftshift(v.numpy(), axes=0)
    off = vu.T @ s @ vu
    assert np.abs(off - np.diag(np.diag(off))).max() < 1e-10


def _dense_s(n: int) -> np.ndarray:
    """S from docs/methods.md §1: S[n,n] = 2cos(2πn/N) - 4, S[n,(n±1) mod N] += 1 (uncentered)."""
    s = np.diag(2 * np.cos(2 * np.pi * np.arange(n) / n) - 4)
    for i in range(n):
        s[i, (i + 1) % n] += 1
        s[i, (i - 1) % n] += 1
    return s


def _parity_bases(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal even and odd bases (columns) in the order ``_parity_blocks`` uses."""
    h = n // 2
    r = 1 / math.sqrt(2)
    even, odd = [], []
    e0 = np.zeros(n)
    e0[0] = 1
    even.append(e0)
    last = h if n % 2 else h - 1
    for j in range(1, last + 1):
        v = np.zeros(n)
        v[j] += r
        v[(-j) % n] += r
        even.append(v)
        w = np.zeros(n)
        w[j] += r
        w[(-j) % n] -= r
        odd.append(w)
    if n % 2 == 0:
        eh = np.zeros(n)
        eh[h] = 1
        even.append(eh)
    return np.array(even).T, np.array(odd).T.reshape(n, -1)


def _tridiag(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.diag(d) + np.diag(e, 1) + np.diag(e, -1)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9, 16, 17])
def test_parity_blocks_equal_dense_btsb(n: int) -> None:
    s = _dense_s(n)
    (ev_d, ev_e), (od_d, od_e) = exact_mod._parity_blocks(n)
    be, bo = _parity_bases(n)
    assert np.allclose(be.T @ be, np.eye(be.shape[1])) and np.allclose(
        bo.T @ bo, np.eye(bo.shape[1])
    )
    assert be.shape[1] + bo.shape[1] == n
    np.testing.assert_allclose(_tridiag(ev_d, ev_e), be.T @ s @ be, atol=1e-13)
    if bo.shape[1]:
        np.testing.assert_allclose(_tridiag(od_d, od_e), bo.T @ s @ bo, atol=1e-13)
        assert np.abs(be.T @ s @ bo).max() < 1e-13  # S does not mix the parities


def test_basis_cache_same_object_and_bounded() -> None:
    first = dfrft_basis(48)
    assert dfrft_basis(48) is first
    assert dfrft_basis(48, torch.float64, "cpu") is first
    f32 = dfrft_basis(48, torch.float32)
    assert f32 is dfrft_basis(48, torch.float32) and f32[0].dtype == torch.float32
    for n in range(100, 100 + 3 * exact_mod._CACHE_SIZE):
        dfrft_basis(n)
        assert len(exact_mod._cache) <= exact_mod._CACHE_SIZE
    v, _ = dfrft_basis(48)  # evicted and rebuilt: equal values, new object
    assert v is not first[0]
    torch.testing.assert_close(v, first[0], rtol=0, atol=0)
