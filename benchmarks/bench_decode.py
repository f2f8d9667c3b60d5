"""Decoding with FRAME: the inference factor cache against recomputing the factors every token.

FRAME transforms its factors (``Ã = A·T_a``, ``B̃ = T_a^H·B``) once per forward, at a cost
independent of the number of tokens; in one-token decoding that cost is paid per token. With
gradients off, ``FrameAdapter._moving_factors`` caches the transformed factors until a parameter
changes (``src/frame_peft/methods/frame/layer.py``). Measured:

1. One FRAME layer (``--dims``, default d = 576 (SmolLM2) and 4096; E = 8, k = 2, r = 4, chirp),
   one-token forwards ``x`` (1, 1, d): the frozen base, MoE-LoRA, FRAME *cached*
   (``torch.no_grad()``), FRAME *recomputed* (``no_grad`` with the cache bypassed: each adapter's
   ``_moving_factors`` replaced by its uncached ``_transformed_factors``, the only difference from
   *cached*) and FRAME under ``torch.enable_grad()`` with an ``x`` that does not require grad (the
   path of a model left in grad mode: factors recomputed and the autograd graph recorded). Each
   time is the mean of ``--inner`` calls; rounds interleaved; medians and IQRs.
2. ``generate`` (greedy, exactly ``--new-tokens`` new tokens after a ``--prompt``-token random
   prompt, KV cache on) on SmolLM2-135M (quick: a tiny random Llama) with FRAME on all seven
   Linears of every block: cached vs recomputed, and the base model; tokens/s.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py           # ~3 min
    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py --quick   # < 30 s
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from _common import command_line, int_list, machine_info, quartiles, wants_quick, write_results
from _layer_methods import METHODS, build
from _layer_report import git_state
from _lm import build_method, load_model
from bench_layers import shared_weight
from frame_peft._tables import markdown_table
from frame_peft.methods.frame.layer import FrameAdapter

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "decode.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "frame-peft-bench" / "decode.md"


@contextlib.contextmanager
def factor_cache_bypassed(model: nn.Module) -> Iterator[None]:
    """Inside the block every FRAME adapter of ``model`` recomputes its factors on each call."""
    adapters = [m for m in model.modules() if isinstance(m, FrameAdapter)]
    for a in adapters:
        a._moving_factors = a._transformed_factors  # instance attribute shadows the method
    try:
        yield
    finally:
        for a in adapters:
            del a._moving_factors
            a._factor_cache = None


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """``{name: [value per round]}``; the start rotates each round."""
    names, out = list(fns), {n: [] for n in fns}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(fns[n]())
    return out


def layer_variants(d: int, inner: int) -> tuple[dict[str, Callable[[], float]], float]:
    """Timers (mean µs per one-token call) and max |cached − recomputed| of the outputs."""
    weight = shared_weight(d, d)
    torch.manual_seed(0)
    base = build(None, d, d, weight)
    moe = build(METHODS["moe_lora"].make(None), d, d, weight)
    frame = build(METHODS["frame_chirp"].make(None), d, d, weight)
    with torch.no_grad():  # non-zero B so the outputs compare something
        for p in frame.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    x = torch.randn(1, 1, d)

    def timer(model: nn.Module, mode: Callable[[], contextlib.AbstractContextManager]):
        def run() -> float:
            with mode():
                model(x)  # warm: the first cached call fills the cache
                t0 = time.perf_counter()
                for _ in range(inner):
                    model(x)
                return (time.perf_counter() - t0) / inner * 1e6

        return run

    def bypass() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(factor_cache_bypassed(frame))
        return stack

    with torch.no_grad():
        cached = frame(x)
    with bypass():
        fresh = frame(x)
    fns = {
        "base": timer(base, torch.no_grad),
        "moe_lora": timer(moe, torch.no_grad),
        "frame_cached": timer(frame, torch.no_grad),
        "frame_recomputed": timer(frame, bypass),
        "frame_enable_grad": timer(frame, torch.enable_grad),
    }
    return fns, float((cached - fresh).abs().max())


def generate_variants(quick: bool, prompt: int, new: int) -> tuple[dict, str]:
    base, description = load_model(quick)
    frame = build_method(base, "frame_chirp", None).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, base.config.vocab_size, (1, prompt), generator=g)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    def timer(model: nn.Module, bypass: bool) -> Callable[[], float]:
        def run() -> float:
            ctx = factor_cache_bypassed(model) if bypass else contextlib.nullcontext()
            with ctx:
                t0 = time.perf_counter()
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
                dt = time.perf_counter() - t0
            assert out.shape[1] == prompt + new, out.shape
            return new / dt

        return run

    fns = {"base": timer(base, False), "frame_cached": timer(frame, False),
           "frame_recomputed": timer(frame, True)}  # fmt: skip
    return fns, description


LABELS = {
    "base": "base (frozen)",
    "moe_lora": "MoE-LoRA (E=8 k=2 r=4)",
    "frame_cached": "FRAME, factor cache (no_grad)",
    "frame_recomputed": "FRAME, factors recomputed (no_grad, cache bypassed)",
    "frame_enable_grad": "FRAME under enable_grad (x without grad)",
}


def render(res: dict) -> str:
    lines = [
        "# Decoding: FRAME's inference factor cache", "",
        "Generated by `benchmarks/bench_decode.py` (do not edit by hand; rerun the command).",
        "", "## Command", "", f"```\n{res['command']}\n```", "",
        f"Wall time {res['elapsed'] / 60:.1f} min; {res['rounds']} interleaved rounds.",
        "", "## Machine", "", *[f"- {k}: {v}" for k, v in machine_info().items()],
        f"- code: git {git_state(HERE.parent)}",
        "", "## What is measured", "", __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
        "", "## One layer, one-token forwards", "",
    ]  # fmt: skip
    for d, r in res["layers"].items():
        cached = quartiles(r["times"]["frame_cached"])[1]
        base = quartiles(r["times"]["base"])[1]
        rows = []
        for name, ts in r["times"].items():
            q1, md, q3 = quartiles(ts)
            rows.append(
                [LABELS[name], f"{md:.1f} [{q1:.1f}, {q3:.1f}]", f"{md / base:.2f}",
                 f"{md / cached:.2f}"]
            )  # fmt: skip
        lines += [
            f"### d = {d} ({r['inner']} calls per timing; max |cached − recomputed| output "
            f"difference {r['max_diff']:.2e})", "",
            markdown_table(["variant", "µs per token [IQR]", "× base", "× FRAME cached"], rows,
                           align="lrrr"),
            "",
        ]  # fmt: skip
    gen = res["generate"]
    cached = quartiles(gen["tokens_per_s"]["frame_cached"])[1]
    rows = []
    for name, ts in gen["tokens_per_s"].items():
        q1, md, q3 = quartiles(ts)
        rows.append([LABELS[name], f"{md:.1f} [{q1:.1f}, {q3:.1f}]", f"{md / cached:.2f}"])
    lines += [
        f"## generate: {gen['model']}", "",
        f"Greedy, prompt {gen['prompt']} tokens, exactly {gen['new']} new tokens, batch 1.", "",
        markdown_table(["variant", "tokens/s [IQR]", "× FRAME cached"], rows, align="lrr"),
    ]  # fmt: skip
    return "\n".join([*lines, ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int_list, default=[576, 4096])
    ap.add_argument("--inner", type=int_list, default=[200, 20], help="calls per timing, per d")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="d = 64, 256; tiny model; 3 rounds")
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (+ .json)")
    if wants_quick(argv):  # presets; explicit flags win
        ap.set_defaults(dims=[64, 256], inner=[20], rounds=3, prompt=8, new_tokens=8)
    args = ap.parse_args(argv)
    if len(args.inner) == 1:
        args.inner = args.inner * len(args.dims)
    if len(args.inner) != len(args.dims):
        ap.error("--inner takes one value, or one per --dims value")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("bench_decode.py", argv)
    started = time.perf_counter()
    layers = {}
    for d, inner in zip(args.dims, args.inner, strict=True):
        fns, diff = layer_variants(d, inner)
        layers[d] = {"inner": inner, "max_diff": diff, "times": interleaved(fns, args.rounds)}
        print(f"d={d}: " + ", ".join(
            f"{k}={quartiles(v)[1]:.1f}us" for k, v in layers[d]["times"].items()
        ), flush=True)  # fmt: skip
    fns, description = generate_variants(args.quick, args.prompt, args.new_tokens)
    for fn in fns.values():
        fn()  # warm-up
    tps = interleaved(fns, args.rounds)
    print("generate: " + ", ".join(f"{k}={quartiles(v)[1]:.1f} tok/s" for k, v in tps.items()))
    res = {
        "command": command.rstrip(), "rounds": args.rounds, "layers": layers,
        "generate": {"model": description, "prompt": args.prompt, "new": args.new_tokens,
                     "tokens_per_s": tps},
        "elapsed": time.perf_counter() - started,
    }  # fmt: skip
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    print(f"wrote {out} and {write_results(out, render(res), res)}")


if __name__ == "__main__":
    main()
