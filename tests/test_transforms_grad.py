"""Gradients (to the input and to the order) and continuity in the order.

Finding (documented in docs/transforms.md): every gradcheck passes for both transforms, except the
surrogate at odd n and a = ±1 (odd integer orders). That failure is not a finite-difference
artefact: for odd n the surrogate is discontinuous there (U_1 != R·U_{-1}; the jump does not shrink
with the step), so no derivative exists and the central difference straddles a jump.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from frame_peft.transforms import dfrft, frft, frft_adjoint


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Deterministic inputs (and gradcheck's random projections) for every test here."""
    torch.manual_seed(0)


TRANSFORMS = {"chirp": frft, "exact": dfrft, "chirp_adjoint": frft_adjoint}
GRAD_ORDERS = [0.0, 0.3, 0.5, 0.999, 1.0, 1.5, -0.4, 2.2]


def _skip_odd_jump(name: str, n: int, a: float) -> bool:
    return name.startswith("chirp") and n % 2 == 1 and abs(a) % 2 == 1.0


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("n", [8, 9, 64, 65])
def test_gradcheck_input_and_order(name: str, n: int) -> None:
    """Exhaustive gradcheck for n <= 9; for n = 64, 65 exhaustive in the order and by random
    projections (fast mode) in the input, to keep the suite fast."""
    f = TRANSFORMS[name]
    gen = torch.Generator().manual_seed(n)
    fast = n > 9
    for a0 in GRAD_ORDERS:
        if _skip_odd_jump(name, n, a0):
            continue  # see test_odd_n_gradcheck_failure_is_a_real_jump
        a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        xc = torch.randn(2, n, dtype=torch.complex128, generator=gen, requires_grad=True)
        xr = torch.randn(n, 2, dtype=torch.float64, generator=gen, requires_grad=True)
        assert gradcheck(lambda x, o: f(x, o), (xc, a), fast_mode=fast), (name, n, a0)
        assert gradcheck(lambda x, o: f(x, o, dim=0), (xr, a), fast_mode=fast), (name, n, a0)
        if fast:
            xd = xc.detach()
            assert gradcheck(lambda o, xd=xd: f(xd, o), (a,)), (name, n, a0)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_gradcheck_n256(name: str) -> None:
    f = TRANSFORMS[name]
    n = 256
    x = torch.randn(1, n, dtype=torch.complex128, requires_grad=True)
    for a0 in (0.3, 0.5, 0.999, 1.0, 1.5, -0.4):  # 0 and 2.2 are covered at smaller n
        a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        # the order exhaustively (one input), the input by random projections
        assert gradcheck(lambda o: f(x.detach(), o), (a,)), a0
        assert gradcheck(lambda x, o: f(x, o), (x, a), fast_mode=True), a0


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("n", [8, 16])
def test_gradcheck_one_d_orders(name: str, n: int) -> None:
    f = TRANSFORMS[name]
    orders = torch.tensor([0.3, -1.4, 2.7], dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 2, n, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(lambda x, o: f(x, o), (x, orders))
    assert gradcheck(
        lambda x, o: f(x, o, dim=1), (x.transpose(1, 2).detach().requires_grad_(), orders)
    )


@pytest.mark.parametrize("n", [9, 65])
def test_odd_n_gradcheck_failure_is_a_real_jump(n: int) -> None:
    """At odd n and a = 1 the surrogate's gradcheck fails because the function jumps there."""
    x = torch.randn(2, n, dtype=torch.complex128)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert not gradcheck(lambda o: frft(x, o), (a,), raise_exception=False)
    jumps = [float((frft(x, 1.0 + d) - frft(x, 1.0 - d)).norm() / x.norm()) for d in (1e-5, 1e-9)]
    assert min(jumps) > 0.1 and abs(jumps[0] - jumps[1]) < 1e-3  # O(1), independent of the step
    # the analytic gradient at a = 1 is the one-sided (left, a' = 1) derivative
    w = torch.randn(2, n, dtype=torch.complex128)
    frft(x, a).mul(w).real.sum().backward()
    h = 1e-6
    left = ((frft(x, 1.0) - frft(x, 1.0 - h)) * w).real.sum() / h
    assert abs(float(a.grad) - float(left)) < 1e-3 * (1 + abs(float(left)))


@pytest.mark.parametrize("name", ["chirp", "exact"])
def test_order_gradient_nonzero_near_zero(name: str) -> None:
    f = TRANSFORMS[name]
    n = 64
    x = torch.randn(3, n, dtype=torch.float64)
    w = torch.randn(3, n, dtype=torch.complex128)
    a = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    (f(x, a) * w).real.sum().backward()
    h = 1e-6
    fd = float(((f(x, 0.01 + h) - f(x, 0.01 - h)) * w).real.sum() / (2 * h))
    assert abs(float(a.grad)) > 1e-2 * float(x.norm() * w.norm())
    assert abs(float(a.grad) - fd) < 1e-5 * abs(fd)


@pytest.mark.parametrize("name", ["chirp", "exact"])
def test_float32_order_gradient_matches_float64(name: str) -> None:
    f = TRANSFORMS[name]
    n = 1024
    x = torch.randn(8, n, dtype=torch.float64)
    w = torch.randn(8, n, dtype=torch.complex128)
    grads = []
    for dt in (torch.float64, torch.float32):
        a = torch.tensor(0.37, dtype=dt, requires_grad=True)
        (f(x.to(dt), a) * w.to(f(x.to(dt), 0.0).dtype)).real.sum().backward()
        grads.append(float(a.grad))
    assert abs(grads[1] - grads[0]) < 1e-4 * abs(grads[0])


CONT_ORDERS = [0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 2.0, -2.0, 3.0, -3.0]


@pytest.mark.parametrize("name", ["chirp", "exact"])
@pytest.mark.parametrize("n", [64, 65, 256, 1024])
def test_continuity_in_the_order(name: str, n: int) -> None:
    """‖F^(a+δ)x − F^(a−δ)x‖ <= 3·2δ·(π/2)·n·‖x‖: catches branch jumps, mis-selected reversal."""
    f = TRANSFORMS[name]
    delta = 1e-7
    x = torch.randn(4, n, dtype=torch.complex128)
    bound = 3 * 2 * delta * (math.pi / 2) * n * float(x.norm())
    for a in CONT_ORDERS:
        if _skip_odd_jump(name, n, a):
            continue  # pinned in test_transforms_surrogate.py::test_odd_n_u1_differs_...
        for lo, hi in ((a - delta, a + delta), (torch.tensor(a - delta), torch.tensor(a + delta))):
            if isinstance(lo, torch.Tensor):
                lo, hi = lo.double(), hi.double()
            step = float((f(x, hi) - f(x, lo)).norm())
            assert step <= bound, (a, step, bound)
