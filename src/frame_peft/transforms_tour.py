"""``frame-peft transforms-tour``: a short, honest tour of the transforms (numbers computed live).

What the order does, where the chirp surrogate agrees with the exact FrFT and where it does not,
the coherence between experts' bases, and the cost of each transform.
"""

from __future__ import annotations

import math
import time

import torch

from .transforms import coherence, dfrft, dfrft_basis, dft, frft, frft_adjoint


def _hermite_gaussian(n: int, k: int) -> torch.Tensor:
    v, idx = dfrft_basis(n)
    return v[:, int((idx == k).nonzero()[0])].to(torch.complex128)


def run_transforms_tour(n: int = 256) -> None:
    """Print the tour for signal length ``n`` (even, >= 8)."""
    if n < 8 or n % 2:
        raise ValueError(
            f"--n must be an even number >= 8 (the chirp surrogate needs even n), got {n}"
        )
    torch.manual_seed(0)
    print(f"frame-peft transforms, n = {n} (float64 unless stated)\n")

    x = torch.randn(n, dtype=torch.float64)
    print("1. The order moves a vector from the spatial domain (a=0) to the Fourier domain (a=1).")
    print("   a      ‖U_a x − x‖/‖x‖   ‖U_a x − Cx‖/‖x‖   ‖U_a^H U_a x − x‖/‖x‖")
    nx = x.norm()
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = frft(x, a)
        back = frft_adjoint(y, a)
        print(
            f"   {a:4.2f}   {float((y - x).norm() / nx):14.3e}   "
            f"{float((y - dft(x)).norm() / nx):16.3e}   {float((back - x).norm() / nx):19.3e}"
        )

    print(
        "\n2. The surrogate U_a agrees with the exact FrFT F^a on smooth (Hermite–Gaussian) modes,"
    )
    print(
        "   U_a v_k ≈ e^{−iπak/2} v_k, but not on full-band vectors (it is not the same operator)."
    )
    a = 0.5
    for k in (0, 1, 2, 3):
        vk = _hermite_gaussian(n, k)
        err = (frft(vk, a) - math.e ** (-1j * math.pi * a * k / 2) * vk).norm()
        print(f"   k={k}: ‖U_0.5 v_k − e^(−iπ·0.5·k/2) v_k‖ = {float(err):.2e}")
    full = float((frft(x, a) - dfrft(x, a)).norm() / nx)
    print(f"   random full-band x: ‖U_0.5 x − F^0.5 x‖/‖x‖ = {full:.2f}")

    print("\n3. Experts at different orders see the input in incoherent bases.")
    print(f"   floor 1/√n = {1 / math.sqrt(n):.4f}")
    for b in (0.0, 0.05, 0.2, 0.5, 1.0):
        print(f"   coherence(0, {b:4.2f}) = {coherence(0.0, b, n):.4f}")

    print("\n4. Cost: surrogate O(n log n) vs exact O(n²), forward on 2048 float32 vectors.")
    xb = torch.randn(2048, n)
    dfrft(xb[:2], 0.3)  # build the eigenbasis outside the timing
    for name, fn in (("chirp surrogate frft", frft), ("exact dense dfrft", dfrft)):
        t0 = time.perf_counter()
        for _ in range(3):
            fn(xb, 0.3)
        print(f"   {name:22s} {1e3 * (time.perf_counter() - t0) / 3:8.2f} ms")
    print(
        "\nSee docs/transforms.md for conventions and benchmarks/results/transforms.md for timings."
    )
