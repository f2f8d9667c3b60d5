"""The three-shear chirp–FFT surrogate U_a (docs/methods.md §1).

The surrogate and the exact transform are different operators: at non-integer orders they differ
by O(1) on full-band (random) vectors, so they are never compared there. They agree on smooth,
band-limited vectors (low Hermite–Gaussian modes, well-sampled Gaussian chirps).
"""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from frame_peft.transforms import chirp as chirp_mod
from frame_peft.transforms import dfrft, dfrft_basis, frft, frft_adjoint, frft_right


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic inputs (and gradcheck's random projections) for every test here."""
    torch.manual_seed(0)


def tol(dtype: torch.dtype, n: int) -> float:
    if dtype in (torch.float64, torch.complex128):
        return 1e-12 * max(1.0, math.log2(n))
    return 1e-5


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach(), ref.detach().to(y.dtype)
    return float((y - ref).norm() / ref.norm())


def coords(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64) - n // 2


def dft_matrix(n: int) -> torch.Tensor:
    c = coords(n)
    return torch.exp(-2j * math.pi * torch.outer(c, c).to(torch.complex128) / n) / math.sqrt(n)


def reversal_matrix(n: int) -> torch.Tensor:
    r = torch.zeros(n, n, dtype=torch.complex128)
    for i in range(n):
        r[(2 * (n // 2) - i) % n, i] = 1
    return r


def surrogate_matrix(n: int, a: float) -> torch.Tensor:
    """U_a built densely from docs/methods.md §1.3 (U_a = R^m U_{a-2m}, m = round(a/2))."""
    m = round(a / 2)
    phi = (a - 2 * m) * math.pi / 2
    c2 = coords(n) ** 2 / n
    d = torch.diag(torch.exp(-1j * math.pi * math.tan(phi / 2) * c2))
    k = torch.diag(torch.exp(-1j * math.pi * math.sin(phi) * c2))
    c = dft_matrix(n)
    u = cmath.exp(0.5j * phi) * d @ c.conj().T @ k @ c @ d
    return torch.linalg.matrix_power(reversal_matrix(n), m % 2) @ u


def explicit(n: int, a: float) -> torch.Tensor:
    """U_a as the package computes it, column by column."""
    return frft(torch.eye(n, dtype=torch.complex128), a, dim=0)


ORDERS = [0.0, 0.13, 0.5, -0.4, 0.999, 1.0, 1.37, -1.8, 2.6, -3.3]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 64, 65])
def test_matches_methods_formula(n: int) -> None:
    for a in ORDERS:
        assert (explicit(n, a) - surrogate_matrix(n, a)).abs().max() < tol(torch.float64, n), a


@pytest.mark.parametrize("n", [16, 17, 64, 65, 256, 257])
def test_unitary_and_adjoint_inverts(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    eye = torch.eye(n, dtype=torch.complex128)
    for a in [*((torch.rand(6, generator=gen) * 8 - 4).tolist()), 0.0, 1.0, -1.0]:
        u = explicit(n, a)
        assert (u.conj().T @ u - eye).abs().max() < tol(torch.float64, n)
        x = torch.randn(3, n, dtype=torch.complex128, generator=gen)
        assert rel(frft_adjoint(frft(x, a), a), x) < tol(torch.float64, n)
        assert rel(frft(frft_adjoint(x, a), a), x) < tol(torch.float64, n)
        x32 = x.to(torch.complex64)
        assert rel(frft_adjoint(frft(x32, a), a), x32) < tol(torch.float32, n)


def test_unitary_large_n_batch() -> None:
    n = 1024
    x = torch.randn(16, n, dtype=torch.complex128)
    gram = x.conj() @ x.T
    for a in (0.3, -0.77, 1.5):
        y = frft(x, a)
        assert (y.conj() @ y.T - gram).abs().max() / gram.abs().max() < tol(torch.float64, n)


@pytest.mark.parametrize("n", [64, 65])
def test_complex_symmetric_and_negative_order_is_conjugate(n: int) -> None:
    for a in (0.3, 0.77, -0.5, 1.4, 2.2):
        u = explicit(n, a)
        assert (u - u.T).abs().max() < tol(torch.float64, n)
        assert (explicit(n, -a) - u.conj()).abs().max() < tol(torch.float64, n)
        assert (
            frft_adjoint(torch.eye(n, dtype=torch.complex128), a, dim=0) - u.conj().T
        ).abs().max() < 1e-12


@pytest.mark.parametrize("n", [16, 17, 64])
def test_frft_right_is_right_multiplication(n: int) -> None:
    x = torch.randn(8, 4, n, dtype=torch.complex128)
    for a in (0.3, -1.2):
        assert rel(frft_right(x, a), x @ explicit(n, a)) < tol(torch.float64, n)
    orders = torch.linspace(-1.5, 1.5, 8, dtype=torch.float64)
    ref = torch.stack([x[e] @ explicit(n, float(orders[e])) for e in range(8)])
    assert rel(frft_right(x, orders), ref) < tol(torch.float64, n)


@pytest.mark.parametrize("n", [16, 64, 256])
def test_u1_is_centered_dft_for_even_n(n: int) -> None:
    assert (explicit(n, 1.0) - dft_matrix(n)).abs().max() < tol(torch.float64, n)
    assert (explicit(n, -1.0) - dft_matrix(n).conj()).abs().max() < tol(torch.float64, n)


@pytest.mark.parametrize("n", [17, 65, 257])
def test_odd_n_u1_differs_from_dft_by_order_one(n: int) -> None:
    """Documented: for odd N the discrete chirp identity fails. U_1 != C by O(1) in norm (the
    spectral norm of U_1 - C is 2, i.e. some vectors are mapped to -C x), the relative Frobenius
    difference is about 1, and the transform jumps at a = ±1. On smooth band-limited vectors
    (a Gaussian) U_1 still equals C to machine precision."""
    diff = explicit(n, 1.0) - dft_matrix(n)
    assert 1.99 < float(torch.linalg.matrix_norm(diff, ord=2)) < 2.0 + 1e-9
    assert 0.9 < float(diff.norm()) / math.sqrt(n) < 1.1
    delta = 1e-9
    jump = (explicit(n, 1.0 + delta) - explicit(n, 1.0 - delta)).norm() / math.sqrt(n)
    assert jump > 0.5
    if n >= 65:  # the Gaussian is only well sampled (aliasing < 1e-20) from n ≈ 65 on
        g = torch.exp(-math.pi * (coords(n) / math.sqrt(n)) ** 2).to(torch.complex128)
        assert rel(frft(g, 1.0), g @ dft_matrix(n).T) < tol(torch.float64, n)


def test_not_additive_and_differs_from_exact_on_random_vectors() -> None:
    """Pins the documentation: never compare U_a with F^a on random vectors at non-integer a."""
    n = 256
    x = torch.randn(4, n, dtype=torch.complex128)
    assert rel(frft(frft(x, 0.5), 0.5), frft(x, 1.0)) > 0.1  # U_.5 U_.5 != U_1
    for a in (0.3, 0.5, -0.7):
        assert rel(frft(x, a), dfrft(x, a)) > 0.1


def chirp_ft(n: int, g: complex, a: float) -> torch.Tensor:
    """Closed-form continuous FrFT of f(t) = exp(-π g t²), sampled at u = c/√n.

    Kernel K_φ(u, t) = sqrt(1 - i cot φ) exp(iπ(cot φ·u² - 2 csc φ·u t + cot φ·t²)) (unitary FT at
    φ = π/2: ∫ f(t) e^{-2πiut} dt). Then F^a f(u) = A exp(-π g' u²) with
        g' = (g cos φ + i sin φ) / (cos φ + i g sin φ),   A = e^{iφ/2} / sqrt(cos φ + i g sin φ),
    principal square root, valid for |φ| < π (Im of the radicand has the sign of sin φ, so it never
    crosses the branch cut). F² f(t) = f(-t) = f(t), so a is first reduced into [-1, 1].
    """
    a = a - 2 * round(a / 2)
    phi = a * math.pi / 2
    den = math.cos(phi) + 1j * g * math.sin(phi)
    gp = (g * math.cos(phi) + 1j * math.sin(phi)) / den
    amp = cmath.exp(0.5j * phi) / cmath.sqrt(den)
    u = (coords(n) / math.sqrt(n)).to(torch.complex128)
    return amp * torch.exp(-math.pi * gp * u**2)


CHIRPS = [1.0, 1 + 0.5j, 0.7 - 0.6j]


def test_chirp_closed_form_is_right() -> None:
    """Independent checks of the derivation: a = 0 is f, a = 1 is the (sampled) Fourier transform
    g^{-1/2} exp(-π u²/g), a = ±2 is f, and the closed form composes additively."""
    n = 256
    for g in CHIRPS:
        f0 = chirp_ft(n, g, 0.0)
        u = coords(n) / math.sqrt(n)
        assert rel(f0, torch.exp(-math.pi * g * u.to(torch.complex128) ** 2)) < 1e-15
        ft = torch.exp(-math.pi * u.to(torch.complex128) ** 2 / g) / cmath.sqrt(g)
        assert rel(chirp_ft(n, g, 1.0), ft) < 1e-14
        assert rel(chirp_ft(n, g, 2.0), f0) < 1e-15
        for a, b in ((0.3, 0.45), (0.7, -0.2), (0.4, 0.5)):
            phi = a * math.pi / 2
            den = math.cos(phi) + 1j * g * math.sin(phi)
            ga = (g * math.cos(phi) + 1j * math.sin(phi)) / den
            amp = cmath.exp(0.5j * phi) / cmath.sqrt(den)
            assert rel(amp * chirp_ft(n, ga, b), chirp_ft(n, g, a + b)) < 1e-13


@pytest.mark.parametrize("n", [256, 257, 1024, 4096])
@pytest.mark.parametrize("cdtype", [torch.complex128, torch.complex64])
def test_surrogate_matches_continuous_frft_of_gaussian_chirp(n: int, cdtype: torch.dtype) -> None:
    """The sampled closed form is reproduced to float64 ~1e-12·log2(n) (measured ~1e-15) and
    complex64 ~1e-5 (measured ~1e-7), odd n included: the Gaussian chirp is band-limited, so the
    three-shear discretisation is exact up to aliasing far below these tolerances."""
    for g in CHIRPS:
        x = chirp_ft(n, g, 0.0).to(cdtype)
        for a in (0.0, 0.3, 0.5, -0.4, 0.999, 1.0, 1.5, -1.7, 2.5, -3.2):
            assert rel(frft(x, a), chirp_ft(n, g, a)) < tol(cdtype, n), (g, a)


@pytest.mark.parametrize("n", [64, 65, 256, 257, 1024])
def test_lowest_hermite_gaussian_modes(n: int) -> None:
    v, k = dfrft_basis(n)
    for kk in range(4):
        vk = v[:, int((k == kk).nonzero())].to(torch.complex128)
        for a in (0.1, 0.3, 0.5, 0.77, -0.4, 0.999, 1.0, 1.5, -1.3, 2.7):
            err = float((frft(vk, a) - cmath.exp(-0.5j * math.pi * a * kk) * vk).norm())
            assert err <= 2 * (kk + 1) / n, (kk, a, err)


def test_complex64_matches_float64_at_4096() -> None:
    """Chirp phases are built in float64 and reduced mod 2π before the cast (measured ~2e-7)."""
    n = 4096
    x = torch.randn(4, n, dtype=torch.float64)
    for a in (0.37, 0.5, -0.81, 1.0, 1.63):
        assert rel(frft(x.float(), a), frft(x, a)) < 1e-5
        assert rel(frft_adjoint(x.float(), a), frft_adjoint(x, a)) < 1e-5


def test_float32_phases_would_fail_the_precision_test(monkeypatch) -> None:
    """The precision test above can fail: with phases cast to float32 before exp(i·), the complex64
    result misses float64 by more than 1e-5 at n = 4096."""
    n = 4096
    x = torch.randn(4, n, dtype=torch.float64)
    ref = frft(x, 0.37)

    def float32_phasor(phase: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
        phase = phase.to(torch.float32)
        return torch.polar(torch.ones_like(phase), phase).to(cdtype)

    monkeypatch.setattr(chirp_mod, "unit_phasor", float32_phasor)
    assert rel(frft(x.float(), 0.37), ref) > 1e-5
