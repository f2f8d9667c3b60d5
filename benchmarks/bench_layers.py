"""Forward+backward time and peak memory of one adapted Linear layer, every method in one run.

For each shape (default 4096x4096 and 4096x11008, 2048 tokens, float32, CPU) it times:

- ``base``: the frozen ``nn.Linear`` alone;
- ``lora``: LoRA r=8;
- ``moe_lora``: MoE-LoRA, E=8, top-k=2, r=4;
- ``frame_chirp`` / ``frame_exact``: FRAME, E=8, top-k=2, r=4, learned orders (the default; the
  transforms run on every forward), chirp surrogate / exact discrete FrFT.

One step is ``y = layer(x); loss = mean(y²) (+ frame_peft.aux_loss for mixtures); backward``.
``x`` (T, d_in) has ``requires_grad=True``: the layer sits inside a network, so even the frozen
base back-propagates to its input (one extra T x d_in x d_out matmul; no weight gradient for the
frozen base). The adapter alone (``layer.proj.adapter(x, x)`` + the same loss) is timed as well.

Methods are interleaved round-robin (the start rotates every round) after a warm-up, so drift
from other load on the machine hits every method alike; the tables give medians and IQRs, and
the adapter overhead (method - base) as the median of the per-round paired differences.

Peak memory: each method runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc
then serves every block >= 64 KiB with mmap and unmaps it on free, so RSS follows live memory).
After one warm-up step (one-off caches such as the exact transform's basis already built, grads
set to None) it resets the RSS high-water mark (``/proc/self/clear_refs``), runs one step and
reports ``VmHWM - VmRSS before the step`` in MiB: the extra memory one training step needs on top
of what is already resident (weights, input, caches). Max of two measured steps.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py            # both shapes, ~8 min
    OMP_NUM_THREADS=1 python benchmarks/bench_layers.py --d-in 1024 --d-out 1024 --repeats 3
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
from _common import machine_info, peak_rss_mb, quartiles, reset_peak_rss, rss_mb

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "layers.md"
TARGET = 1.10

LABELS = {
    "base": "base (frozen Linear)",
    "lora": "LoRA r=8",
    "moe_lora": "MoE-LoRA E=8 k=2 r=4",
    "frame_chirp": "FRAME chirp E=8 k=2 r=4",
    "frame_exact": "FRAME exact E=8 k=2 r=4",
}
METHODS = list(LABELS)
MIXTURES = {"moe_lora", "frame_chirp", "frame_exact"}


def make_config(method: str) -> fp.AdapterConfig | None:
    t = ["proj"]
    if method == "base":
        return None
    if method == "lora":
        return fp.LoRAConfig(target_modules=t, rank=8, dropout=0.0)
    if method == "moe_lora":
        return fp.MoELoRAConfig(target_modules=t, num_experts=8, top_k=2, rank=4, dropout=0.0)
    transform = method.removeprefix("frame_")
    return fp.FrameConfig(
        target_modules=t, num_experts=8, top_k=2, rank=4, dropout=0.0, transform=transform
    )


def build(method: str, d_in: int, d_out: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = torch.nn.Sequential()
    layer.add_module("proj", torch.nn.Linear(d_in, d_out, bias=False))
    layer.requires_grad_(False)  # the base is frozen either way (inject freezes it too)
    config = make_config(method)
    if config is not None:
        fp.inject(layer, config)
    return layer


def clear_grads(layer: torch.nn.Module, x: torch.Tensor) -> None:
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def layer_step(layer: torch.nn.Module, x: torch.Tensor, mixture: bool) -> None:
    y = layer(x)
    loss = y.float().square().mean()
    if mixture:
        loss = loss + fp.aux_loss(layer)
    loss.backward()


def adapter_step(
    adapter: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor, mixture: bool
) -> None:
    """The adapter alone: forward, then backward from a fixed upstream gradient ``grad_out``.

    No (T, d_out) loss ops here: in the full step those belong to the whole layer, and timing
    them again would charge the adapter for the base's share.
    """
    if mixture:
        adapter.state.begin_forward(None)  # what the model's pre-hook does on a full forward
    d = adapter(x, x)
    if mixture:
        aux = adapter.state.aux_loss()
        torch.autograd.backward([d, aux], [grad_out, torch.ones_like(aux)])
    else:
        torch.autograd.backward([d], [grad_out])


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


# ------------------------------------------------------------------------------------------------
# Peak memory worker (fresh subprocess per method and shape)


def memory_worker(method: str, d_in: int, d_out: int, tokens: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    gc.collect()
    rss0 = rss_mb()
    layer = build(method, d_in, d_out)
    x = torch.randn(tokens, d_in, requires_grad=True)
    mixture = method in MIXTURES
    clear_grads(layer, x)
    layer_step(layer, x, mixture)  # warm-up: one-off caches (exact basis), lazy init
    peaks = []
    for _ in range(2):
        clear_grads(layer, x)
        gc.collect()
        before = rss_mb()
        reset_peak_rss()
        layer_step(layer, x, mixture)
        peaks.append(peak_rss_mb() - before)
    clear_grads(layer, x)
    gc.collect()
    return {"peak_mb": max(peaks), "resident_mb": rss_mb() - rss0, "all": peaks}


def measure_memory(method: str, d_in: int, d_out: int, tokens: int, threads: int) -> dict:
    """Run :func:`memory_worker` in a fresh interpreter; retry (the package may be mid-edit)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-worker", method]
    cmd += ["--d-in", str(d_in), "--d-out", str(d_out), "--tokens", str(tokens)]
    cmd += ["--threads", str(threads)]
    error = ""
    for attempt in range(3):
        if attempt:
            time.sleep(10)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no stderr"
        print(f"memory worker failed ({shlex.join(cmd)}): {error}", file=sys.stderr)
    return {"peak_mb": float("nan"), "resident_mb": float("nan"), "error": error}


# ------------------------------------------------------------------------------------------------
# Timing


def bench_shape(
    d_in: int, d_out: int, tokens: int, repeats: int, warmup: int, log: Callable[[str], None]
) -> dict:
    torch.manual_seed(1)
    x = torch.randn(tokens, d_in, requires_grad=True)
    grad_out = torch.randn(tokens, d_out) / (tokens * d_out) ** 0.5
    layers, params = {}, {}
    for m in METHODS:
        t0 = time.perf_counter()
        layers[m] = build(m, d_in, d_out)
        params[m] = fp.count_parameters(layers[m])
        log(f"  built {m} in {time.perf_counter() - t0:.1f}s")

    def run_full(m: str) -> float:
        clear_grads(layers[m], x)
        return timed(lambda: layer_step(layers[m], x, m in MIXTURES))

    def run_adapter(m: str) -> float:
        clear_grads(layers[m], x)
        return timed(lambda: adapter_step(layers[m].proj.adapter, x, grad_out, m in MIXTURES))

    for m in METHODS:  # warm-up: one-off caches (exact basis, FFT plans), allocator, lazy init
        for _ in range(warmup):
            run_full(m)
            if m != "base":
                run_adapter(m)
    gc.collect()
    full: dict[str, list[float]] = {m: [] for m in METHODS}
    alone: dict[str, list[float]] = {m: [] for m in METHODS if m != "base"}
    for r in range(repeats):
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        for m in order:
            full[m].append(run_full(m))
            if m != "base":
                alone[m].append(run_adapter(m))
        log(f"  round {r + 1}/{repeats}: " + " ".join(f"{m}={full[m][-1]:.0f}" for m in METHODS))
    layers.clear()
    gc.collect()
    return {"full": full, "alone": alone, "params": params}


# ------------------------------------------------------------------------------------------------
# Profile (adapter alone, where the time goes)


def profile_adapters(d_in: int, d_out: int, tokens: int, methods: list[str], steps: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(tokens, d_in, requires_grad=True)
    grad_out = torch.randn(tokens, d_out) / (tokens * d_out) ** 0.5
    parts = []
    for m in methods:
        layer = build(m, d_in, d_out)
        adapter = layer.proj.adapter
        for _ in range(2):
            clear_grads(layer, x)
            adapter_step(adapter, x, grad_out, True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                clear_grads(layer, x)
                adapter_step(adapter, x, grad_out, True)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        parts.append(f"#### {LABELS[m]}, adapter alone, {steps} steps\n\n```\n{table}```\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Report


def fmt_params(p: dict) -> str:
    return f"{p['trainable']:,} / {p['active_per_token']:,}"


def shape_table(d_in: int, d_out: int, res: dict, mem: dict) -> tuple[str, dict]:
    full, alone, params = res["full"], res["alone"], res["params"]
    med = {m: quartiles(v)[1] for m, v in full.items()}
    base, moe = med["base"], med["moe_lora"]
    rows = [
        "| method | params trainable / active per token | fwd+bwd ms, median [IQR] "
        "| ratio to base | ratio to MoE-LoRA | adapter overhead ms (% of base) "
        "| adapter alone ms, median [IQR] (% of base) | peak step mem MiB | resident MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    stats = {}
    for m in METHODS:
        q1, md, q3 = quartiles(full[m])
        diffs = [t - b for t, b in zip(full[m], full["base"], strict=True)]
        d_q1, d_md, d_q3 = quartiles(diffs)
        ratios_moe = [t / b for t, b in zip(full[m], full["moe_lora"], strict=True)]
        stats[m] = {
            "median": md,
            "ratio_base": md / base,
            "ratio_moe": md / moe,
            "paired_ratio_moe": quartiles(ratios_moe),
            "min": min(full[m]),
            "overhead": (d_q1, d_md, d_q3),
        }
        over = (
            "—"
            if m == "base"
            else f"{d_md:+.0f} [{d_q1:+.0f}, {d_q3:+.0f}] ({100 * d_md / base:+.1f}%)"
        )
        if m == "base":
            al = "—"
        else:
            a_q1, a_md, a_q3 = quartiles(alone[m])
            al = f"{a_md:.1f} [{a_q1:.1f}, {a_q3:.1f}] ({100 * a_md / base:.1f}%)"
            stats[m]["alone"] = a_md
        rows.append(
            f"| {LABELS[m]} | {fmt_params(params[m])} | {md:.0f} [{q1:.0f}, {q3:.0f}] "
            f"| {md / base:.3f} | {md / moe:.3f} | {over} | {al} "
            f"| {mem[m]['peak_mb']:.0f} | {mem[m]['resident_mb']:.0f} |"
        )
    return "\n".join(rows), stats


def git_state() -> str:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=HERE.parent, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return f"{head}" + (" with uncommitted changes under src/" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-in", type=int, nargs="+", default=[4096, 4096])
    ap.add_argument("--d-out", type=int, nargs="+", default=[4096, 11008])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument(
        "--repeats",
        type=int,
        nargs="+",
        default=[13, 6],
        help="timed rounds: one value for every shape or one per shape (default 13 6)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method and shape")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (and the workers' OMP_NUM_THREADS)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--profile", action="store_true", help="always append an adapter profile")
    ap.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.memory_worker:
        res = memory_worker(
            args.memory_worker, args.d_in[0], args.d_out[0], args.tokens, args.threads
        )
        print(json.dumps(res))
        return

    if len(args.d_in) != len(args.d_out):
        ap.error("--d-in and --d-out need the same number of values (one shape per pair)")
    torch.set_num_threads(args.threads)
    shapes = list(zip(args.d_in, args.d_out, strict=True))
    if len(args.repeats) == 1:
        args.repeats = args.repeats * len(shapes)
    if len(args.repeats) != len(shapes):
        ap.error("--repeats takes one value, or one per shape")
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    omp = os.environ.get("OMP_NUM_THREADS", "")
    command = f"OMP_NUM_THREADS={omp} python benchmarks/bench_layers.py {argv}".rstrip()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    sections, verdicts, profiles = [], [], []
    for (d_in, d_out), repeats in zip(shapes, args.repeats, strict=True):
        log(f"shape {d_in}x{d_out}, {args.tokens} tokens, {repeats} rounds")
        res = bench_shape(d_in, d_out, args.tokens, repeats, args.warmup, log)
        mem = {}
        for m in METHODS:
            if args.no_memory:
                mem[m] = {"peak_mb": float("nan"), "resident_mb": float("nan")}
            else:
                mem[m] = measure_memory(m, d_in, d_out, args.tokens, args.threads)
                log(f"  memory {m}: {mem[m]}")
        table, stats = shape_table(d_in, d_out, res, mem)
        failed = [f"{m}: {mem[m]['error']}" for m in METHODS if "error" in mem[m]]
        if failed:
            table += "\n\nPeak memory not measured (worker failed 3 times): " + "; ".join(failed)
        chirp, exact, moe = stats["frame_chirp"], stats["frame_exact"], stats["moe_lora"]
        p_q1, p_md, p_q3 = chirp["paired_ratio_moe"]
        ok = chirp["ratio_moe"] <= TARGET
        verdict = (
            f"**{'PASS' if ok else 'FAIL'}** ({d_in}x{d_out}): FRAME(chirp)/MoE-LoRA on the whole "
            f"layer = {chirp['ratio_moe']:.3f} (ratio of medians; per-round paired ratio median "
            f"{p_md:.3f}, IQR [{p_q1:.3f}, {p_q3:.3f}]; ratio of the fastest rounds "
            f"{chirp['min'] / moe['min']:.3f}), target <= {TARGET:.2f}."
        )
        verdicts.append(verdict)
        e_md = exact["overhead"][1]
        note = (
            f"Exact transform: FRAME(exact)/MoE-LoRA = {exact['ratio_moe']:.3f}, "
            f"FRAME(exact)/base = {exact['ratio_base']:.3f}; its adapter alone takes "
            f"{exact['alone']:.0f} ms vs {chirp['alone']:.0f} ms (chirp) and {moe['alone']:.0f} ms "
            f"(MoE-LoRA), overhead over base {e_md:+.0f} ms. The exact FrFT is dense: each forward "
            f"multiplies the E·r = 32 factor rows by the d×d eigenbasis V (and Vᵀ) on the real and "
            f"imaginary parts, O(E·r·d²) for A (d = {d_in}) and B (d = {d_out}), plus the same "
            f"again in backward, independent of the token count; the chirp surrogate does it with "
            f"FFTs in O(E·r·d log d). The exact basis is built once per width (cached, float64 "
            f"and float32 copies: {8 * d_out**2 / 2**20:.0f} + {4 * d_out**2 / 2**20:.0f} MiB "
            f"for d = {d_out}), which shows in the resident column."
        )
        sections.append(
            f"### {d_in} → {d_out}, {args.tokens} tokens\n\n{table}\n\n{verdict}\n\n{note}\n"
        )
        if args.profile or not ok:
            log("  profiling adapters (moe_lora, frame_chirp)")
            profiles.append(
                f"### Profile {d_in}x{d_out}\n\n"
                + profile_adapters(d_in, d_out, args.tokens, ["moe_lora", "frame_chirp"], 3)
            )

    info = machine_info()
    elapsed = time.perf_counter() - started
    lines = [
        "# Layer benchmark: one adapted Linear, forward + backward",
        "",
        "Generated by `benchmarks/bench_layers.py` (do not edit by hand; rerun the command).",
        "",
        "## Command",
        "",
        f"```\n{command}\n```",
        "",
        f"Total wall time {elapsed / 60:.1f} min; timed rounds per shape: "
        f"{', '.join(f'{a}x{b}: {n}' for (a, b), n in zip(shapes, args.repeats, strict=True))}, "
        f"after {args.warmup} warm-up step(s) per method.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- code: git {git_state()} (the package is imported once, at the start of the run)",
        "",
        "## What is measured",
        "",
        "- One training step of a single layer: `y = layer(x)`, `loss = mean(y²)` (`+ fp.aux_loss` "
        "for the mixtures), `loss.backward()`. float32, CPU. `x` is (tokens, d_in) with "
        "`requires_grad=True`: inside a network the frozen base still back-propagates to its "
        "input, so the base costs a forward and a grad-input matmul (no weight gradient).",
        "- Methods are interleaved round-robin (start rotated each round); times are medians with "
        "the interquartile range in brackets.",
        "- *adapter overhead* = (method − base), the median over rounds of the paired per-round "
        "differences, with its IQR and as % of the base median. *adapter alone* = "
        "`layer.proj.adapter(x, x)` forward, then backward from a fixed upstream gradient "
        "(T, d_out) plus the aux loss (router included), timed in the same rounds. It leaves out "
        "the (T, d_out) loss ops, which belong to the whole layer, and the `base + Δy` add, so "
        "(method − base) can exceed it.",
        "- FRAME uses learned orders (the default): the transforms of the factors run on every "
        "forward. MoE-LoRA and FRAME run all experts packed in two matmuls (rank E·r = 32 for "
        "MoE-LoRA, E·2r = 64 for FRAME, whose transformed experts are real rank-2r).",
        "- *peak step mem*: fresh subprocess per method, `MALLOC_MMAP_THRESHOLD_=65536` so freed "
        "blocks >= 64 KiB return to the OS; after one warm-up step and with grads set to None, "
        "the RSS high-water mark is reset (`/proc/self/clear_refs`), one step runs, and "
        "`VmHWM − VmRSS(before the step)` is reported (max of 2 steps): the extra memory a step "
        "needs on top of what is resident. *resident* = RSS after warm-up minus RSS after imports: "
        "base weight, input, adapter parameters and one-off caches (the exact FrFT basis).",
        "- Parameters: `fp.count_parameters` — trainable (adapter + router + orders) / active per "
        "token (k of E experts + router + orders).",
        "- Noise: the box is shared with other jobs (2 cores), so single timings vary by tens of "
        "percent; compare the IQRs and the paired ratios before reading small differences.",
        "",
        "## Results",
        "",
        *sections,
        "## Target",
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    if profiles:
        lines += ["## Profiles", "", *profiles]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    log(f"wrote {args.out}")
    print("\n".join(sections))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
