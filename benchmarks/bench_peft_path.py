"""FRAME and MoE-LoRA trained through PEFT's API against the same adapters from ``fp.inject``.

Issue 15 asks that the grouped-transform speed-up of FRAME keeps working when the model is built
with ``peft.get_peft_model(model, fp.to_peft_config(cfg))``. For each method, two models are built
on one shared SmolLM2 (float32, every Linear of q/k/v/o/gate/up/down adapted, the e2e benchmark's
configs): ``fp.inject`` (native) and ``peft.get_peft_model`` (PEFT), with the same seed, so their
adapters start equal. The page records:

- that the first training loss is the same on both paths (same maths);
- that FRAME's shared per-forward work ran on both paths (the forward record's scratch is filled
  by ``prepare_forward``: the grouped transforms);
- median step times over interleaved rounds (``bench_e2e.py``'s timing), and PEFT / native.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_peft_path.py`` (``--quick``: a tiny random Llama).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frame_peft as fp
from _common import command_line, machine_info, write_results
from _lm import load_model, method_config, shared_copy
from bench_e2e import Runner, make_batch, time_rounds
from frame_peft._files import write_text
from frame_peft._tables import markdown_table

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "e2e_peft_path.md"
METHODS = ["moe_lora", "frame_chirp"]


def build(base: torch.nn.Module, method: str, path: str) -> torch.nn.Module:
    import peft

    config = method_config(method, None)
    model = shared_copy(base)
    torch.manual_seed(0)
    if path == "native":
        return fp.inject(model, config)
    return peft.get_peft_model(model, fp.to_peft_config(config))


def first_step_facts(model: torch.nn.Module, batch: dict) -> dict:
    """The first training forward's loss and whether shared per-forward work (FRAME's grouped
    transforms) filled the routing record's scratch."""
    from frame_peft.core.inject import injection_owner, require_injection

    state = require_injection(model).state
    g = torch.Generator().manual_seed(3)  # move the zero-initialised B's the same way on both paths
    with torch.no_grad():
        for layer in fp.adapted_layers(model).values():
            for name, p in sorted(layer.adapter.named_parameters()):
                if name.split(".")[-1] == "B":
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
    model.train()
    seen: dict = {}
    inner = injection_owner(model)  # the transformers model (inside the PeftModel)
    handle = inner.register_forward_hook(lambda *_: seen.update(keys=sorted(state.current.scratch)))
    loss = model(**batch, use_cache=False).loss.item()  # with grad: shared work runs then only
    handle.remove()
    return {"loss": loss, "scratch_keys": len(seen.get("keys", []))}


def render(res: dict) -> str:
    rows = []
    for m in METHODS:
        nat, pe = res["times"][f"{m}/native"]["step"], res["times"][f"{m}/peft"]["step"]
        ratios = [p / n for p, n in zip(pe, nat, strict=True)]
        nf, pf = res["facts"][f"{m}/native"], res["facts"][f"{m}/peft"]
        rows.append([
            m, f"{statistics.median(nat):.0f}", f"{statistics.median(pe):.0f}",
            f"{statistics.median(ratios):.3f}",
            f"[{min(ratios):.3f}, {max(ratios):.3f}]",
            f"{nf['loss']:.6f}", f"{pf['loss']:.6f}",
            f"{nf['scratch_keys']} / {pf['scratch_keys']}",
        ])  # fmt: skip
    table = markdown_table(
        ["method", "native step ms", "PEFT step ms", "PEFT / native (median of paired rounds)",
         "paired range", "first loss, native", "first loss, PEFT",
         "shared-work entries native / PEFT"],
        rows,
    )  # fmt: skip
    verdicts = []
    for m in METHODS:
        nf, pf = res["facts"][f"{m}/native"], res["facts"][f"{m}/peft"]
        nat, pe = res["times"][f"{m}/native"]["step"], res["times"][f"{m}/peft"]["step"]
        ratio = statistics.median([p / n for p, n in zip(pe, nat, strict=True)])
        same_work = nf["scratch_keys"] == pf["scratch_keys"]
        verdicts.append(
            f"- {m}: first losses {'equal' if nf['loss'] == pf['loss'] else 'DIFFERENT'}; "
            f"shared per-forward work {'the same on both paths' if same_work else 'DIFFERS'} "
            f"({nf['scratch_keys']} entries); the PEFT path's step is {ratio:.3f} × native's."
        )
    return "\n".join(
        [
            "# FRAME through PEFT's API: same maths, same grouped transforms, same cost",
            "",
            f"Command: `{res['command']}`  ",
            f"Commit: `{res['commit']}`; model: {res['model']}; batch {res['batch']} × "
            f"{res['seq_len']} tokens; {res['warmup']} warm-up steps, {res['repeats']} interleaved "
            f"rounds; load average {res['load'][0]:.2f} → {res['load'][1]:.2f}; "
            f"{res['elapsed']:.0f} s. Machine: "
            + ", ".join(f"{k} {v}" for k, v in res["machine"].items())
            + ".",
            "",
            table,
            "",
            "Each method is built twice on one shared base with the same seed: `fp.inject(model, "
            "cfg)` and `peft.get_peft_model(model, fp.to_peft_config(cfg))`, and their B factors "
            "are moved off zero by the same seeded draw (0.02 · N(0, 1); hence the large loss). "
            "The first loss (a training-mode forward, routing loss included) compares the maths; "
            "the shared-work entries count what `prepare_forward` put in the "
            "forward record (FRAME's grouped factor transforms; MoE-LoRA has none); the step ratio "
            "is the median over rounds of PEFT's step over native's step in the same round.",
            "",
            "What this shows (from the numbers above):",
            "",
            *verdicts,
            "",
        ]
    )


def rerender(json_path: Path) -> None:
    """Rewrite the page from its JSON (after a change to the page's text only)."""
    import json

    res = json.loads(json_path.read_text())
    write_text(json_path.with_suffix(".md"), render(res))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    base, description = load_model(args.quick)
    batch = make_batch(base.config.vocab_size, args.batch, args.seq_len)
    models = {f"{m}/{p}": build(base, m, p) for m in METHODS for p in ("native", "peft")}
    facts = {k: first_step_facts(model, batch) for k, model in models.items()}
    log(f"first-step facts: {facts}")
    runners = {k: Runner(model, k) for k, model in models.items()}
    times = time_rounds(runners, batch, args.warmup, args.repeats, log)
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    res = {
        "command": command_line("bench_peft_path.py", argv), "commit": commit,
        "model": description, "batch": args.batch, "seq_len": args.seq_len,
        "warmup": args.warmup, "repeats": args.repeats, "facts": facts, "times": times,
        "load": [load_start[0], os.getloadavg()[0]], "elapsed": time.perf_counter() - started,
        "machine": machine_info(),
    }  # fmt: skip
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is None:
        print(render(res))
        return
    log(f"wrote {out} and {write_results(out, render(res), res)}")


if __name__ == "__main__":
    main()
