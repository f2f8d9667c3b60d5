"""End-to-end training steps on SmolLM2-135M: every method on all Linears, measured alternately.

Methods: PEFT LoRA (``fp.peft_baseline(model, "lora")``), our LoRA, MoE-LoRA, FRAME (chirp),
FourierMoE, FlyLoRA and HMoRA on q, k, v, o, gate, up and down of every block, budgets as in
``_lm.match_model_budgets`` (LoRA r = 8 = MoE-LoRA's active rank k·r; FourierMoE, FlyLoRA and
HMoRA matched on whole-model active parameters per token), plus the frozen base's forward and
backward (the embedding output requires grad, so the backward runs through every block, as under
an adapter) as the reference.

One step is what training does (``frame_peft.training.loop``): under ``fp.routing_context`` the
forward with labels (mean token cross-entropy) plus ``aux_loss`` (zero for PEFT), backward,
``fp.build_optimizer``'s step (AdamW, separate clips for weights and FRAME orders) and
``zero_grad``. Batch: ``--batch`` random token sequences of ``--seq-len`` tokens, no padding.
All models are built once on one shared frozen base (``_lm.shared_copy``), warmed up, then timed
round-robin with the start rotated each round; medians and IQRs of the rounds, steps/s and
tokens/s from the median step.

Peak RSS: one fresh subprocess (``MALLOC_MMAP_THRESHOLD_=65536``, so freed memory goes back to
the OS) loads the base, then builds each method alone (the previous one deleted), runs
``--warmup`` steps (the optimizer state exists after the first), resets the RSS high-water mark
and runs one more step: *peak RSS* is the process's high-water mark during that step (base model
+ this method + optimizer state + activations), *step extra* the part above the RSS before it,
*adapter + optimizer* the RSS the method added before its step.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_e2e.py           # SmolLM2, ~8 min
    OMP_NUM_THREADS=1 python benchmarks/bench_e2e.py --quick   # tiny random Llama, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

import frame_peft as fp
from _common import (
    command_line,
    machine_info,
    peak_rss_mb,
    quartiles,
    reset_peak_rss,
    rss_mb,
    run_memory_worker,
    wants_quick,
    write_results,
)
from _layer_methods import METHODS
from _layer_report import FRAME_VS_MOE, FRAME_VS_PEFT_LORA, LORA_VS_PEFT, git_state
from _lm import LINEARS, build_method, load_model, match_model_budgets
from frame_peft._tables import markdown_table
from frame_peft.peft_bridge import count_parameters

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "e2e.md"
NAMES = [
    "base", "peft_lora", "lora", "moe_lora", "frame_chirp", "frame_held0", "frame_held_half",
    "fouriermoe", "flylora", "hmora",
]  # fmt: skip
LABELS = {**{m: METHODS[m].label for m in NAMES}, "base": "base (frozen, fwd+bwd only)"}
# (name, numerator, denominator, threshold text, test on the ratio of median steps)
TARGETS = [
    ("FRAME <= 1.10 × MoE-LoRA", "frame_chirp", "moe_lora", "<= 1.10",
     lambda r: r <= FRAME_VS_MOE),
    ("FRAME <= 1.25 × PEFT LoRA (r = 8 = k·r, equal active rank)", "frame_chirp", "peft_lora",
     "<= 1.25", lambda r: r <= FRAME_VS_PEFT_LORA),
    ("our LoRA within 5 % of PEFT LoRA (both r = 8)", "lora", "peft_lora", "0.95 … 1.05",
     lambda r: abs(r - 1) <= LORA_VS_PEFT),
]  # fmt: skip


class Runner:
    """One method's model, optimizer (none for the base) and timed training step."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        self.model, self.name = model.train(), name
        if name == "base":
            self.opt = None
            model.enable_input_require_grads()  # backward through every block, as with adapters
        else:
            self.opt = fp.build_optimizer(model, lr=1e-4)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        """One training step: (fwd ms, fwd+bwd ms, whole step ms)."""
        t0 = time.perf_counter()
        with fp.routing_context(attention_mask=batch["attention_mask"]):
            out = self.model(**batch, use_cache=False)
        loss = out.loss  # with labels, frame-peft's outputs.loss already includes the aux loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t0) * 1e3, (t3 - t0) * 1e3


def make_batch(vocab: int, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (batch, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def time_rounds(runners: dict[str, Runner], batch: dict, warmup: int, repeats: int, log) -> dict:
    """``{method: {"fwd": [...], "fwd_bwd": [...], "step": [...]}}`` over interleaved rounds."""
    for name, r in runners.items():
        for _ in range(warmup):
            r.step(batch)
        log(f"  warmed up {name}")
    names = list(runners)
    out = {m: {"fwd": [], "fwd_bwd": [], "step": []} for m in names}
    for i in range(repeats):
        for m in names[i % len(names) :] + names[: i % len(names)]:
            for key, v in zip(out[m], runners[m].step(batch), strict=True):
                out[m][key].append(v)
        log(
            f"  round {i + 1}/{repeats}: "
            + " ".join(f"{m}={out[m]['step'][-1]:.0f}" for m in names)
        )
    return out


def memory_worker(job: dict) -> dict[str, dict[str, float]]:
    """``{method: {"peak_rss", "step_extra", "resident"}}`` MiB, each method built alone."""
    base, _ = load_model(job["quick"])
    batch = make_batch(base.config.vocab_size, job["batch"], job["seq_len"])
    out = {}
    for name, knob in job["knobs"].items():
        gc.collect()
        start = rss_mb()
        runner = Runner(build_method(base, name, knob), name)
        for _ in range(job["warmup"]):
            runner.step(batch)
        gc.collect()
        before = rss_mb()
        reset_peak_rss()
        runner.step(batch)
        peak = peak_rss_mb()
        out[name] = {"peak_rss": peak, "step_extra": peak - before, "resident": before - start}
        del runner
    return out


def measure_memory(job: dict, threads: int, log) -> dict:
    """Run :func:`memory_worker` in a fresh subprocess; ``{method: {...}}`` ({} on failure)."""
    return run_memory_worker(__file__, job, threads, log) or {}


def check_targets(times: dict) -> list[dict]:
    rows = []
    for name, num, den, thr, test in TARGETS:
        if num in times and den in times:
            a, b = times[num]["step"], times[den]["step"]
            ratio = quartiles(a)[1] / quartiles(b)[1]
            p = quartiles([x / y for x, y in zip(a, b, strict=True)])
            rows.append({
                "target": name, "measured": ratio, "threshold": thr, "pass": bool(test(ratio)),
                "paired": list(p), "fastest": min(a) / min(b),
            })  # fmt: skip
    return rows


def render(res: dict) -> str:
    tok = res["batch"] * res["seq_len"]
    moe = quartiles(res["times"]["moe_lora"]["step"])[1] if "moe_lora" in res["times"] else None
    headers = [
        "method", "config", "trainable", "active / token", "vs target", "fwd ms", "fwd+bwd ms",
        "step ms [IQR]", "steps/s", "tokens/s", "step × MoE-LoRA", "peak RSS MiB",
        "step extra MiB", "adapter + optimizer MiB",
    ]  # fmt: skip
    rows = []
    for m, t in res["times"].items():
        q1, md, q3 = quartiles(t["step"])
        c, mem = res["counts"][m], res["memory"].get(m)
        miss = c["active_per_token"] / res["target"] - 1
        miss = "—" if m == "base" else f"{100 * miss:+.1f} %"
        mem_cells = (
            [f"{mem['peak_rss']:.0f}", f"{mem['step_extra']:.0f}", f"{mem['resident']:.0f}"]
            if mem else ["—"] * 3
        )  # fmt: skip
        rows.append([
            LABELS[m], METHODS[m].describe(res["knobs"][m]), f"{c['trainable']:,}",
            f"{c['active_per_token']:,}", miss, f"{quartiles(t['fwd'])[1]:.0f}",
            f"{quartiles(t['fwd_bwd'])[1]:.0f}", f"{md:.0f} [{q1:.0f}, {q3:.0f}]",
            f"{1e3 / md:.3f}", f"{tok * 1e3 / md:.0f}", f"{md / moe:.3f}", *mem_cells,
        ])  # fmt: skip
    checks = [
        [c["target"], f"{c['measured']:.3f}", c["threshold"],
         "**PASS**" if c["pass"] else "**FAIL**",
         f"paired ratio median {c['paired'][1]:.3f} [IQR {c['paired'][0]:.3f}, "
         f"{c['paired'][2]:.3f}]; fastest rounds {c['fastest']:.3f}"]
        for c in res["targets"]
    ]  # fmt: skip
    load = "; ".join(f"{k}: " + ", ".join(f"{x:.2f}" for x in v) for k, v in res["load"].items())
    return "\n".join([
        "# End-to-end training steps: every method on all Linears of the model",
        "",
        "Generated by `benchmarks/bench_e2e.py` (do not edit by hand; rerun the command).",
        "", "## Command", "", f"```\n{res['command']}\n```", "",
        f"Model: {res['model']}. Batch {res['batch']} × {res['seq_len']} tokens ({tok} tokens "
        f"per step); adapters on {', '.join(LINEARS)}; {res['warmup']} warm-up step(s) per "
        f"method, then {res['repeats']} interleaved rounds. Wall time {res['elapsed'] / 60:.1f} "
        "min.",
        "", "## Machine", "", *[f"- {k}: {v}" for k, v in machine_info().items()],
        f"- load average (1, 5, 15 min) {load}", f"- code: git {git_state(HERE.parent)}",
        "", "## What is measured", "", __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
        "", f"Budget: MoE-LoRA E=8 k=2 r=4 has {res['target']:,} active parameters per token on "
        "this model (router included); *active / token* is each method's count "
        "(`count_parameters`).",
        "", "## Targets (whole optimizer step, ratio of medians)", "",
        markdown_table(["target", "measured", "threshold", "verdict", "detail"], checks,
                       align="lr"),
        "", "## Results", "", markdown_table(headers, rows, align="llrrrrrrrrrrrr"), "",
    ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method (>= 1)")
    ap.add_argument("--repeats", type=int, default=6, help="timed interleaved rounds")
    ap.add_argument("--methods", nargs="+", default=NAMES, choices=NAMES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocess")
    ap.add_argument(
        "--quick", action="store_true", help="tiny random Llama, batch 2 × 32, 3 rounds"
    )
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (+ .json)")
    ap.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    if wants_quick(argv):  # presets; explicit flags win
        ap.set_defaults(batch=2, seq_len=32, warmup=1, repeats=3)
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.repeats < 1:
        ap.error("--warmup and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    torch.set_num_threads(args.threads)
    command = command_line("bench_e2e.py", argv)
    load_start, started = os.getloadavg(), time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    base, description = load_model(args.quick)
    names = [m for m in NAMES if m in args.methods]
    knobs, target = match_model_budgets(base, names)
    log(f"{description}; target {target:,} active/token; knobs {knobs}")
    runners = {m: Runner(build_method(base, m, knobs[m]), m) for m in names}
    counts = {
        m: count_parameters(r.model) if m != "base" else {"trainable": 0, "active_per_token": 0}
        for m, r in runners.items()
    }
    batch = make_batch(base.config.vocab_size, args.batch, args.seq_len)
    times = time_rounds(runners, batch, args.warmup, args.repeats, log)
    runners.clear()
    gc.collect()
    memory = {}
    if not args.no_memory:
        job = {"quick": args.quick, "batch": args.batch, "seq_len": args.seq_len}
        memory = measure_memory({**job, "knobs": knobs, "warmup": args.warmup}, args.threads, log)
    res = {
        "command": command, "model": description, "batch": args.batch, "seq_len": args.seq_len,
        "warmup": args.warmup, "repeats": args.repeats, "target": target, "knobs": knobs,
        "counts": counts, "times": times, "memory": memory, "targets": check_targets(times),
        "load": {"start": load_start, "end": os.getloadavg()},
        "elapsed": time.perf_counter() - started,
    }  # fmt: skip
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is None:
        print(render(res))
        return
    log(f"wrote {out} and {write_results(out, render(res), res)}")


if __name__ == "__main__":
    main()
