"""Time the fractional Fourier transforms and write benchmarks/results/transforms.md.

Forward+backward (gradients to the input and, where the method has one, to the order) of

- ``frft``: FRAME's chirp–FFT surrogate (O(N log N));
- ``dfrft``: the exact Candan transform, applied densely through its cached eigenbasis (O(N²));
- a dense product with a precomputed complex N×N matrix (gradient to the input only);
- ``torch_frft.frft`` (PyPI ``torch-frft``, benchmark-only dependency) as the public anchor,

for N in {256, 1024, 4096} on a batch of 2048 vectors, plus the factor-path shape (8 experts ×
rank 4 rows, one order per expert) against one 4096×4096 linear layer's forward on 2048 tokens,
and the time to build the exact eigenbasis for N = 4096.

Run (single thread, as reported)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_transforms.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from frame_peft._files import write_text
from frame_peft._tables import markdown_table
from frame_peft.transforms import dfrft, dfrft_basis, dfrft_matrix, frft
from frame_peft.transforms import exact as exact_mod

RESULTS = Path(__file__).resolve().parent / "results" / "transforms.md"
HEADERS = ["N", "batch", "method", "fwd+bwd (ms)", "ratio to frft"]  # the results table
ORDER = 0.7  # in (0.5, 1.5): torch-frft takes its single-pass branch there (fair to it)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_samples(fn: Callable[[], None], repeats: int, slow_s: float = 2.0) -> list[float]:
    """Seconds of ``repeats`` runs after one warm-up (two runs when a call exceeds ``slow_s``)."""
    t0 = time.perf_counter()
    fn()  # warm-up: plans, caches, allocator
    if time.perf_counter() - t0 > slow_s:
        repeats = min(repeats, 2)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timeit(fn: Callable[[], None], repeats: int, slow_s: float = 2.0) -> float:
    """Median seconds (see :func:`time_samples`)."""
    return statistics.median(time_samples(fn, repeats, slow_s))


def fwd_bwd(apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x, order, grad):
    """One forward+backward: the closure re-creates leaves so gradients never accumulate."""

    def run() -> None:
        xl = x.detach().requires_grad_(True)
        ol = order.detach().requires_grad_(True) if order is not None else None
        y = apply(xl, ol)
        y.backward(grad.to(y.dtype) if y.is_complex() else grad.real)

    return run


def bench_batch(n: int, batch: int, repeats: int, with_anchor: bool) -> dict[str, float]:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(batch, n, generator=gen)
    a = torch.tensor(ORDER, dtype=torch.float32)
    g = torch.randn(batch, n, dtype=torch.complex64, generator=gen)
    out: dict[str, float] = {}
    # frft is timed before and after the slow methods and the samples pooled, so a change in
    # machine load during the run biases the ratios less (the box may be shared).
    run_frft = fwd_bwd(lambda xl, ol: frft(xl, ol), x, a, g)
    frft_samples = time_samples(run_frft, repeats)
    dfrft_basis(n, torch.float32)  # the basis is cached; its build is timed separately
    out["dfrft (dense exact)"] = timeit(fwd_bwd(lambda xl, ol: dfrft(xl, ol), x, a, g), repeats)
    m_t = dfrft_matrix(n, ORDER, dtype=torch.complex64).T.contiguous()
    out["precomputed matrix"] = timeit(
        fwd_bwd(lambda xl, _: xl.to(torch.complex64) @ m_t, x, None, g), repeats
    )
    if with_anchor:
        from torch_frft.frft_module import frft as tf_frft

        out["torch-frft frft"] = timeit(fwd_bwd(lambda xl, ol: tf_frft(xl, ol), x, a, g), repeats)
    frft_samples += time_samples(run_frft, repeats)
    return {"frft": statistics.median(frft_samples), **out}


def bench_factor_path(n: int, experts: int, rank: int, tokens: int, repeats: int):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(experts, rank, n, generator=gen)
    orders = (torch.arange(experts, dtype=torch.float32) + 0.5) / experts
    g = torch.randn(experts, rank, n, dtype=torch.complex64, generator=gen)
    fwd = timeit(lambda: frft(rows, orders), repeats)
    fb = timeit(fwd_bwd(lambda xl, ol: frft(xl, ol), rows, orders, g), repeats)
    xt = torch.randn(tokens, n, generator=gen)
    w = torch.randn(n, n, generator=gen) / n**0.5
    with torch.no_grad():
        lin = timeit(lambda: torch.nn.functional.linear(xt, w), max(3, repeats // 2))
    return fwd, fb, lin


def bench_basis(n: int, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        with exact_mod._lock:
            exact_mod._cache.clear()
        t0 = time.perf_counter()
        dfrft_basis(n)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-anchor", action="store_true", help="skip torch-frft")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    command = "OMP_NUM_THREADS={} {} {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"),
        ".venv/bin/python",
        " ".join(["benchmarks/bench_transforms.py", *sys.argv[1:]]),
    )

    rows = []
    results = {}
    for n in args.sizes:
        r = bench_batch(n, args.batch, args.repeats, not args.no_anchor)
        results[n] = r
        base = r["frft"]
        for name, t in r.items():
            rows.append([n, args.batch, name, f"{t * 1e3:.1f}", f"{t / base:.1f}×"])
        print(markdown_table(HEADERS, rows[-len(r) :]), flush=True)
    nf = max(args.sizes)
    basis_s = bench_basis(nf)
    fwd, fb, lin = bench_factor_path(nf, 8, 4, args.batch, max(args.repeats, 20))

    targets = []
    if nf in results:
        r = results[nf]
        dense_ratio = r["dfrft (dense exact)"] / r["frft"]
        targets.append(
            (
                f"frft fwd+bwd ≥ 10× faster than dense exact apply (N={nf}, batch {args.batch})",
                dense_ratio >= 10,
                f"{dense_ratio:.1f}×",
            )
        )
        if "torch-frft frft" in r:
            anchor = r["torch-frft frft"] / r["frft"]
            targets.append(
                (
                    f"frft fwd+bwd ≥ 30× faster than torch-frft's frft "
                    f"(N={nf}, batch {args.batch})",
                    anchor >= 30,
                    f"{anchor:.1f}×",
                )
            )
    targets.append(
        (f"exact eigenbasis for N={nf} built in < 5 s", basis_s < 5.0, f"{basis_s:.2f} s")
    )
    targets.append(
        (
            f"factor path (8×4 rows, N={nf}) forward < 5 % of a {nf}×{nf} linear forward on "
            f"{args.batch} tokens",
            fwd / lin < 0.05,
            f"{100 * fwd / lin:.3f} %",
        )
    )
    targets.append(
        (
            "factor path forward+backward < 5 % of the same linear forward (stricter, extra)",
            fb / lin < 0.05,
            f"{100 * fb / lin:.3f} %",
        )
    )

    lines = [
        "# Fractional Fourier transform benchmark",
        "",
        "Produced by `benchmarks/bench_transforms.py` (do not edit by hand).",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS', '<unset>')}",
        f"- Python {platform.python_version()}, {platform.platform()}",
        f"- Command: `{command}`",
        f"- Forward+backward, float32 input (complex64 compute), order {ORDER} as a float32 tensor "
        "that requires grad (the precomputed matrix has no order); median of "
        f"{args.repeats} runs after a warm-up (2 runs when one call exceeds 2 s); frft's "
        f"{2 * args.repeats} runs are split before and after the other methods. Times in ms; "
        "ratio = time / frft's time.",
        f"- Load average when the run ended: {os.getloadavg()[0]:.2f} (1 min), "
        f"{os.getloadavg()[1]:.2f} (5 min) on {os.cpu_count()} cores: the box is shared, so "
        "absolute times are noisy; ratios are more stable.",
        "",
        markdown_table(HEADERS, rows),
        "",
        f"Factor path, 8 experts × rank 4 rows, N = {nf}, one order per expert: forward "
        f"{fwd * 1e3:.3f} ms, forward+backward {fb * 1e3:.3f} ms; one {nf}×{nf} linear forward on "
        f"{args.batch} tokens: {lin * 1e3:.1f} ms.",
        "",
        f"Exact eigenbasis build for N = {nf} (two tridiagonal eigensolves, float64): "
        f"{basis_s:.2f} s.",
        "",
        "## Targets",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {what} — measured {val}" for what, ok, val in targets],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text)
    return 0 if all(ok for _, ok, _ in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
