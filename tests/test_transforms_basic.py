"""Both transforms: integer orders, dtypes, batching, ``dim``, real input, 1-d orders, bad input.

Conventions (docs/methods.md §1): index i stands for the coordinate c = i - n//2; the centered
unitary DFT is C[j, k] = exp(-2πi·(j-h)(k-h)/n)/√n with h = n//2. References here are built from
these definitions, not from the package.
"""

from __future__ import annotations

import math

import pytest
import torch

from frame_peft.transforms import (
    CHIRP,
    EXACT,
    check_transform_name,
    coherence_matrix,
    dfrft,
    dfrft_adjoint,
    dft,
    frft,
    frft_adjoint,
    frft_right,
    get_transform,
    idft,
)
from frame_peft.transforms import TRANSFORMS as TRANSFORMS_BY_NAME


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic inputs (and gradcheck's random projections) for every test here."""
    torch.manual_seed(0)


TRANSFORMS = {"chirp": frft, "exact": dfrft}


def tol(dtype: torch.dtype, n: int) -> float:
    """Relative tolerance: float64 about 1e-12·log2(n); complex64 about 1e-5."""
    if dtype in (torch.float64, torch.complex128):
        return 1e-12 * max(1.0, math.log2(n))
    return 1e-5


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.to(y.dtype)
    y, ref = y.detach(), ref.detach()
    return float((y - ref).abs().norm() / ref.abs().norm())


def dft_matrix(n: int) -> torch.Tensor:
    c = torch.arange(n, dtype=torch.float64) - n // 2
    return torch.exp(-2j * math.pi * torch.outer(c, c).to(torch.complex128) / n) / math.sqrt(n)


def reverse_ref(x: torch.Tensor) -> torch.Tensor:
    """x[c] -> x[-c] on the centered grid, by index arithmetic: i -> (2h - i) mod n."""
    n = x.shape[-1]
    idx = [(2 * (n // 2) - i) % n for i in range(n)]
    return x[..., idx]


SIZES = [2, 3, 4, 5, 16, 17, 64, 65, 256, 257]


def test_dft_matches_definition() -> None:
    for n in [2, 3, 8, 9, 64, 65]:
        x = torch.randn(3, n, dtype=torch.complex128)
        c = dft_matrix(n)
        assert rel(dft(x), x @ c.T) < tol(torch.float64, n)
        assert rel(idft(x), x @ c.conj().T) < tol(torch.float64, n)


@pytest.mark.parametrize("name", ["chirp", "exact"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
def test_integer_orders(name: str, n: int, dtype: torch.dtype) -> None:
    """F^0 = I, F^1 = C, F^2 = R, F^-1 = C^H, F^4 = I (surrogate's ±1 only for even n)."""
    f = TRANSFORMS[name]
    x = torch.randn(4, n, dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        x = x + 1j * torch.randn(4, n, dtype=torch.float64).to(dtype)
    t = tol(dtype, n)
    c = dft_matrix(n)
    x128 = x.to(torch.complex128)
    checks = {
        0: x128,
        2: reverse_ref(x128),
        4: x128,
        -2: reverse_ref(x128),
        -4: x128,
        6: reverse_ref(x128),
    }
    if name == "exact" or n % 2 == 0:
        checks |= {1: x128 @ c.T, -1: x128 @ c.conj().T, 3: x128 @ c.conj().T, 5: x128 @ c.T}
    for a, ref in checks.items():
        for order in (a, float(a), torch.tensor(float(a))):
            y = f(x, order)
            assert y.is_complex(), "output is always complex"
            assert y.shape == x.shape
            assert rel(y, ref) < t, (a, type(order))


@pytest.mark.parametrize("name", ["chirp", "exact"])
def test_output_dtypes(name: str) -> None:
    f = TRANSFORMS[name]
    n = 32
    x = torch.randn(2, n)
    assert f(x, 0.3).dtype == torch.complex64
    assert f(x.double(), 0.3).dtype == torch.complex128
    assert f(x.to(torch.complex64), 0.3).dtype == torch.complex64
    assert f(x.to(torch.complex128), 0.3).dtype == torch.complex128
    for half in (torch.bfloat16, torch.float16):
        xh = x.to(half)
        y = f(xh, 0.37)
        assert y.dtype == torch.complex64
        # upcast: identical to calling with the float32 copy (the order is not rounded to bf16)
        torch.testing.assert_close(y, f(xh.float(), 0.37), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["chirp", "exact"])
@pytest.mark.parametrize("n", [16, 17])
def test_batching_and_dim(name: str, n: int) -> None:
    f = TRANSFORMS[name]
    x = torch.randn(3, n, 5, dtype=torch.complex128)
    a = 0.43
    y = f(x, a, dim=1)
    loop = torch.stack([torch.stack([f(x[i, :, j], a) for j in range(5)], -1) for i in range(3)])
    assert rel(y, loop) < tol(torch.float64, n)
    assert rel(f(x, a, dim=-2), y) == 0.0
    assert rel(f(x.movedim(1, 0), a, dim=0).movedim(0, 1), y) < 1e-14
    # a single vector and a deep batch
    assert rel(f(x[0, :, 0], a), y[0, :, 0]) < tol(torch.float64, n)
    deep = x.reshape(3, 1, n, 5).expand(3, 2, n, 5)
    assert rel(f(deep, a, dim=2)[:, 1], y) < tol(torch.float64, n)


@pytest.mark.parametrize("name", ["chirp", "exact"])
@pytest.mark.parametrize("n", [16, 17, 256])
@pytest.mark.parametrize("a", [0.3, -0.8, 1.37, -2.6])
def test_real_input_equals_complex_and_conjugate_symmetry(name: str, n: int, a: float) -> None:
    f = TRANSFORMS[name]
    x = torch.randn(3, n, dtype=torch.float64)
    y = f(x, a)
    assert rel(y, f(torch.complex(x, torch.zeros_like(x)), a)) < 1e-14
    # real x: F^{-a} x = conj(F^a x)
    assert rel(f(x, -a), y.conj()) < tol(torch.float64, n)
    x32 = x.float()
    assert rel(f(x32, a), f(torch.complex(x32, torch.zeros_like(x32)), a)) < 1e-6
    assert rel(f(x32, -a), f(x32, a).conj()) < tol(torch.float32, n)


@pytest.mark.parametrize("name", ["chirp", "exact"])
@pytest.mark.parametrize("n", [16, 17])
def test_one_d_order_equals_loop(name: str, n: int) -> None:
    f = TRANSFORMS[name]
    orders = torch.tensor([0.0, 0.3, -0.7, 1.0, 1.6, -2.3, 3.1, 0.999], dtype=torch.float64)
    e = len(orders)
    for shape, dim in [((e, n), -1), ((e, 4, n), -1), ((e, n, 3), 1), ((e, 2, 3, n), 3)]:
        x = torch.randn(*shape, dtype=torch.complex128)
        o = orders.clone().requires_grad_(True)
        y = f(x, o, dim=dim)
        o_loop = orders.clone().requires_grad_(True)
        loop = torch.stack([f(x[i], o_loop[i], dim=dim - 1 if dim > 0 else dim) for i in range(e)])
        assert rel(y, loop) < tol(torch.float64, n), shape
        w = torch.randn_like(y)
        (y * w).real.sum().backward()
        (loop * w).real.sum().backward()
        torch.testing.assert_close(o.grad, o_loop.grad, rtol=1e-10, atol=1e-10)
    # float32 inputs and a float32 order vector
    x = torch.randn(e, 2, n)
    o32 = orders.float()
    loop = torch.stack([f(x[i], o32[i]) for i in range(e)])
    assert rel(f(x, o32), loop) < 1e-6


def test_adjoints_and_get_transform() -> None:
    x = torch.randn(2, 16, dtype=torch.complex128)
    assert get_transform("chirp") == (frft, frft_adjoint)
    assert get_transform("exact") == (dfrft, dfrft_adjoint)
    with pytest.raises(ValueError, match="unknown transform"):
        get_transform("ozaktas")
    for fwd, adj in (get_transform("chirp"), get_transform("exact")):
        assert rel(adj(fwd(x, 0.41), 0.41), x) < 1e-13
    # frft_right on rows equals frft on the last axis (U_a is complex symmetric)
    assert rel(frft_right(x, 0.41), frft(x, 0.41)) == 0.0


def test_one_name_check_for_every_transform_dispatch() -> None:
    """get_transform, coherence and FRAME's grouped factors all refuse an unknown name the same
    way, naming the allowed ones."""
    from frame_peft.methods.frame.factors import _transform_rows

    assert TRANSFORMS_BY_NAME == (CHIRP, EXACT) == ("chirp", "exact")
    assert check_transform_name("exact") == "exact"
    z = torch.randn(1, 2, 8)
    calls = (
        lambda name: check_transform_name(name),
        lambda name: get_transform(name),
        lambda name: coherence_matrix([0.0, 0.5], 8, name),
        lambda name: _transform_rows(name, z, torch.tensor([0.3]), True),
    )
    for call in calls:
        for bad in ("ozaktas", None):
            with pytest.raises(ValueError, match=r"unknown transform .*'chirp', 'exact'"):
                call(bad)


@pytest.mark.parametrize(
    "fn", [frft, frft_adjoint, dfrft, dfrft_adjoint, lambda x, a, dim=-1: frft_right(x, a)]
)
def test_bad_input_errors(fn) -> None:
    x = torch.randn(4, 8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            fn(x, bad)
        with pytest.raises(ValueError, match="finite"):
            fn(x, torch.tensor(bad))
    with pytest.raises(ValueError, match="finite"):
        fn(x, torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with pytest.raises(ValueError, match="at least 2"):
        fn(torch.randn(4, 1), 0.3)
    for dtype in (torch.int64, torch.int32, torch.bool):
        with pytest.raises(TypeError, match="floating-point or complex"):
            fn(torch.ones(4, 8, dtype=dtype), 0.3)
    with pytest.raises(ValueError, match="leading"):
        fn(x, torch.tensor([0.1, 0.2, 0.3]))  # 3 orders, 4 experts
    with pytest.raises(ValueError, match="leading"):
        fn(torch.randn(8), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="1-d"):
        fn(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="float32 or float64"):
        fn(x, torch.tensor(0.37, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="real"):
        fn(x, torch.tensor(0.3 + 0.1j))


def test_one_d_order_refuses_dim0() -> None:
    with pytest.raises(ValueError, match="cannot"):
        frft(torch.randn(4, 8), torch.zeros(4), dim=0)
    with pytest.raises(ValueError, match="cannot"):
        dfrft(torch.randn(4, 8), torch.zeros(4), dim=0)


@pytest.mark.parametrize("name", ["chirp", "exact"])
def test_order_is_never_rounded_to_low_precision(name: str) -> None:
    """A float32 order stays float32 (not bf16 of the model); bf16 orders are refused."""
    f = TRANSFORMS[name]
    n = 1024
    x = torch.randn(2, n, dtype=torch.float64)
    o32 = torch.tensor(0.37, dtype=torch.float32)
    ref = f(x, float(o32))  # the float32 value, exactly, as a Python float
    assert rel(f(x, o32), ref) < 1e-13
    # a bf16-rounded order moves the output by O(1) at this n: the refusal matters
    assert rel(f(x, float(o32.bfloat16())), ref) > 0.1
    o = o32.clone().requires_grad_(True)
    f(x.bfloat16(), o).real.sum().backward()
    assert o.grad is not None and o.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["chirp", "exact"])
def test_no_data_dependent_python_branching(name: str) -> None:
    """Meta tensors carry no values, so any Python branch on the order's value would raise."""
    f = TRANSFORMS[name]
    x = torch.randn(4, 3, 16, device="meta")
    for order in (
        torch.empty((), device="meta"),
        torch.empty(4, device="meta", dtype=torch.float64),
    ):
        y = f(x, order)
        assert y.shape == x.shape and y.dtype == torch.complex64 and y.device.type == "meta"
    if name == "chirp":  # the custom backward is branch-free too
        xr = torch.empty(4, 3, 16, device="meta", requires_grad=True)
        o = torch.empty(4, device="meta", requires_grad=True)
        frft(xr, o).real.sum().backward()
        assert xr.grad.shape == xr.shape and o.grad.shape == o.shape
    # and tensor orders on both sides of the reversal boundaries agree with Python orders
    xc = torch.randn(2, 16, dtype=torch.complex128)
    for a in (0.999, 1.001, -1.001, 2.9, 3.01, -3.2, 5.5):
        assert rel(f(xc, torch.tensor(a, dtype=torch.float64)), f(xc, a)) < 1e-14
