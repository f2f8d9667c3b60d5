"""One adapted Linear, every method at matched active parameters: forward and forward+backward.

Methods (``_layer_methods.METHODS``): the frozen Linear alone, LoRA, MoE-LoRA, FRAME (chirp and
exact transforms, learned orders), FourierMoE, HydraLoRA, FlyLoRA, HMoRA, and PEFT's LoRA, DoRA
and FourierFT through ``fp.peft_baseline``. MoE-LoRA and FRAME keep the FRAME default E = 8,
k = 2, r = 4; every other method gets the rank / coefficient count whose active parameters per
token (``fp.count_parameters``) are closest to MoE-LoRA's (``_layer_methods.match_budgets``).

One step is ``y = model(x); loss = mean(y²) (+ fp.aux_loss for frame-peft models); backward``,
float32, CPU, ``x`` (T/S, S, d_in) with ``requires_grad=True`` (inside a network the frozen base
still back-propagates to its input). *fwd* is the time to the loss, *fwd+bwd* the whole step.
Methods are interleaved round-robin (the start rotates each round) after warm-up steps, so drift
from other load on the machine hits every method alike; tables give medians and IQRs, the
overhead over the base is the median of per-round paired differences.

Memory guard: every warm-up step runs under an address-space cap (``--mem-cap-gb`` more than the
process maps before the step); a method that needs more is reported as not timed instead of
pushing a shared machine into the OOM killer.

Peak memory (on by default): one fresh subprocess per shape with ``MALLOC_MMAP_THRESHOLD_=65536``
(freed blocks >= 64 KiB go back to the OS, so RSS follows live memory) builds each method alone,
runs one warm-up step, resets the RSS high-water mark and reports ``VmHWM − VmRSS(before)`` of
one more step: the extra memory a step needs.

A last section times FourierMoE (activation path, no ΔW) against PEFT FourierFT (a dense
``ΔW = IDFT2`` built every forward) at matched coefficients per token at several T.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py            # full run, ~15 min
    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py --quick    # small shapes, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import frame_peft as fp
from _common import address_space_cap, peak_rss_mb, reset_peak_rss, rss_mb
from _layer_methods import METHODS, TOP_K, build, match_budgets, target_budget
from _layer_report import gap_table, main_table, report, verdict
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


def time_methods(
    models: dict, x: torch.Tensor, repeats: int, warmup: int, cap_mb: float, log: Log
) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """Interleaved rounds: ``({method: {"fwd": [...], "step": [...]}}, {method: why skipped})``.

    The first warm-up step of each method runs under the address-space cap; a method that
    exceeds it is dropped from ``models`` and from the rounds.
    """
    skipped = {}

    def run(m: str) -> tuple[float, float]:
        clear_grads(models[m], x)
        return step(models[m], x, has_aux(m))

    for m in list(models):  # warm-up: one-off caches (exact basis, FFT plans), lazy init
        try:
            with address_space_cap(cap_mb):
                run(m)
        except OVER_CAP as err:
            skipped[m] = f"one step needs more than the {cap_mb / 1024:.0f} GiB cap"
            log(f"  {m}: over the memory cap ({str(err).splitlines()[0][:120]})")
            del models[m]
            gc.collect()
            continue
        for _ in range(warmup - 1):
            run(m)
    gc.collect()
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


def memory_worker(job: dict) -> dict[str, float | None]:
    """``{method: extra MiB of one step}``, ``None`` where the step exceeds the cap."""
    d_in, d_out = job["d_in"], job["d_out"]
    x = inputs(d_in, job["tokens"], job["seq_len"])
    weight = shared_weight(d_in, d_out)
    peaks: dict[str, float | None] = {}
    for m, knob in job["knobs"].items():
        model = build(METHODS[m].make(knob), d_in, d_out, weight)
        try:
            with address_space_cap(job["cap_mb"]):
                clear_grads(model, x)
                step(model, x, has_aux(m))  # warm-up: one-off caches (exact basis), lazy init
                clear_grads(model, x)
                gc.collect()
                before = rss_mb()
                reset_peak_rss()
                step(model, x, has_aux(m))
                peaks[m] = peak_rss_mb() - before
        except OVER_CAP:
            peaks[m] = None
        del model
        gc.collect()
    return peaks


def measure_memory(job: dict, threads: int, log: Log) -> dict[str, float | None]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-worker", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
        log(f"  memory worker failed: {tail[0]}")
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# FourierMoE vs PEFT FourierFT at matched coefficients per token


def gap_section(shape: tuple[int, int], n_moe: int, args, log: Log) -> str:
    d_in, d_out = shape
    per_token = 2 * TOP_K * n_moe  # real coefficients the k selected experts apply to a token
    knobs = {"fouriermoe": n_moe, "peft_fourierft": per_token}
    models = build_all(GAP_METHODS, knobs, d_in, d_out, log)
    res = {}
    for tokens in sorted(args.gap_tokens):  # ascending: a method over the cap stays dropped
        log(f"gap: {d_in}x{d_out}, {tokens} tokens, {args.gap_repeats} rounds")
        x = inputs(d_in, tokens, args.seq_len)
        cap = args.mem_cap_gb * 1024
        res[tokens], _ = time_methods(models, x, args.gap_repeats, args.warmup, cap, log)
    dw_layer = models["peft_fourierft"].base_model.model.proj
    dw_times = []  # PEFT's dense ΔW alone (forward and backward), independent of T
    g = torch.randn(d_out, d_in)
    for _ in range(max(3, args.gap_repeats)):
        dw_layer.fourierft_spectrum["default"].grad = None
        t0 = time.perf_counter()
        dw_layer.get_delta_weight("default").backward(g)
        dw_times.append((time.perf_counter() - t0) * 1e3)
    return gap_table(res, knobs, per_token, dw_times, shape)


# ------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-in", type=int, nargs="+", default=[4096, 4096])
    ap.add_argument("--d-out", type=int, nargs="+", default=[4096, 11008])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=512, help="x is (tokens/seq_len, seq_len, d_in)")
    ap.add_argument(
        "--repeats", type=int, nargs="+", default=[5, 3], help="timed rounds, one or one per shape"
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method (>= 1)")
    ap.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
        help="subset of methods (base and moe_lora always run)",
    )  # fmt: skip
    ap.add_argument(
        "--gap-tokens", type=int, nargs="*", default=[256, 2048],
        help="token counts of the FourierMoE-vs-FourierFT section on the first shape (none: skip)",
    )  # fmt: skip
    ap.add_argument("--gap-repeats", type=int, default=3)
    ap.add_argument(
        "--mem-cap-gb", type=float, default=8.0, help="max extra memory of one step (GiB)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and workers')")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--quick", action="store_true",
        help="512x512 and 512x1376, 256 tokens, 3 rounds; prints the page unless --out is given",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.d_in, args.d_out, args.tokens, args.repeats = [512, 512], [512, 1376], 256, [3]
        args.gap_tokens, args.gap_repeats = [64, 256], 3
    if len(args.d_in) != len(args.d_out):
        ap.error("--d-in and --d-out need the same number of values (one shape per pair)")
    if len(args.repeats) == 1:
        args.repeats = args.repeats * len(args.d_in)
    if len(args.repeats) != len(args.d_in):
        ap.error("--repeats takes one value, or one per shape")
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step runs under the memory cap)")
    return args


def main() -> None:
    args = parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    torch.set_num_threads(args.threads)
    cap_mb = args.mem_cap_gb * 1024
    shapes = list(zip(args.d_in, args.d_out, strict=True))
    names = [m for m in METHODS if m in {"base", "moe_lora", *args.methods}]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    omp = os.environ.get("OMP_NUM_THREADS", "")
    command = f"OMP_NUM_THREADS={omp} python benchmarks/bench_layers.py {argv}".rstrip()
    load_start, started = os.getloadavg(), time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    sections, verdicts, n_fmoe = [], [], None
    for (d_in, d_out), rounds in zip(shapes, args.repeats, strict=True):
        log(f"shape {d_in}x{d_out}, {args.tokens} tokens, {rounds} rounds")
        target = target_budget(d_in, d_out)
        knobs = match_budgets(names, d_in, d_out, target)
        n_fmoe = n_fmoe or knobs.get("fouriermoe")
        log(f"  target {target:,} active/token; knobs {knobs}")
        models = build_all(names, knobs, d_in, d_out, log)
        counts = {m: count_parameters(model) for m, model in models.items()}
        x = inputs(d_in, args.tokens, args.seq_len)
        times, skipped = time_methods(models, x, rounds, args.warmup, cap_mb, log)
        models.clear()
        gc.collect()
        mem = {}
        if not args.no_memory:
            job = dict(d_in=d_in, d_out=d_out, tokens=args.tokens, seq_len=args.seq_len)
            mem = measure_memory({**job, "knobs": knobs, "cap_mb": cap_mb}, args.threads, log)
            log(f"  memory {mem}")
        table = main_table(knobs, counts, times, mem, target, skipped)
        if {"frame_chirp", "moe_lora"} <= times.keys():
            verdicts.append(verdict(times, f"{d_in}x{d_out}"))
            table += f"\n\n{verdicts[-1]}"
        sections.append(
            f"### {d_in} → {d_out}, {args.tokens} tokens (target {target:,} active / token, "
            f"{rounds} rounds)\n\n{table}\n"
        )
    gap = ""
    if args.gap_tokens and n_fmoe:
        gap = gap_section(shapes[0], n_fmoe, args, log)
    rounds = ", ".join(f"{a}x{b}: {n}" for (a, b), n in zip(shapes, args.repeats, strict=True))
    run = {
        "command": command, "root": HERE.parent, "tokens": args.tokens, "seq_len": args.seq_len,
        "warmup": args.warmup,
        "rounds": rounds,
        "load_start": load_start, "load_end": os.getloadavg(),
        "elapsed": time.perf_counter() - started, "gap_shape": shapes[0],
    }  # fmt: skip
    text = report(run, sections, verdicts, gap)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
