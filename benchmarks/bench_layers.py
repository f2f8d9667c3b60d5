"""One adapted Linear, every method at matched active parameters, over a grid of widths × tokens.

Methods (``_layer_methods.METHODS``): the frozen Linear alone, LoRA, MoE-LoRA, FRAME (chirp and
exact transforms, learned orders), FourierMoE, HydraLoRA, FlyLoRA, HMoRA, and PEFT's LoRA, DoRA
and FourierFT through ``fp.peft_baseline``. MoE-LoRA and FRAME keep the FRAME default E = 8,
k = 2, r = 4; every other method gets the rank / coefficient count whose active parameters per
token (``fp.count_parameters``) are closest to MoE-LoRA's (``_layer_methods.match_budgets``);
PEFT LoRA also runs at MoE-LoRA's active rank k·r = 8 for the equal-rank target.

Grid: square d × d layers for ``--dims`` (plus any ``--shapes`` such as the LLaMA MLP's
4096x11008) times ``--tokens``. One *cell* is one (shape, T): time (fwd, fwd+bwd) and the peak
memory of a step, with ratios to MoE-LoRA and to the frozen base, and the targets
(``_layer_report.targets``) with PASS/FAIL and the measured value.

One step is ``y = model(x); loss = mean(y²) (+ fp.aux_loss for frame-peft models); backward``,
float32, CPU, ``x`` (T/S, S, d_in) with ``requires_grad=True`` (inside a network the frozen base
still back-propagates to its input). Methods are interleaved round-robin (the start rotates each
round) after warm-up steps, so drift from other load on the machine hits every method alike;
tables give medians and IQRs, the overhead over the base is the median of per-round paired
differences. Rounds per cell come from a time budget: the warm-up gives the time of one round,
and the cell gets ``--cell-budget-s / round`` rounds, clipped to [``--repeats``,
``--max-repeats``] (big cells get the minimum; the page lists the rounds of every cell).

Memory guard: every first warm-up step runs under an address-space cap (``--mem-cap-gb`` more
than the process maps before the step); a method that needs more is reported as not timed
instead of pushing a shared machine into the OOM killer.

Peak memory (on by default): one fresh subprocess per shape with ``MALLOC_MMAP_THRESHOLD_=65536``
(freed blocks >= 64 KiB go back to the OS, so RSS follows live memory) builds each method alone
and, for each T, runs one warm-up step, resets the RSS high-water mark and reports
``VmHWM − VmRSS(before)`` of one more step: the extra memory a step needs.

A last section times FourierMoE (activation path, no ΔW) against PEFT FourierFT (a dense
``ΔW = IDFT2`` built every forward) at matched coefficients per token at several T.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py            # full grid, ~15 min
    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py --shapes 4096x11008   # + LLaMA MLP
    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py --quick    # small grid, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

import frame_peft as fp
from _common import (
    address_space_cap,
    command_line,
    int_list,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_memory_worker,
    shape_list,
    wants_quick,
    write_results,
)
from _layer_methods import METHODS, TOP_K, build, match_budgets, target_budget
from _layer_report import cell_table, gap_table, report, summary_table, targets
from frame_peft.peft_bridge import count_parameters

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "layers.md"
GAP_METHODS = ["base", "fouriermoe", "peft_fourierft"]
OVER_CAP = (RuntimeError, MemoryError)  # what an allocation past the address-space cap raises
Log = Callable[[str], None]


def clear_grads(model: torch.nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in model.parameters():
        p.grad = None


def step(model: torch.nn.Module, x: torch.Tensor, aux: bool) -> tuple[float, float]:
    """One training step; returns (fwd ms, fwd+bwd ms)."""
    t0 = time.perf_counter()
    loss = model(x).float().square().mean()
    if aux:
        loss = loss + fp.aux_loss(model)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3


def has_aux(method: str) -> bool:
    return method != "base" and not METHODS[method].peft


def inputs(d_in: int, tokens: int, seq_len: int) -> torch.Tensor:
    s = min(seq_len, tokens)
    if tokens % s:
        raise ValueError(f"tokens ({tokens}) must be a multiple of seq_len ({s})")
    torch.manual_seed(1)
    return torch.randn(tokens // s, s, d_in, requires_grad=True)


def shared_weight(d_in: int, d_out: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(d_out, d_in) / d_in**0.5  # one frozen W shared by every method


def build_all(names: list[str], knobs: dict, d_in: int, d_out: int, log: Log) -> dict:
    weight = shared_weight(d_in, d_out)
    models = {}
    for m in names:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        models[m] = build(METHODS[m].make(knobs.get(m)), d_in, d_out, weight)
        log(f"  built {m} in {time.perf_counter() - t0:.1f}s")
    return models


def rounds_for(round_ms: float, budget_s: float | None, lo: int, hi: int | None) -> int:
    """Timed rounds of a cell: ``budget_s / round``, clipped to [lo, hi]; ``lo`` without budget."""
    if budget_s is None or round_ms <= 0:
        return lo
    n = int(budget_s * 1e3 // round_ms)
    return max(lo, min(n, hi if hi is not None else n))


def time_methods(
    models: dict,
    x: torch.Tensor,
    repeats: int,
    warmup: int,
    cap_mb: float,
    log: Log,
    budget_s: float | None = None,
    max_repeats: int | None = None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Interleaved rounds: ``({method: {"fwd": [...], "step": [...]}}, {method: why skipped})``.

    The first warm-up step of each method runs under the address-space cap; a method that
    exceeds it is dropped from ``models`` and from the rounds. ``repeats`` rounds are timed, or,
    with ``budget_s``, :func:`rounds_for` of the last warm-up round's time (at least ``repeats``,
    at most ``max_repeats``).
    """
    skipped = {}

    def run(m: str) -> tuple[float, float]:
        clear_grads(models[m], x)
        return step(models[m], x, has_aux(m))

    round_ms = 0.0
    for m in list(models):  # warm-up: one-off caches (exact basis, FFT plans), lazy init
        try:
            with address_space_cap(cap_mb):
                last = run(m)[1]
        except OVER_CAP as err:
            skipped[m] = f"one step needs more than the {cap_mb / 1024:.0f} GiB cap"
            log(f"  {m}: over the memory cap ({str(err).splitlines()[0][:120]})")
            del models[m]
            gc.collect()
            continue
        for _ in range(warmup - 1):
            last = run(m)[1]
        round_ms += last
    gc.collect()
    repeats = rounds_for(round_ms, budget_s, repeats, max_repeats)
    names = list(models)
    out = {m: {"fwd": [], "step": []} for m in names}
    for r in range(repeats):
        for m in names[r % len(names) :] + names[: r % len(names)]:
            f, s = run(m)
            out[m]["fwd"].append(f)
            out[m]["step"].append(s)
        log(
            f"  round {r + 1}/{repeats}: "
            + " ".join(f"{m}={out[m]['step'][-1]:.0f}" for m in names)
        )
    for m in names:
        clear_grads(models[m], x)
    return out, skipped


# ------------------------------------------------------------------------------------------------
# Peak memory worker (one fresh subprocess per shape; every method built alone in it)


def memory_worker(job: dict) -> dict[str, dict[str, float | None]]:
    """``{T: {method: extra MiB of one step}}`` (T as a string: JSON keys), ``None`` over the cap.

    Token counts run in ascending order for each method; a method over the cap at some T is not
    tried at larger T.
    """
    d_in, d_out = job["d_in"], job["d_out"]
    weight = shared_weight(d_in, d_out)
    tokens = sorted(job["tokens"])
    peaks: dict[str, dict[str, float | None]] = {str(t): {} for t in tokens}
    for m, knob in job["knobs"].items():
        model = build(METHODS[m].make(knob), d_in, d_out, weight)
        over = False
        for t in tokens:
            x = inputs(d_in, t, job["seq_len"])
            if over:
                peaks[str(t)][m] = None
                continue
            try:
                with address_space_cap(job["cap_mb"]):
                    clear_grads(model, x)
                    step(model, x, has_aux(m))  # warm-up: one-off caches, lazy init
                    clear_grads(model, x)
                    gc.collect()
                    before = rss_mb()
                    reset_peak_rss()
                    step(model, x, has_aux(m))
                    peaks[str(t)][m] = peak_rss_mb() - before
                    clear_grads(model, x)
            except OVER_CAP:
                peaks[str(t)][m], over = None, True
            del x
            gc.collect()
        del model
        gc.collect()
    return peaks


def measure_memory(job: dict, threads: int, log: Log) -> dict[int, dict[str, float | None]]:
    """Run :func:`memory_worker` in a fresh subprocess; ``{T: {method: MiB}}`` ({} on failure)."""
    raw = run_memory_worker(__file__, job, threads, log) or {}
    return {int(t): v for t, v in raw.items()}


# ------------------------------------------------------------------------------------------------
# FourierMoE vs PEFT FourierFT at matched coefficients per token


def gap_section(d: int, args, log: Log) -> str:
    n_moe = match_budgets(["fouriermoe"], d, d)["fouriermoe"]
    per_token = 2 * TOP_K * n_moe  # real coefficients the k selected experts apply to a token
    knobs = {"fouriermoe": n_moe, "peft_fourierft": per_token}
    models = build_all(GAP_METHODS, knobs, d, d, log)
    res = {}
    for tokens in sorted(args.gap_tokens):  # ascending: a method over the cap stays dropped
        log(f"gap: {d}x{d}, {tokens} tokens, {args.gap_repeats} rounds")
        x = inputs(d, tokens, args.seq_len)
        cap = args.mem_cap_gb * 1024
        res[tokens], _ = time_methods(models, x, args.gap_repeats, args.warmup, cap, log)
    dw_layer = models["peft_fourierft"].base_model.model.proj
    dw_times = []  # PEFT's dense ΔW alone (forward and backward), independent of T
    g = torch.randn(d, d)
    for _ in range(max(3, args.gap_repeats)):
        dw_layer.fourierft_spectrum["default"].grad = None
        t0 = time.perf_counter()
        dw_layer.get_delta_weight("default").backward(g)
        dw_times.append((time.perf_counter() - t0) * 1e3)
    return gap_table(res, knobs, per_token, dw_times, (d, d))


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int_list, default=[1024, 4096], help="square d x d layers")
    ap.add_argument(
        "--shapes", type=shape_list, default=[],
        help="extra d_in x d_out layers, e.g. 4096x11008 (the LLaMA-7B MLP)",
    )  # fmt: skip
    ap.add_argument("--tokens", type=int_list, default=[512, 2048, 8192], help="T per cell")
    ap.add_argument("--seq-len", type=int, default=512, help="x is (tokens/seq_len, seq_len, d_in)")
    ap.add_argument("--repeats", type=int, default=3, help="minimum timed rounds per cell")
    ap.add_argument("--max-repeats", type=int, default=9, help="maximum timed rounds per cell")
    ap.add_argument(
        "--cell-budget-s", type=float, default=120.0,
        help="timed seconds per cell: rounds = budget / (one round's time), within the bounds "
        "(0: always --repeats)",
    )  # fmt: skip
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method (>= 1)")
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
        help="subset of methods (base and moe_lora always run)",
    )  # fmt: skip
    ap.add_argument(
        "--gap-tokens", type=int_list, default=[256, 2048],
        help="token counts of the FourierMoE-vs-FourierFT section ('': skip it)",
    )  # fmt: skip
    ap.add_argument("--gap-dim", type=int, default=None, help="its d x d layer (default max dims)")
    ap.add_argument("--gap-repeats", type=int, default=3)
    ap.add_argument(
        "--mem-cap-gb", type=float, default=8.0, help="max extra memory of one step (GiB)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and workers')")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--quick", action="store_true",
        help="dims 256,512, tokens 128,512, 3 rounds; prints the page unless --out is given",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    if wants_quick(argv):  # presets; explicit flags win
        ap.set_defaults(
            dims=[256, 512], tokens=[128, 512], repeats=3, cell_budget_s=0,
            gap_tokens=[64, 256], gap_repeats=3,
        )  # fmt: skip
    args = ap.parse_args(argv)
    args.shapes = [(d, d) for d in args.dims] + args.shapes
    if not args.shapes or not args.tokens:
        ap.error("give at least one of --dims / --shapes, and at least one --tokens value")
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step runs under the memory cap)")
    if args.repeats < 1 or args.max_repeats < args.repeats:
        ap.error(f"need 1 <= --repeats ({args.repeats}) <= --max-repeats ({args.max_repeats})")
    if args.gap_dim is None:
        args.gap_dim = max(args.dims) if args.dims else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    torch.set_num_threads(args.threads)
    cap_mb = args.mem_cap_gb * 1024
    names = [m for m in METHODS if m in {"base", "moe_lora", *args.methods}]
    command = command_line("bench_layers.py", argv)
    load_start, started = os.getloadavg(), time.perf_counter()
    budget = args.cell_budget_s or None

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    cells, sections, rounds = [], [], []
    for d_in, d_out in args.shapes:
        target = target_budget(d_in, d_out)
        knobs = match_budgets(names, d_in, d_out, target)
        log(f"shape {d_in}x{d_out}: target {target:,} active/token; knobs {knobs}")
        models = build_all(names, knobs, d_in, d_out, log)
        counts = {m: count_parameters(model) for m, model in models.items()}
        skipped: dict[str, str] = {}
        per_t = {}
        for tokens in sorted(args.tokens):  # ascending: a method over the cap stays dropped
            log(f"cell {d_in}x{d_out}, {tokens} tokens")
            x = inputs(d_in, tokens, args.seq_len)
            times, new = time_methods(
                models, x, args.repeats, args.warmup, cap_mb, log, budget, args.max_repeats
            )
            skipped.update(new)
            per_t[tokens] = (times, dict(skipped))
            del x
        models.clear()
        gc.collect()
        mem = {}
        if not args.no_memory:
            job = dict(d_in=d_in, d_out=d_out, tokens=args.tokens, seq_len=args.seq_len)
            mem = measure_memory({**job, "knobs": knobs, "cap_mb": cap_mb}, args.threads, log)
            log(f"  memory {mem}")
        for tokens, (times, skip) in per_t.items():
            cell = {
                "shape": (d_in, d_out), "tokens": tokens, "target": target, "knobs": knobs,
                "counts": counts, "times": times, "memory": mem.get(tokens, {}), "skipped": skip,
            }  # fmt: skip
            n = len(times["base"]["step"])
            rounds.append(f"{d_in}x{d_out} T={tokens}: {n}")
            cells.append(cell)
            sections.append(
                f"### {d_in} → {d_out}, {tokens} tokens (target {target:,} active / token, "
                f"{n} rounds)\n\n{cell_table(cell)}\n"
            )
    gap = ""
    if args.gap_tokens and args.gap_dim and "fouriermoe" in names:
        gap = gap_section(args.gap_dim, args, log)
    run = {
        "command": command, "root": HERE.parent, "tokens": args.tokens, "seq_len": args.seq_len,
        "warmup": args.warmup, "rounds": "; ".join(rounds),
        "rounds_rule": (
            f"{budget:.0f} s of timed rounds per cell, at least {args.repeats} and at most "
            f"{args.max_repeats} rounds" if budget else f"{args.repeats} rounds per cell"
        ),
        "load_start": load_start, "load_end": os.getloadavg(),
        "elapsed": time.perf_counter() - started, "gap_shape": (args.gap_dim, args.gap_dim),
    }  # fmt: skip
    text = report(run, sections, summary_table(cells), targets(cells), gap)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is None:
        print(text)
        return
    write_results(out, text, cells_json(cells, run))
    log(f"wrote {out} and {out.with_suffix('.json')}")


def cells_json(cells: list[dict], run: dict) -> dict:
    """The raw timings and memory of every cell, for plots and later comparisons."""
    keep = ("command", "tokens", "seq_len", "warmup", "rounds_rule", "elapsed")
    return {
        "run": {k: run[k] for k in keep},
        "cells": [
            {**c, "shape": list(c["shape"]), "memory": {m: v for m, v in c["memory"].items()}}
            for c in cells
        ],
        "targets": [t._asdict() for t in targets(cells)],
    }


if __name__ == "__main__":
    main()
