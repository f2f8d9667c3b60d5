"""How FRAME's extra cost over MoE-LoRA grows with the width d, next to the frozen base's.

One d × d Linear for d = 256, 512, …, 8192 at a fixed T (``--tokens``, default 512), three
methods: the frozen base, MoE-LoRA and FRAME (chirp), both E = 8, k = 2, r = 4 (the layer
benchmark's step: ``bench_layers.step``, fwd+bwd with ``x.requires_grad``), interleaved rounds
after warm-up (``bench_layers.time_methods``), rounds per width from a time budget.

FRAME runs MoE-LoRA's kernel on transformed factors; the transforms cost O(E·r·d log d) per step,
independent of T, while the base costs O(T·d²). Fitted by least squares on the widths where the
quantity is positive: ``log(cost) = c + p·log d`` for FRAME − MoE-LoRA (paired per round; p ≈ 1
expected, a little above for the log factor), MoE-LoRA − base (O(T·E·d + T·k·r·d): p ≈ 1) and
the base step (p ≈ 2 once the matmuls dominate). A log-log PNG shows the three with their fits.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py           # d up to 8192, ~6 min
    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --quick   # d up to 512, < 30 s
"""

from __future__ import annotations

import argparse
import gc
import math
import tempfile
import time
from pathlib import Path

import torch

from _common import command_line, int_list, machine_info, quartiles, wants_quick, write_results
from _layer_methods import match_budgets
from _layer_report import git_state
from bench_layers import build_all, inputs, time_methods
from frame_peft._tables import markdown_table

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scaling.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "frame-peft-bench" / "scaling.md"
NAMES = ["base", "moe_lora", "frame_chirp"]
SERIES = {  # name: (label, expected exponent)
    "frame_extra": ("FRAME − MoE-LoRA (transforms)", "≈ 1 (O(E·r·d log d))"),
    "moe_extra": ("MoE-LoRA − base (router + experts)", "≈ 1 (O(T·(E + k·r)·d))"),
    "base": ("base step (frozen W, fwd + grad-input)", "≈ 2 (O(T·d²))"),
}


def fit_exponent(ds: list[int], ys: list[float]) -> tuple[float, float, int] | None:
    """Least squares ``log y = c + p log d`` over the points with y > 0: ``(p, c, n)``."""
    pts = [(math.log(d), math.log(y)) for d, y in zip(ds, ys, strict=True) if y > 0]
    n = len(pts)
    if n < 2:
        return None
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    p = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return p, my - p * mx, n


def paired(times: dict, a: str, b: str) -> float:
    """Median over rounds of ``a``'s step minus ``b``'s step in the same round."""
    return quartiles([u - v for u, v in zip(times[a]["step"], times[b]["step"], strict=True)])[1]


def measure(args, log) -> list[dict]:
    rows = []
    for d in args.dims:
        models = build_all(NAMES, match_budgets(NAMES, d, d), d, d, log)
        x = inputs(d, args.tokens, args.seq_len)
        t, skipped = time_methods(
            models, x, args.repeats, 1, args.mem_cap_gb * 1024, log,
            budget_s=args.budget_s or None, max_repeats=args.max_repeats,
        )  # fmt: skip
        if skipped:
            log(f"d={d}: over the memory cap ({skipped}); stopping here")
            break
        rows.append({
            "d": d, "rounds": len(t["base"]["step"]),
            "step_ms": {m: quartiles(t[m]["step"])[1] for m in NAMES},
            "base": quartiles(t["base"]["step"])[1],
            "moe_extra": paired(t, "moe_lora", "base"),
            "frame_extra": paired(t, "frame_chirp", "moe_lora"),
        })  # fmt: skip
        log(f"d={d}: {rows[-1]}")
        models.clear()
        del x
        gc.collect()
    return rows


def plot(rows: list[dict], fits: dict, path: Path) -> Path:
    from frame_peft.analysis.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ds = [r["d"] for r in rows]
    for (key, (label, _)), marker in zip(SERIES.items(), "osD", strict=True):
        pts = [(r["d"], r[key]) for r in rows if r[key] > 0]
        if not pts:
            continue
        line = ax.plot(*zip(*pts, strict=True), marker=marker, label=label)[0]
        if fits.get(key):
            p, c, _ = fits[key]
            ax.plot(ds, [math.exp(c) * d**p for d in ds], "--", color=line.get_color(),
                    label=f"fit: d^{p:.2f}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width d (d × d layer)")
    ax.set_ylabel("ms per fwd+bwd step (medians, paired differences)")
    ax.set_title(f"Cost vs width, T = {rows[0]['tokens']} tokens" if rows else "")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def render(res: dict) -> str:
    fits = res["fits"]
    headers = [
        "d", "rounds", "base ms", "MoE-LoRA ms", "FRAME ms", "MoE-LoRA − base ms",
        "FRAME − MoE-LoRA ms", "FRAME − MoE-LoRA as % of base",
    ]  # fmt: skip
    rows = []
    for r in res["rows"]:
        s = r["step_ms"]
        rows.append([
            r["d"], r["rounds"], f"{s['base']:.3g}", f"{s['moe_lora']:.3g}",
            f"{s['frame_chirp']:.3g}", f"{r['moe_extra']:+.3g}", f"{r['frame_extra']:+.3g}",
            f"{100 * r['frame_extra'] / r['base']:+.1f} %",
        ])  # fmt: skip
    table = [markdown_table(headers, rows, align="r" * len(headers))]
    fits_cells = []
    for key, (label, expected) in SERIES.items():
        f = fits.get(key)
        cells = [f"{f[0]:.2f}", f[2]] if f else ["—", "fewer than 2 positive points"]
        fits_cells.append([label, *cells, expected])
    fit_rows = [
        markdown_table(
            ["quantity", "fitted exponent p", "points used", "expected"], fits_cells, align="lrr"
        )
    ]
    return "\n".join([
        "# Scaling: FRAME's extra cost over MoE-LoRA vs the width d",
        "", "Generated by `benchmarks/bench_scaling.py` (do not edit by hand; rerun the command).",
        "", "## Command", "", f"```\n{res['command']}\n```", "",
        f"T = {res['tokens']} tokens (x: {res['tokens'] // min(res['seq_len'], res['tokens'])} × "
        f"{min(res['seq_len'], res['tokens'])}), float32, one d × d Linear; wall time "
        f"{res['elapsed'] / 60:.1f} min; rounds per width: {res['rounds_rule']}.",
        "", "## Machine", "", *[f"- {k}: {v}" for k, v in machine_info().items()],
        f"- code: git {git_state(HERE.parent)}",
        "", "## What is measured", "", __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
        "", "## Fitted exponents (log cost = c + p·log d)", "",
        f"Least squares over the widths d >= {res['fit_from']} where the quantity is positive "
        "(smaller widths are dominated by fixed per-call overheads, not by the asymptotic terms).",
        "", *fit_rows,
        "", f"![cost vs width]({res['plot']})",
        "", "## Medians per width", "", *table, "",
    ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int_list, default=[256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="minimum timed rounds per width")
    ap.add_argument("--max-repeats", type=int, default=15)
    ap.add_argument("--budget-s", type=float, default=30.0, help="timed seconds per width")
    ap.add_argument(
        "--fit-from", type=int, default=1024,
        help="fit on d >= this (below, fixed per-call overheads hide the asymptotics)",
    )  # fmt: skip
    ap.add_argument("--mem-cap-gb", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="d = 64 … 512, T = 128, 3 rounds")
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (+ .json, .png)")
    if wants_quick(argv):  # presets; explicit flags win
        ap.set_defaults(dims=[64, 128, 256, 512], tokens=128, repeats=3, budget_s=0, fit_from=0)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.max_repeats < args.repeats:
        ap.error(f"need 1 <= --repeats ({args.repeats}) <= --max-repeats ({args.max_repeats})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("bench_scaling.py", argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    rows = measure(args, log)
    for r in rows:
        r["tokens"] = args.tokens
    fitted = [r for r in rows if r["d"] >= args.fit_from]
    ds = [r["d"] for r in fitted]
    fits = {k: fit_exponent(ds, [r[k] for r in fitted]) for k in SERIES}
    # a quick run never overwrites the real results: its default is a temporary folder
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    png = plot(rows, fits, out.with_suffix(".png"))
    rule = (
        f"{args.budget_s:.0f} s of timed rounds, {args.repeats} to {args.max_repeats} rounds"
        if args.budget_s else f"{args.repeats} rounds"
    )  # fmt: skip
    res = {
        "command": command.rstrip(), "tokens": args.tokens, "seq_len": args.seq_len,
        "rows": rows, "fits": fits, "plot": png.name, "rounds_rule": rule,
        "fit_from": args.fit_from,
        "elapsed": time.perf_counter() - started,
    }  # fmt: skip
    log(f"wrote {out}, {write_results(out, render(res), res)} and {png}")


if __name__ == "__main__":
    main()
