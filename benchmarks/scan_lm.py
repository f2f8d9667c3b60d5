"""FRAME's order scan on a real LM: which orders it picks, and what they are worth in held-out loss.

SmolLM2-135M-Instruct (offline asset), the quick-start task mix (ARC-Easy, BoolQ, PIQA and
reasoning-gym math, 160 training items each, the quick-start's seeded disjoint split), adapters
on ``--targets`` (default q_proj, v_proj, as in the quick start) with the quick start's budget
(E = 4, k = 2, r = 4; MoE-LoRA-2r: rank 8 per expert; LoRA rank 8), trained ``--steps`` steps of
4 items (AdamW lr 1e-3, order lr 1e-3, 5 warm-up steps, cosine) by ``frame_peft.training.Trainer``
for every method and seed, on the same data order per seed. Methods:

- ``moe-lora``, ``moe-lora-2r`` (FRAME's per-token FLOPs), ``lora``;
- ``frame-gradient`` (orders by the order optimizer only), ``frame-fixed`` (orders fixed at the
  spread init), ``frame-scan`` (the order scan at 10 % of the steps, FRAME's scan defaults),
  ``frame-scan-zero`` (every expert starts held at order 0, i.e. as MoE-LoRA, and the scan moves
  only those whose update fits 5 % better elsewhere);
- ``base``: the frozen model, no training (the reference of the loss);
- on request (``--methods``), ``frame-at-A``: every expert fixed at order A (0.05, 0.25, 0.5, 1),
  to check against the loss itself what the scan's statistic says about the orders;
  ``frame-scan-late``: the scan at 10 %, then rescans at 50 % and 90 % of the steps.

Metric: held-out **answer loss**, the mean cross-entropy per answer token of the quick start's
held-out items (ARC-Easy, BoolQ, PIQA: 32 each, GSM8K: 12; prompt tokens are not scored), per task
and over all answer tokens. Per (method, seed): training time, the scans' own time, and for FRAME
the final orders per module. Every cell is its own run directory
``<out-dir>/cells/<method>-seed<k>/`` with ``cell.json`` written last; a cell with that file is
skipped, so the study resumes after an interruption and can be completed in parts.

Output: ``<out-dir>.md`` (the page) + ``.json``: mean ± std over seeds of the held-out loss, the
paired difference to MoE-LoRA per seed, where the scan put the orders (per module kind and layer)
and what the scans cost.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scan_lm.py                    # SmolLM2, hours: resumable
    OMP_NUM_THREADS=1 python benchmarks/scan_lm.py --methods frame-scan --seeds 1   # one part
    OMP_NUM_THREADS=1 python benchmarks/scan_lm.py --quick            # tiny random Llama, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import frame_peft as fp
from _common import command_line, machine_info, wants_quick, write_results
from _layer_report import git_state
from frame_peft._files import write_json
from frame_peft._tables import markdown_table

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scan_lm"
METHODS = (
    "base", "lora", "moe-lora", "moe-lora-2r", "frame-gradient", "frame-fixed", "frame-scan",
    "frame-scan-zero",
)  # fmt: skip
#: Every expert fixed at one order (not in the default list): does the loss agree with the scan?
FIXED_AT = {f"frame-at-{a:g}": a for a in (0.05, 0.25, 0.5, 1.0)}
#: On request: the scan again later in training (does a domain appear once the experts learned?).
OPTIONAL = ("frame-scan-late",)
BUDGET = {"num_experts": 4, "top_k": 2, "rank": 4}


def adapter_config(method: str, targets: list[str]) -> fp.AdapterConfig | None:
    common = {"target_modules": targets, "dropout": 0.05}
    if method == "base":
        return None
    if method == "lora":
        return fp.LoRAConfig(**common, rank=8)
    if method == "moe-lora":
        return fp.MoELoRAConfig(**common, **BUDGET)
    if method == "moe-lora-2r":
        return fp.MoELoRAConfig(**common, **{**BUDGET, "rank": 2 * BUDGET["rank"]})
    if method in FIXED_AT:
        order = [FIXED_AT[method]] * BUDGET["num_experts"]
        return fp.FrameConfig(**common, **BUDGET, order_mode="fixed", init_orders=order)
    frame = {
        "frame-gradient": {"order_search": "gradient"},
        "frame-fixed": {"order_mode": "fixed"},
        "frame-scan": {"order_search": "scan"},
        "frame-scan-zero": {"order_search": "scan", "init_orders": "zeros"},
        "frame-scan-late": {"order_search": "scan", "scan_at": [0.1, 0.5, 0.9]},
    }[method]
    return fp.FrameConfig(**common, **BUDGET, **frame)


# data --------------------------------------------------------------------------------------------


def real_data(seed: int):
    """(train dataset, {task: eval items}, tokenizer, model factory) of the quick start."""
    from frame_peft.data import MultiTaskMixture, PadCollator, TaskVocabulary, encode_example
    from frame_peft.recipes.data_prep import prepare_data
    from frame_peft.recipes.schema import load_recipe
    from frame_peft.training import load_base_model

    recipe = load_recipe("quickstart")
    data = prepare_data(recipe)
    _, tok = load_base_model("smollm2", dtype="float32")
    vocab = TaskVocabulary(sorted({*data.train, *data.eval}))
    train = MultiTaskMixture(data.train, tok, recipe.data.max_length, weights="uniform",
                             seed=seed, vocab=vocab)  # fmt: skip
    evals = {t: [encode_example(tok, ex, 512, task_id=vocab.id(t)) for ex in items]
             for t, items in data.eval.items()}  # fmt: skip

    def model():
        return load_base_model("smollm2", dtype="float32")[0]

    return train, evals, PadCollator(tok.pad_token_id), model


def quick_data(seed: int):
    """A tiny random Llama and random token items (the pipeline check of ``--quick``)."""
    from _lm import tiny_llama
    from frame_peft.training import pad_collate

    g = torch.Generator().manual_seed(1234)

    def items(n: int, task: int) -> list[dict]:
        out = []
        for _ in range(n):
            ids = torch.randint(3, 256, (12,), generator=g).tolist()
            out.append({"input_ids": ids, "labels": [-100] * 6 + ids[6:], "task_id": task})
        return out

    train = items(64, 0)
    evals = {"task_a": items(8, 0), "task_b": items(8, 1)}
    return train, evals, pad_collate, tiny_llama


# one cell ---------------------------------------------------------------------------------------


@torch.no_grad()
def answer_losses(model, items: list[dict], collate, batch: int = 8) -> list[tuple[float, int]]:
    """Per item: (summed answer-token cross-entropy, answer tokens)."""
    from frame_peft.training.losses import lm_loss_sum

    model.eval()
    out = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        b = collate(chunk)
        with fp.routing_context(attention_mask=b["attention_mask"]):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        for j in range(len(chunk)):
            labels = b["labels"][j : j + 1]
            n = int((labels[:, 1:] != -100).sum())
            out.append((float(lm_loss_sum(logits[j : j + 1], labels)), n))
    return out


def run_cell(method: str, seed: int, args, cell_dir: Path) -> dict[str, Any]:
    from frame_peft.training import TrainConfig, Trainer

    train, evals, collate, make_model = (quick_data if args.quick else real_data)(seed)
    model = make_model()
    torch.manual_seed(seed)
    config = adapter_config(method, args.targets)
    train_seconds, scans = 0.0, []
    if config is not None:
        import shutil
        import tempfile

        fp.inject(model, config)
        run_dir = Path(tempfile.mkdtemp(prefix="scan_lm_"))  # checkpoints stay out of the repo
        cfg = TrainConfig(
            output_dir=str(run_dir), max_steps=args.steps, per_device_batch_size=4,
            lr=1e-3, order_lr=1e-3, warmup_steps=min(5, args.steps), schedule="cosine",
            save_every=args.steps, keep_checkpoints=1, progress=False, report_to="none",
            log_every=10, seed=seed,
        )  # fmt: skip
        t0 = time.perf_counter()
        Trainer(model, train, cfg, collate_fn=collate).train()
        train_seconds = time.perf_counter() - t0
        scan_file = run_dir / "scans.jsonl"
        if scan_file.exists():
            scans = [json.loads(line) for line in scan_file.read_text().splitlines()]
        cell_dir.mkdir(parents=True, exist_ok=True)
        for name in ("scans.jsonl", "log.jsonl"):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, cell_dir / name)
        shutil.rmtree(run_dir, ignore_errors=True)
    per_task = {}
    for task, items in evals.items():
        pairs = answer_losses(model, items, collate)
        per_task[task] = {
            "loss": sum(s for s, _ in pairs) / max(1, sum(n for _, n in pairs)),
            "items": [round(s / max(n, 1), 6) for s, n in pairs],
            "tokens": sum(n for _, n in pairs),
        }
    total_tokens = sum(v["tokens"] for v in per_task.values())
    overall = sum(v["loss"] * v["tokens"] for v in per_task.values()) / max(1, total_tokens)
    orders = {}
    if config is not None:
        orders = {n: [round(float(a), 6) for a in o] for n, o in fp.orders(model).items()}
    keys = ("step", "first", "num_jumps", "seconds_statistics", "seconds_search", "scale")
    scan_time = sum(s["seconds_statistics"] + s["seconds_search"] for s in scans)
    return {
        "method": method,
        "seed": seed,
        "steps": args.steps if config is not None else 0,
        "train_seconds": round(train_seconds, 1),
        "scan_seconds": round(scan_time, 1),
        "scans": [{k: s[k] for k in keys} for s in scans],
        "scan_orders": [
            {m["name"]: [e["order_after"] for e in m["experts"]] for m in s["modules"]}
            for s in scans
        ],
        "orders": orders,
        "heldout": {t: {k: v[k] for k in ("loss", "tokens", "items")} for t, v in per_task.items()},
        "heldout_overall": overall,
        "active_parameters": fp.count_parameters(model)["active_per_token"],
    }


# aggregate ---------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def aggregate(cells: list[dict]) -> dict[str, Any]:
    methods = list(dict.fromkeys(c["method"] for c in cells))
    tasks = list(cells[0]["heldout"])
    out: dict[str, Any] = {"methods": {}, "tasks": tasks}
    ref = {c["seed"]: c for c in cells if c["method"] == "moe-lora"}
    for m in methods:
        mine = [c for c in cells if c["method"] == m]
        entry: dict[str, Any] = {"seeds": [c["seed"] for c in mine],
                                 "active_parameters": mine[0]["active_parameters"]}  # fmt: skip
        for t in tasks:
            entry[t] = _mean_std([c["heldout"][t]["loss"] for c in mine])
        entry["overall"] = _mean_std([c["heldout_overall"] for c in mine])
        paired = [c["heldout_overall"] - ref[c["seed"]]["heldout_overall"]
                  for c in mine if c["seed"] in ref]  # fmt: skip
        entry["minus_moe_lora"] = _mean_std(paired) if paired else None
        entry["train_seconds"] = _mean_std([c["train_seconds"] for c in mine])
        entry["scan_seconds"] = _mean_std([c["scan_seconds"] for c in mine])
        if mine[0]["orders"]:
            flat = [a for c in mine for o in c["orders"].values() for a in o]
            entry["orders"] = {
                "at_zero": sum(a == 0.0 for a in flat) / len(flat),
                "mean": sum(flat) / len(flat),
                "by_kind": {k: _mean_std([a for c in mine for n, o in c["orders"].items()
                                          if _kind(n) == k for a in o])
                            for k in sorted({_kind(n) for n in mine[0]["orders"]})},
            }  # fmt: skip
        out["methods"][m] = entry
    out["scan_orders_by_layer"] = {}
    for m in (m for m in methods if m.startswith("frame-scan")):
        out["scan_orders_by_layer"][m] = _orders_by_layer([c for c in cells if c["method"] == m])
    return out


def _orders_by_layer(cells: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Where the scan put the orders, per layer and module kind (all seeds): [mean, share at 0]."""
    table: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        for name, orders in c["orders"].items():
            layer = next((p for p in name.split(".") if p.isdigit()), "-")
            table.setdefault(layer, {}).setdefault(_kind(name), []).extend(orders)

    def depth(item: tuple[str, dict]) -> int:
        return int(item[0]) if item[0].isdigit() else -1

    return {
        layer: {k: [sum(v) / len(v), sum(a == 0.0 for a in v) / len(v)] for k, v in kinds.items()}
        for layer, kinds in sorted(table.items(), key=depth)
    }


def scan_evidence(cell_dir: Path) -> list[dict[str, Any]] | None:
    """Per scan of a cell (from its ``scans.jsonl``): experts, how many have their best order
    more than 1/d from 0, and the mean and min of score(now) / score(best)."""
    path = cell_dir / "scans.jsonl"
    if not path.exists():
        return None
    out = []
    for line in path.read_text().splitlines():
        experts = [(e, m["width"]) for m in json.loads(line)["modules"] for e in m["experts"]]
        ratios = [e["score_before"] / e["score_best"] for e, _ in experts if e["score_best"] > 0]
        out.append({
            "experts": len(experts),
            "far": sum(min(e["best_order"], 2 - e["best_order"]) > 1 / w for e, w in experts),
            "ratio": (sum(ratios) / max(1, len(ratios)), min(ratios, default=float("nan"))),
        })  # fmt: skip
    return out


def _pm(ms: tuple[float, float] | None, digits: int = 3) -> str:
    return "–" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def render(agg: dict, cells: list[dict], args, model_desc: str, cmd: str) -> str:
    tasks = agg["tasks"]
    lines = [
        "# The order scan on a real LM (SmolLM2-135M, quick-start tasks)",
        "",
        f"Command: `{cmd}`  ",
        f"Model: {model_desc}; targets {', '.join(args.targets)}; {args.steps} steps of 4 items; "
        f"git {git_state(HERE.parent)}.  ",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in machine_info().items()) + "  ",
        "Cells: every `cells/<method>-seed<k>/cell.json` under the output folder, whichever "
        "invocation made it (the study runs in parts; each cell records its method and seed).",
        "",
        "Held-out answer loss (mean cross-entropy per answer token; lower is better), mean ± "
        "std over seeds; `- MoE-LoRA`: the paired difference per seed, mean ± std.",
        "",
        markdown_table(
            ["method", "active params", *tasks, "all", "- MoE-LoRA", "train s", "scans s"],
            [
                [m, e["active_parameters"], *[_pm(e[t]) for t in tasks], _pm(e["overall"]),
                 _pm(e["minus_moe_lora"]), f"{e['train_seconds'][0]:.0f}",
                 f"{e['scan_seconds'][0]:.0f}"]
                for m, e in agg["methods"].items()
            ],
        ),
    ]  # fmt: skip
    frames = {m: e for m, e in agg["methods"].items() if "orders" in e}
    if frames:
        rows = [
            [m, f"{e['orders']['at_zero']:.3f}", f"{e['orders']['mean']:.3f}",
             ", ".join(f"{k} {_pm(v)}" for k, v in e["orders"]["by_kind"].items())]
            for m, e in frames.items()
        ]  # fmt: skip
        headers = ["method", "share at exactly 0", "mean order", "mean ± std by module kind"]
        lines += ["", "## Final orders (all seeds)", "", markdown_table(headers, rows)]
    for m, by_layer in agg.get("scan_orders_by_layer", {}).items():
        kinds = sorted({k for v in by_layer.values() for k in v})
        spans: list[tuple[list[str], list[str]]] = []  # consecutive equal rows share one
        for layer, v in by_layer.items():
            cells_ = [f"{v[k][0]:.3f}; {v[k][1]:.2f}" if k in v else "–" for k in kinds]
            if spans and spans[-1][1] == cells_:
                spans[-1][0].append(layer)
            else:
                spans.append(([layer], cells_))
        rows = [
            [layers[0] if len(layers) == 1 else f"{layers[0]}–{layers[-1]}", *cells_]
            for layers, cells_ in spans
        ]
        lines += [
            "", f"## {m}: final orders per layer (mean order; share at exactly 0)", "",
            markdown_table(["layer", *kinds], rows),
        ]  # fmt: skip
    scan_cells = [c for c in cells if c["scans"]]
    if scan_cells:
        rows = []
        for c in scan_cells:
            evidence = scan_evidence(args.out_dir / "cells" / f"{c['method']}-seed{c['seed']}")
            for i, s in enumerate(c["scans"]):
                ev = evidence[i] if evidence and i < len(evidence) else None
                lam = "–" if s["scale"] is None else f"{s['scale']:.3g}"
                far, ratio = "–", "–"
                if ev is not None:
                    far = f"{ev['far']} of {ev['experts']}"
                    ratio = f"{ev['ratio'][0]:.3f} ({ev['ratio'][1]:.3f})"
                rows.append([
                    c["method"], c["seed"], s["step"], s["num_jumps"], far, ratio, lam,
                    f"{s['seconds_statistics']:.1f}", f"{s['seconds_search']:.1f}",
                ])  # fmt: skip
        headers = [
            "method", "seed", "step", "experts moved", "best ≠ 0", "now / best", "λ",
            "statistics s", "search s",
        ]  # fmt: skip
        lines += [
            "", "## Scans", "",
            "`best ≠ 0`: experts whose best order lies more than 1/d from 0; `now / best`: the "
            "fitted energy at the order the expert had before the scan over that at its best "
            "order, mean (min) over experts: how much of what the best order captures the "
            "current one does.", "",
            markdown_table(headers, rows),
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    quick = wants_quick(argv)
    if quick:
        args.steps = min(args.steps, 10)
        args.seeds = min(args.seeds, 2)
        if args.out_dir == DEFAULT_OUT:
            import tempfile

            args.out_dir = Path(tempfile.gettempdir()) / "frame-peft-bench" / "scan_lm"
    args.targets = [t for t in args.targets.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in (*METHODS, *FIXED_AT, *OPTIONAL)]
    if bad:
        parser.error(f"unknown methods {bad}; choose from {[*METHODS, *FIXED_AT, *OPTIONAL]}")
    cmd = command_line("scan_lm.py", argv)
    cells_dir = args.out_dir / "cells"
    for seed in range(args.seeds):
        for method in methods:
            if method == "base" and seed > 0:
                continue
            cell_dir = cells_dir / f"{method}-seed{seed}"
            done = cell_dir / "cell.json"
            if done.exists():
                print(f"[scan_lm] {method} seed {seed}: complete, skipped")
                continue
            t0 = time.perf_counter()
            cell = run_cell(method, seed, args, cell_dir)
            cell_dir.mkdir(parents=True, exist_ok=True)
            write_json(done, cell, indent=None)
            print(f"[scan_lm] {method} seed {seed}: held-out {cell['heldout_overall']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    cells = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*/cell.json"))]
    agg = aggregate(cells)
    desc = "tiny random Llama (--quick)" if quick else "SmolLM2-135M-Instruct, float32"
    page = render(agg, cells, args, desc, cmd)
    write_results(args.out_dir.with_suffix(".md"), page, {"command": cmd, "aggregate": agg,
                                                          "cells": cells})  # fmt: skip
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
