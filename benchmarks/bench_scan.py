"""What FRAME's order scan costs: the search per module against its width d and sketch rank q.

One FRAME module d × d (E = 8 experts, k = 2, r = 4, the chirp transform) and synthetic
statistics of N = 1024 tokens (random inputs and output gradients, top-2 gates from random
logits): the wall time of ``frame_peft.methods.frame.scan.scan_module`` (whitened targets,
sketch, the screen over the d + 1 grid orders, the full fits at the peaks and the refinement),
median of ``--repeats`` runs, for every d in ``--dims``, q in ``--ranks`` and both sketch bases
(``shared``: one per module, ``expert``: one per expert). The statistics pass (forwards and
backwards of the model) is not included: it costs ``scan_batches`` training steps of the model
without the optimizer (measured on SmolLM2 in ``benchmarks/results/scan_lm.md``).

Fits ``log t = c + p·log d`` per (basis, q). The screen transforms 2·q' rows (q' = 8 leading
directions; E·8 for the per-expert basis) of length d at d + 1 orders: O(q'·d² log d) per side,
so p ≈ 2 (a little above for the log factor; below at small d where fixed costs dominate). The
dense scan the issue started from was O(d³ log d) per expert.

Projection to LLaMA-3.1-8B widths (d = 4096 for q/k/v/o, 14336 for gate/up/down; 32 layers x 7
modules) extrapolates the fitted CPU curves: it is a projection, not a measurement, and says so.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_scan.py           # d up to 2048, ~10 min
    OMP_NUM_THREADS=1 python benchmarks/bench_scan.py --quick   # d up to 64, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import frame_peft as fp
from _common import command_line, int_list, machine_info, wants_quick, write_results
from _layer_report import git_state
from bench_scaling import fit_exponent
from frame_peft._tables import markdown_table
from frame_peft.methods.frame.scan import ScanSettings, scan_module
from frame_peft.methods.frame.scan_stats import TokenStats

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scan_cost.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "frame-peft-bench" / "scan_cost.md"
EXPERTS, TOP_K, RANK, TOKENS = 8, 2, 4, 1024
LLAMA = {"q/k/v/o (d = 4096)": (4096, 4 * 32), "gate/up/down (d = 14336)": (14336, 3 * 32)}


def module_and_stats(d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(TOKENS, d, generator=g)
    delta = torch.randn(TOKENS, d, generator=g) * 1e-3
    logits = torch.randn(TOKENS, EXPERTS, generator=g)
    top = logits.topk(TOP_K, dim=1)
    gates = torch.zeros(TOKENS, EXPERTS).scatter(1, top.indices, torch.softmax(top.values, 1))
    cfg = fp.FrameConfig(target_modules=["0"], num_experts=EXPERTS, top_k=TOP_K, rank=RANK)
    torch.manual_seed(seed)
    model = fp.inject(nn.Sequential(nn.Linear(d, d)), cfg)
    return fp.adapted_layers(model)["0"].adapter, TokenStats(x, delta, gates)


def time_scan(d: int, q: int, basis: str, repeats: int) -> float:
    adapter, stats = module_and_stats(d)
    settings = ScanSettings(sketch_rank=q, basis=basis)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scan_module(adapter, stats, settings, first=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def planted_stats(d: int, orders: list[float], seed: int) -> TokenStats:
    """Tokens whose whitened targets are rank-2 updates planted at ``orders`` (one per expert):
    isotropic inputs, δ = W_e x, each token routed to one expert with gate 1."""
    from frame_peft.methods.frame.order_fit import order_map

    g = torch.Generator().manual_seed(seed)
    targets = []
    for a in orders:
        b = torch.randn(d, 2, generator=g, dtype=torch.float64)
        m = torch.randn(2, d, generator=g, dtype=torch.float64)
        targets.append(order_map(b @ m, a).float())
    n = 200 * len(orders)
    x = torch.randn(n, d, generator=g)
    owner = torch.arange(n) % len(orders)
    delta = torch.einsum("nij,nj->ni", torch.stack(targets)[owner], x)
    gates = torch.nn.functional.one_hot(owner, len(orders)).float()
    return TokenStats(x, delta, gates)


def grid_check(d: int, trials: int, grids: list[float]) -> dict[str, dict[str, float]]:
    """Planted orders (4 experts, uniform random orders) found within 1/(8d) + rounding, per
    screen density: the share of experts found and the worst error (units of 1/d)."""
    import random

    cfg = fp.FrameConfig(target_modules=["0"], num_experts=4, top_k=1, rank=2)
    adapter = fp.adapted_layers(fp.inject(nn.Sequential(nn.Linear(d, d)), cfg))["0"].adapter
    out = {}
    for grid in grids:
        errs = []
        for t in range(trials):
            rng = random.Random(t)
            orders = [round(rng.random(), 4) for _ in range(4)]
            report, _ = scan_module(adapter, planted_stats(d, orders, t), ScanSettings(grid=grid),
                                    first=True)  # fmt: skip
            errs += [abs(e.best_order - a) * d for e, a in zip(report.experts, orders, strict=True)]
        out[str(grid)] = {"found": sum(e <= 0.26 for e in errs) / len(errs), "worst": max(errs)}
    return out


def main(argv: list[str] | None = None) -> int:
    quick = wants_quick(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dims", type=int_list, default="32,64" if quick else "128,256,512,1024,2048"
    )
    parser.add_argument("--ranks", type=int_list, default="8" if quick else "8,16,32")
    parser.add_argument("--repeats", type=int, default=1 if quick else 3)
    parser.add_argument("--grid-trials", type=int, default=2 if quick else 20)
    parser.add_argument("--out", type=Path, default=QUICK_OUT if quick else DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, results = [], {}
    for basis in ("shared", "expert"):
        for q in args.ranks:
            series = []
            for d in args.dims:
                t = time_scan(d, q, basis, args.repeats)
                series.append(t)
                print(f"[bench_scan] basis={basis} q={q} d={d}: {t:.3f} s", flush=True)
            fit = fit_exponent(args.dims, series)
            top = fit_exponent(args.dims[-3:], series[-3:])
            results[f"{basis}/q{q}"] = {"dims": args.dims, "seconds": series, "fit": fit,
                                       "fit_widest3": top}  # fmt: skip
            rows.append((basis, q, series, fit, top))
    grid_dim = 32 if quick else 64
    grids = grid_check(grid_dim, args.grid_trials, [0.5, 1.0, 2.0])
    results["grid_check"] = {"dim": grid_dim, "trials": args.grid_trials, "grids": grids}
    cmd = command_line("bench_scan.py", argv)
    lines = [
        "# Order scan: search cost per module vs width d and sketch rank q",
        "",
        f"Command: `{cmd}`  ",
        f"git {git_state(HERE.parent)}; one thread.  ",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine_info().items()),
        "",
        f"One d × d FRAME module, E = {EXPERTS}, k = {TOP_K}, r = {RANK}, chirp; {TOKENS} recorded "
        f"tokens; median of {args.repeats} run(s) of `scan_module` (targets, sketch, screen at "
        "d + 1 orders, full fits, refinement). Seconds:",
        "",
        markdown_table(
            ["basis", "q", *(f"d = {d}" for d in args.dims), "fitted p (all)", "p (3 widest)"],
            [
                [basis, q, *(f"{t:.3f}" for t in series),
                 "–" if fit is None else f"{fit[0]:.2f}", "–" if top is None else f"{top[0]:.2f}"]
                for basis, q, series, fit, top in rows
            ],
            align="ll" + "r" * (len(args.dims) + 2),
        ),
    ]  # fmt: skip
    lines += [
        "", "## Screen density: planted orders found", "",
        f"d = {grid_dim}, {args.grid_trials} trials of 4 experts with rank-2 targets planted at "
        "uniform random orders (isotropic inputs, one expert per token): share of experts whose "
        "best order lies within 0.26/d of the planted one (the 1/(8d) refinement grid plus "
        "rounding), and the worst error in units of 1/d.", "",
        markdown_table(
            ["screen candidates per 1/d", "found", "worst error (1/d)"],
            [[g, f"{v['found']:.3f}", f"{v['worst']:.2f}"] for g, v in grids.items()],
            align="rrr",
        ),
    ]  # fmt: skip
    lines += ["", "## Projection to LLaMA-3.1-8B widths (extrapolated, not measured)", "",
              "The curve `t = exp(c)·d^p` fitted to the three widest measured widths of each "
              "(basis, q), evaluated at the LLaMA widths (one thread of this CPU) and multiplied "
              "by the number of such modules. No GPU was measured: the scan runs the same batched "
              "FFTs and small matrix products on one, at an unmeasured speed.", ""]  # fmt: skip
    import math

    projected = []
    for basis, q, _, _, top in rows:
        if top is None:
            continue
        p, c, _ = top
        per = {k: math.exp(c) * d**p for k, (d, _) in LLAMA.items()}
        total = sum(per[k] * n for k, (_, n) in LLAMA.items())
        projected.append(
            [basis, q, *(f"{v:.0f} s per module" for v in per.values()), f"{total / 3600:.1f} h"]
        )
    lines.append(
        markdown_table(
            ["basis", "q", *LLAMA, "all 224 modules, one scan"],
            projected,
            align="ll" + "r" * (len(LLAMA) + 1),
        )
    )
    page = "\n".join(lines) + "\n"
    write_results(args.out, page, {"command": cmd, "results": results})
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
