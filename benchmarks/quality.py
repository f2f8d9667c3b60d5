"""The benchmark of record (issue 17): does FRAME beat the baselines at matched active parameters,
on real tasks, by more than the noise?

Base: SmolLM2-135M-Instruct (offline asset, float32). Adapters on all seven Linears of every
block (q, k, v, o, gate, up, down). Budget: MoE-LoRA E = 8, k = 2, r = 4 (``benchmarks/_lm.py``);
LoRA at its active rank k·r = 8; ``moe-lora-2r`` = MoE-LoRA at rank 8 (FRAME's per-token FLOPs);
``frame`` = ``FrameConfig`` as shipped (learned orders, ``order_search="gradient"``);
``frame-fixed`` = orders fixed at the spread init; ``fouriermoe`` and the optional baselines
(``--methods``: hydralora, flylora, hmora, peft_dora, peft_fourierft) at the knob whose whole-model
active parameters per token are closest to MoE-LoRA's (``_lm.match_model_budgets``). ``base``:
the frozen model (reference row, one cell).

Data (``_quality_data.real_parts``): the quick start's mix (ARC-Easy, BoolQ, PIQA, reasoning-gym
math) plus ARC-Challenge for training; per task a **test** part (ARC-Easy/BoolQ/PIQA
``--test-items`` each, GSM8K ``--gsm8k-items``), a disjoint **val** part for the learning-rate
sweep, and training items from the rest; everything checked disjoint. Zero-shot
``Question: ...\\nAnswer:`` prompts.

Protocol: every method gets the same data order (the mixture seed = the cell's seed), the same
steps, and the same learning-rate sweep (``--lrs``, seed 0, picked by the mean over tasks of the
validation answer NLL; sweep cells never see test items). Then ``--seeds`` seeds at the chosen
learning rate. Metrics per test item: answer NLL per token (``frame_peft.evaluation.answer_nll``),
correctness (multiple choice by log-likelihood; GSM8K exact match by greedy generation);
intervals by ``frame_peft.evaluation.intervals`` (``_quality_report``).

Cells: ``(method, seed)`` test cells and ``(method, lr)`` sweep cells. Each trains in its own run
directory (``--runs-dir``/<method>/seed<k> or .../sweep-lr<lr>, gitignored) and writes one JSON
(per-item records, wall times, tokens/s, peak RSS) under ``--out-dir``/cells/ or /sweep/,
atomically and last: a cell whose JSON exists is skipped, so the benchmark resumes after an
interruption and runs in parts (``--only frame`` or ``--only frame/1``; ``--list`` shows the plan).

Budget. Measured on this machine (Xeon, 2 cores shared with other jobs; one process at
OMP_NUM_THREADS=1; E = 8 on the 7 Linears, batch 4, max_length 256; smoke cells ``--steps 8
--test-items 16 --gsm8k-items 4`` and ``--steps 2 --test-items 4``): training ~6 s per step for
MoE-LoRA and FRAME (~270 tokens per step), ~16 s for FourierMoE; evaluation ~0.55 s per
multiple-choice item (BoolQ's passages dominate) and ~2 s per GSM8K item (answer NLL + greedy
generation); peak RSS 3.6-4.9 GB per trained cell. With those numbers (``SECONDS``,
``STEP_FACTOR``; ``--list`` prints ``estimate_seconds`` for any settings):

* the plan of record (the defaults): 6 methods, 2 learning rates, 32 steps, 32 val items per
  task, the issue's 500 test items per multiple-choice task and 100 GSM8K items, 3 seeds:
  ≈ 27 900 one-core seconds, ≈ 3.9 h with two processes in parallel (``--only`` with disjoint
  method lists, e.g. ``--only base,lora,moe-lora,moe-lora-2r`` and
  ``--only frame,frame-fixed,fouriermoe``). It does not fit the issue's 2 h on 2 cores: run it
  in parts (cells resume). Measured cells so far agree (base cell: 918 s of evaluation for 1,500
  multiple-choice + 100 GSM8K items; sweep cells 180-290 s);
* a 2-hour variant, ``--test-items 128 --gsm8k-items 30`` (≈ 13 600 s of one core, ≈ 1.9 h on two
  cores, accuracy intervals about ±9 points): a different plan, whose cells are refused next to
  the record's (cells record their settings).

Usage::

    flock /tmp/heavy.lock env OMP_NUM_THREADS=1 python benchmarks/quality.py      # resumable
    OMP_NUM_THREADS=1 python benchmarks/quality.py --list
    OMP_NUM_THREADS=1 python benchmarks/quality.py --only frame/1                 # one cell
    OMP_NUM_THREADS=1 python benchmarks/quality.py --quick --out-dir /tmp/q       # seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import frame_peft as fp
from _common import command_line, machine_info, peak_rss_mb, reset_peak_rss, write_results
from _layer_report import git_state
from _quality_data import MC_TASKS, Parts, char_tokenizer, quick_parts, real_parts, tiny_text_llama
from _quality_report import aggregate, cells_fingerprint, plot, render
from frame_peft._files import write_json

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "quality"
DEFAULT_RUNS = HERE.parent / "runs" / "quality"
CORE = ("lora", "moe-lora", "moe-lora-2r", "frame", "frame-fixed", "fouriermoe")
OPTIONAL = ("hydralora", "flylora", "hmora", "peft_dora", "peft_fourierft")
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BUDGET = {"num_experts": 8, "top_k": 2, "rank": 4}


def method_config(name: str, model: torch.nn.Module, knobs: dict[str, int | None]):
    """The adapter config of ``name`` on ``LINEARS`` (``None`` for ``base``)."""
    common = {"target_modules": LINEARS, "dropout": 0.05}
    if name == "base":
        return None
    if name == "lora":
        return fp.LoRAConfig(**common, rank=BUDGET["top_k"] * BUDGET["rank"])
    if name == "moe-lora":
        return fp.MoELoRAConfig(**common, **BUDGET)
    if name == "moe-lora-2r":
        return fp.MoELoRAConfig(**common, **{**BUDGET, "rank": 2 * BUDGET["rank"]})
    if name == "frame":
        return fp.FrameConfig(**common, **BUDGET)
    if name == "frame-fixed":
        return fp.FrameConfig(**common, **BUDGET, order_mode="fixed")
    import dataclasses

    from _lm import method_config as lm_config

    config = lm_config(name, knobs[name])  # the e2e benchmark's matched knob, dropout 0 there
    if isinstance(config, fp.AdapterConfig) and hasattr(config, "dropout"):
        config = dataclasses.replace(config, dropout=common["dropout"])
    elif config is not None and "lora_dropout" in config.kwargs:  # PEFT LoRA / DoRA
        config = dataclasses.replace(config, kwargs={**config.kwargs, "lora_dropout": 0.05})
    return config


def knobs_for(model: torch.nn.Module, methods: list[str]) -> dict[str, int | None]:
    """Budget knobs of the matched methods: the knob whose whole-model active parameters per
    token (meta-device count) are closest to MoE-LoRA's E = 8, k = 2, r = 4 (``_lm``)."""
    matched = [m for m in methods if m in ("fouriermoe", *OPTIONAL)]
    if not matched:
        return {}
    from _layer_methods import METHODS, closest_knob
    from _lm import linear_shapes, match_model_budgets, meta_active
    from _lm import method_config as lm_config

    knobs, target = match_model_budgets(model, matched)
    shapes = linear_shapes(model)
    for name in matched:
        spec = METHODS[name]
        if knobs.get(name) is None and spec.knob is not None:
            hi = min(spec.limit(i, o) for i, o in shapes) if spec.limit else None

            def count(v: int, name: str = name) -> int:
                return meta_active(model.config, lm_config(name, v))

            knobs[name] = closest_knob(count, target, hi=hi)
    return knobs


def adapt(model: torch.nn.Module, config) -> torch.nn.Module:
    """``model`` with ``config``'s adapter (``_layer_methods.adapt``: inject or PEFT baseline)."""
    from _layer_methods import adapt as adapt_layer

    return adapt_layer(model, config)


# evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_items(model, tok, parts: dict, args, generate: bool) -> dict[str, Any]:
    """Per task: per-item answer NLL (nats/token) and correctness (``generate=False``: NLL only)."""
    from frame_peft.evaluation import (
        MATH_STOPS,
        extract_answer,
        generate_completions,
        math_equal,
        score_multiple_choice,
    )
    from frame_peft.evaluation.answer_nll import answer_nll, mc_answer_nll

    model.eval()
    out = {}
    for task, items in parts.items():
        if items[0].choices:
            mc = score_multiple_choice(model, tok, items, batch_size=args.eval_batch)
            nll = mc_answer_nll(tok, items, mc.predictions)
            correct = [bool(p["correct"]) for p in mc.predictions]
        else:
            nll = answer_nll(model, tok, items, batch_size=args.eval_batch)
            correct = [None] * len(items)
            if generate:
                texts = generate_completions(
                    model, tok, [ex.prompt for ex in items], max_new_tokens=args.max_new_tokens,
                    stop=MATH_STOPS, batch_size=args.eval_batch,
                )  # fmt: skip
                correct = [math_equal(extract_answer(t), ex.answer)
                           for t, ex in zip(texts, items, strict=True)]  # fmt: skip
        out[task] = {"items": [
            {"uid": ex.uid, "nll": round(n.per_token, 6), "tokens": n.tokens,
             "correct": None if c is None else float(c)}
            for ex, n, c in zip(items, nll, correct, strict=True)
        ]}  # fmt: skip
    return out


# one cell ---------------------------------------------------------------------------------------


def load(args) -> tuple[torch.nn.Module, Any]:
    if args.quick:
        return tiny_text_llama(), char_tokenizer()
    from frame_peft.training import load_base_model

    model, tok = load_base_model("smollm2", dtype="float32")
    return model.eval(), tok


def run_cell(method: str, seed: int, lr: float, parts: Parts, args, run_dir: Path,
             sweep: bool) -> dict[str, Any]:  # fmt: skip
    """Train ``method`` (seed, lr) in ``run_dir`` and score the val (sweep) or test items."""
    from frame_peft.data import MultiTaskMixture, PadCollator, TaskVocabulary
    from frame_peft.peft_bridge import count_parameters
    from frame_peft.training import TrainConfig, Trainer

    reset_peak_rss()
    model, tok = load(args)
    config = method_config(method, model, args.knobs)
    torch.manual_seed(seed)  # adapter init depends on the seed only
    model = adapt(model, config)
    train_s, tokens = 0.0, 0
    if config is not None:
        vocab = TaskVocabulary(sorted({*parts.train, *parts.test}))
        data = MultiTaskMixture(parts.train, tok, args.max_length, weights="uniform", seed=seed,
                                vocab=vocab)  # fmt: skip
        n = args.steps * args.batch
        tokens = sum(len(data[i % len(data)]["input_ids"]) for i in range(n))
        if run_dir.exists():  # an unfinished earlier attempt: its JSON was never written
            shutil.rmtree(run_dir)
        cfg = TrainConfig(
            output_dir=str(run_dir), max_steps=args.steps, per_device_batch_size=args.batch,
            lr=lr, order_lr=lr, warmup_steps=max(1, args.steps // 10), schedule="cosine",
            save_every=args.steps, keep_checkpoints=1, progress=False, report_to="none",
            log_every=max(1, args.steps // 10), seed=seed,
        )  # fmt: skip
        t0 = time.perf_counter()
        Trainer(model, data, cfg, collate_fn=PadCollator(tok.pad_token_id)).train()
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tasks = evaluate_items(model, tok, parts.val if sweep else parts.test, args, not sweep)
    eval_s = time.perf_counter() - t0
    counts = count_parameters(model) if config is not None else {"active_per_token": 0,
                                                                 "trainable": 0}  # fmt: skip
    return {
        "method": method, "seed": seed, "lr": lr if config is not None else None,
        "part": "val" if sweep else "test", "steps": args.steps if config is not None else 0,
        "parameters": {"active_per_token": int(counts["active_per_token"]),
                       "trainable": int(counts["trainable"]),
                       "config": _describe(config)},
        "cost": {"train_seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
                 "train_tokens": tokens,
                 "tokens_per_second": round(tokens / train_s, 1) if train_s else 0.0,
                 "peak_rss_mb": round(peak_rss_mb(), 1)},
        "settings": settings(args),
        "tasks": tasks,
    }  # fmt: skip


def _describe(config) -> str:
    if config is None:
        return "frozen"
    if isinstance(config, fp.AdapterConfig):
        keys = ("num_experts", "top_k", "rank", "order_mode", "order_search", "num_coefficients")
        parts = [f"{k}={getattr(config, k)}" for k in keys if hasattr(config, k)]
        return f"{config.method} " + " ".join(parts)
    return f"peft {config.method} " + " ".join(
        f"{k}={v}" for k, v in config.kwargs.items() if k != "target_modules"
    )


# plan -------------------------------------------------------------------------------------------


def sweep_path(args, method: str, lr: float) -> Path:
    return args.out_dir / "sweep" / f"{method}-lr{lr:g}.json"


def cell_path(args, method: str, seed: int) -> Path:
    return args.out_dir / "cells" / f"{method}-seed{seed}.json"


#: Measured per-unit costs (module docstring), seconds of one core.
SECONDS = {"step": 6.0, "setup": 10.0, "mc_item": 0.55, "gsm8k_item": 2.0, "nll_item": 0.3}
#: Step cost relative to MoE-LoRA's where a smoke cell measured it (FourierMoE: 16 s per step).
STEP_FACTOR = {"fouriermoe": 2.7}


def estimate_seconds(args, cells: list) -> float:
    """One-core seconds of ``cells`` by :data:`SECONDS` (the docstring's arithmetic)."""
    c, total = SECONDS, 0.0
    n_mc = len(MC_TASKS)
    for kind, method, *_ in cells:
        step = c["step"] * STEP_FACTOR.get(method, 1.0)
        train = 0.0 if method == "base" else args.steps * step + c["setup"]
        if kind == "sweep":
            total += train + args.val_items * (n_mc * c["mc_item"] + c["nll_item"])
        else:
            n = args.test_items * n_mc * c["mc_item"] + args.gsm8k_items * c["gsm8k_item"]
            total += train + n
    return total


def plan(args) -> list[tuple[str, str, int, float | None, Path]]:
    """Every cell in run order: ``(kind, method, seed, lr, json path)``; sweep cells first."""
    cells: list[tuple[str, str, int, float | None, Path]] = []
    for m in args.methods:
        if m != "base" and len(args.lrs) > 1:
            cells += [("sweep", m, 0, lr, sweep_path(args, m, lr)) for lr in args.lrs]
    cells.append(("test", "base", 0, None, cell_path(args, "base", 0)))
    for seed in range(args.seeds):
        cells += [("test", m, seed, None, cell_path(args, m, seed)) for m in args.methods
                  if m != "base"]  # fmt: skip
    if args.only:
        keep = []
        for item in args.only.split(","):
            name, _, seed = item.partition("/")
            keep += [c for c in cells if c[1] == name and (not seed or c[0] == "sweep"
                                                           or c[2] == int(seed))]  # fmt: skip
        cells = [c for c in cells if c in keep]
    return cells


def chosen_lr(args, method: str) -> float:
    """The sweep's learning rate with the lowest mean (over tasks) validation answer NLL."""
    if len(args.lrs) == 1:
        return args.lrs[0]
    scores = {}
    for lr in args.lrs:
        path = sweep_path(args, method, lr)
        if not path.exists():
            raise RuntimeError(f"sweep cell {path.name} is missing; run the sweep first")
        tasks = json.loads(path.read_text())["tasks"]
        scores[lr] = sum(
            sum(i["nll"] for i in t["items"]) / len(t["items"]) for t in tasks.values()
        ) / len(tasks)
    return min(scores, key=lambda lr: (scores[lr], lr))


def settings(args) -> dict[str, Any]:
    """What makes cells comparable: a cell made with other settings is never mixed in."""
    keys = ("quick", "steps", "batch", "lrs", "sizes", "max_length", "max_new_tokens")
    return {k: getattr(args, k) for k in keys}


def check_settings(args, path: Path) -> None:
    """Raise if the finished cell at ``path`` was made with other settings than ``args``'."""
    theirs = json.loads(path.read_text()).get("settings")
    if theirs != json.loads(json.dumps(settings(args))):
        raise SystemExit(
            f"{path} was made with other settings ({theirs}) than this run's "
            f"({settings(args)}); give another --out-dir (and --runs-dir), or the same settings"
        )


def run_plan(args, parts: Parts) -> None:
    for kind, method, seed, lr, path in plan(args):
        if path.exists():
            check_settings(args, path)
            print(f"[quality] {path.name}: complete, skipped")
            continue
        lr = lr if kind == "sweep" else chosen_lr(args, method) if method != "base" else 0.0
        sub = f"sweep-lr{lr:g}" if kind == "sweep" else f"seed{seed}"
        t0 = time.perf_counter()
        cell = run_cell(method, seed, lr, parts, args, args.runs_dir / method / sub,
                        kind == "sweep")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cell, indent=None)
        print(f"[quality] {path.name}: done in {time.perf_counter() - t0:.0f} s")


def report(args, cmd: str, model_desc: str, parts: Parts) -> str | None:
    """Aggregate every cell JSON under ``--out-dir``/cells (whichever run wrote it)."""
    cells = [json.loads(p.read_text()) for p in sorted((args.out_dir / "cells").glob("*.json"))]
    if not cells:
        return None
    for path in sorted((args.out_dir / "cells").glob("*.json")):
        check_settings(args, path)
    order = ["base", *CORE, *OPTIONAL]
    cells.sort(key=lambda c: (order.index(c["method"]), c["seed"]))
    agg = aggregate(cells, n_boot=args.n_boot)
    png = plot(agg, args.out_dir.with_suffix(".png"))
    meta = {
        "command": cmd, "commit": git_state(HERE.parent), "model": model_desc,
        "targets": LINEARS, "steps": args.steps, "batch": args.batch,
        "data": json.dumps(parts.sizes()), "machine": machine_info(),
        "plot": png.name if png else None, "seeds_planned": args.seeds,
        "fingerprint": cells_fingerprint(cells), "reading": str(args.out_dir / "reading.md"),
    }  # fmt: skip
    page = render(agg, meta)
    write_results(args.out_dir.with_suffix(".md"), page, {**meta, "aggregate": agg})
    return page


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(CORE),
                   help=f"comma list of {CORE + OPTIONAL}")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lrs", default="1e-3,3e-3")
    p.add_argument("--test-items", type=int, default=500, help="per multiple-choice task")
    p.add_argument("--gsm8k-items", type=int, default=100)
    p.add_argument("--val-items", type=int, default=32, help="per task, for the lr sweep")
    p.add_argument("--train-items", type=int, default=0, help="per MC task (0: all the rest)")
    p.add_argument("--math-train", type=int, default=400)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    p.add_argument("--only", default="", help="comma list of METHOD or METHOD/SEED")
    p.add_argument("--list", action="store_true", help="show the plan and which cells are done")
    p.add_argument("--quick", action="store_true", help="tiny random model, synthetic items")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in (*CORE, *OPTIONAL)]
    if bad:
        p.error(f"unknown methods {bad}; choose from {list(CORE + OPTIONAL)}")
    if args.quick:
        if args.out_dir == DEFAULT_OUT or args.runs_dir == DEFAULT_RUNS:
            p.error("--quick writes test numbers: give --out-dir and --runs-dir (a temp dir)")
        args.steps, args.eval_batch, args.max_new_tokens = min(args.steps, 6), 4, 6
    args.lrs = [float(v) for v in args.lrs.split(",") if v]
    for item in (i for i in args.only.split(",") if i):
        name, _, seed = item.partition("/")
        if name not in [*args.methods, "base"] or (seed and not seed.isdigit()):
            p.error(f"--only {item}: give METHOD or METHOD/SEED with METHOD among --methods")
    args.sizes = {"test": {**{t: args.test_items for t in MC_TASKS}, "gsm8k": args.gsm8k_items},
                  "val": args.val_items, "train": args.train_items,
                  "math_train": args.math_train}  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cmd = command_line("quality.py", argv)
    if args.list:
        for kind, method, seed, lr, path in plan(args):
            state = "done" if path.exists() else "todo"
            print(f"{state}  {kind:5}  {method:12} seed {seed}  lr {lr}  {path}")
        todo = [c for c in plan(args) if not c[4].exists()]
        print(
            f"estimate_seconds (one core, by SECONDS): all {estimate_seconds(args, plan(args)):.0f}"
            f", still to run {estimate_seconds(args, todo):.0f}"
        )
        return 0
    parts = quick_parts() if args.quick else real_parts(args.sizes)
    with torch.device("cpu"):
        args.knobs = knobs_for(load(args)[0], args.methods)
    run_plan(args, parts)
    desc = ("tiny random Llama + character tokenizer, synthetic items (--quick)" if args.quick
            else "SmolLM2-135M-Instruct (offline asset, float32)")  # fmt: skip
    page = report(args, cmd, desc, parts)
    if page:
        print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
