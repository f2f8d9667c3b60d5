"""Where a FRAME training step's time goes on SmolLM2-135M, and what the grouped transforms save.

FRAME (E = 8, k = 2, r = 4, chirp) and MoE-LoRA on all seven Linears of every block, the step of
``bench_e2e`` (forward with labels + aux loss, backward, optimizer step), one thread:

1. **Step time**: FRAME and MoE-LoRA alternately, medians of ``--repeats``, and an ablation:
   FRAME with its factors fixed (the same rank-2r real factors as leaves that get gradients, no
   transforms), which splits FRAME's extra time into the rank-2r mixture and the transforms.
2. **The factor transforms alone**, forward + backward against fixed random output gradients:
   *grouped* (``grouped_factors`` over all layers: what a training forward runs) and *per layer*
   with ``reference_factors`` (forward transform on A, adjoint on B, two calls per layer: the
   path before grouping). Their difference is what grouping saves per step.
3. **Profile**: the top operators by self CPU time of one FRAME step (``torch.profiler``), so
   the remaining cost can be read off.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py           # SmolLM2, ~2 min
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --quick   # tiny random Llama, seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import frame_peft as fp
from _common import command_line, machine_info, quartiles, write_results
from _layer_report import git_state
from _lm import build_method, load_model
from bench_e2e import Runner, make_batch
from frame_peft._tables import markdown_table
from frame_peft.methods.frame.factors import grouped_factors

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "profile.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "frame-peft-bench" / "profile.md"


def fix_factors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Ablation: every FRAME layer returns fixed copies of its current factors (leaves that
    get gradients) instead of transforming; returns the leaves, whose grads the caller clears."""
    leaves = []
    for layer in fp.adapted_layers(model).values():
        ad = layer.adapter
        a, b = (t.detach().clone().requires_grad_() for t in ad.reference_factors())
        ad._moving_factors = lambda a=a, b=b: (a, b)  # instance attributes shadow the methods
        ad._groupable = lambda: False
        leaves += [a, b]
    return leaves


def time_transforms(model: torch.nn.Module, repeats: int) -> dict[str, list[float]]:
    """ms per forward + backward of all layers' factor transforms, grouped and per layer."""
    adapters = [layer.adapter for layer in fp.adapted_layers(model).values()]
    gen = torch.Generator().manual_seed(0)
    grads = {
        ad.name: [torch.randn(t.shape, generator=gen) for t in ad.reference_factors()]
        for ad in adapters
    }

    def run(grouped: bool) -> float:
        t0 = time.perf_counter()
        if grouped:
            factors = grouped_factors(adapters)
        else:
            factors = {ad.name: ad.reference_factors() for ad in adapters}
        outs = [t for name in factors for t in factors[name]]
        torch.autograd.backward(outs, [g for name in factors for g in grads[name]])
        model.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) * 1e3

    out: dict[str, list[float]] = {"grouped": [], "per_layer": []}
    run(True), run(False)  # warm-up
    for _ in range(repeats):
        for key in out:
            out[key].append(run(key == "grouped"))
    return out


def profile_table(runner: Runner, batch: dict, rows: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def render(res: dict) -> str:
    steps = {m: quartiles(v)[1] for m, v in res["steps"].items()}
    tr = {k: quartiles(v)[1] for k, v in res["transforms"].items()}
    lines = [
        "# One FRAME training step, profiled",
        "",
        f"Command: `{res['command']}`  ",
        f"Model: {res['model']}; batch {res['batch']} × {res['seq_len']} tokens; "
        f"{res['repeats']} repeats; {res['elapsed']:.0f} s; {res['git']}",
        "",
        "## Step time (median ms)",
        "",
        markdown_table(
            [
                "MoE-LoRA",
                "FRAME",
                "FRAME / MoE-LoRA",
                "FRAME − MoE-LoRA",
                "FRAME, factors fixed (no transforms)",
            ],
            [
                [
                    f"{steps['moe_lora']:.0f}",
                    f"{steps['frame_chirp']:.0f}",
                    f"{steps['frame_chirp'] / steps['moe_lora']:.3f}",
                    f"{steps['frame_chirp'] - steps['moe_lora']:.0f}",
                    f"{steps['frame_fixed']:.0f}",
                ]
            ],
        ),
        "",
        "Of FRAME's extra time over MoE-LoRA, the rank-2r mixture (real and imaginary parts) "
        f"accounts for about {steps['frame_fixed'] - steps['moe_lora']:.0f} ms "
        "(factors fixed − MoE-LoRA) and the transforms with their backward for about "
        f"{steps['frame_chirp'] - steps['frame_fixed']:.0f} ms (FRAME − factors fixed).",
        "",
        "## FRAME's factor transforms alone, forward + backward (median ms per step)",
        "",
        markdown_table(
            ["grouped (training path)", "per layer, reference path", "saved by grouping"],
            [
                [
                    f"{tr['grouped']:.0f}",
                    f"{tr['per_layer']:.0f}",
                    f"{tr['per_layer'] - tr['grouped']:.0f}",
                ]
            ],
        ),
        "",
        f"{res['num_layers']} adapted Linears; grouped: one transform call per row group "
        "(same length, rank, dtype; at most 2^19 elements per call).",
        "",
        "## Top operators of one FRAME step (self CPU time, under the profiler)",
        "",
        markdown_table(
            ["operator", "self ms", "share", "calls"],
            [
                [f"`{r['op']}`", f"{r['self_ms']:.1f}", f"{100 * r['share']:.1f} %", r["calls"]]
                for r in res["profile"]
            ],
        ),
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine_info().items()],
        f"- load average (1, 5, 15 min) at start: {res['load']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, seconds")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=20, help="operators in the profile table")
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (+ .json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()
    base, description = load_model(args.quick)
    batch = make_batch(base.config.vocab_size, args.batch, args.seq_len)
    runners = {m: Runner(build_method(base, m, None), m) for m in ("moe_lora", "frame_chirp")}
    runners["frame_fixed"] = Runner(build_method(base, "frame_chirp", None), "frame_fixed")
    leaves = fix_factors(runners["frame_fixed"].model)
    steps: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(2 + args.repeats):  # two warm-up rounds
        for m, r in runners.items():
            steps[m].append(r.step(batch)[2])
            for leaf in leaves:
                leaf.grad = None
    steps = {m: v[2:] for m, v in steps.items()}
    frame = runners["frame_chirp"].model
    res = {
        "command": command_line("profile_step.py", argv), "model": description,
        "batch": args.batch, "seq_len": args.seq_len, "repeats": args.repeats, "steps": steps,
        "transforms": time_transforms(frame, args.repeats),
        "num_layers": len(fp.adapted_layers(frame)),
        "profile": profile_table(runners["frame_chirp"], batch, args.rows),
        "load": tuple(round(x, 2) for x in load), "git": git_state(HERE.parent),
    }  # fmt: skip
    res["elapsed"] = time.perf_counter() - started
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    page = render(res)
    write_results(out, page, res)
    print(page)


if __name__ == "__main__":
    main()
