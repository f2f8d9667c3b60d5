"""Aggregate, page and plot of the benchmark of record (``quality.py``), from its cell JSONs.

Every number is recomputed from the per-item records of the cells, so intervals can be redone
with other settings: per (method, task) the answer NLL (nats per answer token, mean over items)
and accuracy / exact match, each as

* per seed: mean over items with its 95 % percentile-bootstrap interval over items;
* over seeds: mean ± sample std (and min, max) of the per-seed means;
* pooled: items averaged over seeds, bootstrap over items;
* paired to MoE-LoRA (and to the frozen base): per item and seed ``method - moe-lora`` on the
  same items for the seeds both have, with a two-level bootstrap over seeds and items
  (:func:`~frame_peft.evaluation.intervals.seeds_and_items`); significant when that interval
  excludes 0. The item-only interval of the seed-averaged differences is kept in the JSON
  (``minus_<ref>_items``): it ignores how much a rerun moves the difference.

The page's "What this shows" is a short reading written by hand from the numbers
(``quality/reading.md``), tied to the cells it was written from by their fingerprint: when the
cells change, the page says that the reading is stale. Beneath it, a verdict table and one
generated sentence per paired difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from frame_peft._tables import markdown_table
from frame_peft.analysis.plotting import save_figure
from frame_peft.evaluation.intervals import (
    bootstrap_ci,
    paired_difference,
    pooled_over_seeds,
    seed_summary,
    seeds_and_items,
)

REFERENCE = "moe-lora"
METRICS = ("nll", "correct")  # per-item keys in a cell's records


def _per_item(cell: dict, task: str, metric: str) -> list[float]:
    return [float(item[metric]) for item in cell["tasks"][task]["items"]]


def _paired(
    by: dict, m: str, ref: str, seeds: list[int], task: str, metric: str, n_boot: int
) -> tuple[dict, dict, list[int]] | None:
    """``method - ref`` per item for the seeds both have (the frozen ``base`` has one cell,
    seed 0, and pairs with every seed): the two-level (seeds × items) interval, the item-only
    interval of the seed-averaged differences, and the seeds used."""
    if m in (ref, "base"):
        return None
    shared = [s for s in seeds if (ref, 0 if ref == "base" else s) in by]
    if not shared:
        return None
    diffs = [
        [a - b for a, b in zip(_per_item(by[(m, s)], task, metric),
                               _per_item(by[(ref, 0 if ref == "base" else s)], task, metric),
                               strict=True)]
        for s in shared
    ]  # fmt: skip
    mean_diff = [sum(col) / len(col) for col in zip(*diffs, strict=True)]
    zero = [0.0] * len(mean_diff)
    items_only = paired_difference(mean_diff, zero, n_boot=n_boot).to_dict()
    return seeds_and_items(diffs, n_boot=n_boot).to_dict(), items_only, shared


def aggregate(cells: list[dict], n_boot: int = 2000) -> dict[str, Any]:
    """``{"methods": {m: {task: {metric: {...}}}}, "tasks": [...]}`` (module docstring)."""
    methods = list(dict.fromkeys(c["method"] for c in cells))
    tasks = list(cells[0]["tasks"])
    by = {(c["method"], c["seed"]): c for c in cells}
    out: dict[str, Any] = {"tasks": tasks, "methods": {}}
    for m in methods:
        seeds = sorted(s for (mm, s) in by if mm == m)
        entry: dict[str, Any] = {"seeds": seeds, "lr": by[(m, seeds[0])].get("lr")}
        for t in tasks:
            entry[t] = {}
            for metric in METRICS:
                rows = [_per_item(by[(m, s)], t, metric) for s in seeds]
                per_seed = [bootstrap_ci(r, n_boot=n_boot, seed=0).to_dict() for r in rows]
                res = {
                    "per_seed": per_seed,
                    "seeds": seed_summary([p["estimate"] for p in per_seed]).to_dict(),
                    "pooled": pooled_over_seeds(rows, n_boot=n_boot).to_dict(),
                }
                for ref in (REFERENCE, "base"):
                    paired = _paired(by, m, ref, seeds, t, metric, n_boot)
                    if paired is not None:
                        (res[f"minus_{ref}"], res[f"minus_{ref}_items"],
                         res[f"minus_{ref}_seeds"]) = paired  # fmt: skip
                entry[t][metric] = res
        keys = ("train_seconds", "eval_seconds", "tokens_per_second", "peak_rss_mb")
        entry["cost"] = {k: seed_summary([by[(m, s)]["cost"][k] for s in seeds]).mean
                         for k in keys}  # fmt: skip
        entry["parameters"] = by[(m, seeds[0])]["parameters"]
        out["methods"][m] = entry
    out["frame_vs"] = _frame_vs(by, tasks, n_boot)
    return out


FLAGSHIP = "frame"
CONTROLS = ("moe-lora", "moe-lora-2r", "frame-fixed", "lora", "fouriermoe")


def _frame_vs(by: dict, tasks: list[str], n_boot: int) -> dict[str, Any]:
    """``frame - control`` per task and metric for every control with cells (seeds × items)."""
    seeds = sorted(s for (m, s) in by if m == FLAGSHIP)
    out: dict[str, Any] = {}
    for ref in CONTROLS:
        if not any(m == ref for (m, _) in by):
            continue
        per_task = {}
        for t in tasks:
            per_task[t] = {}
            for metric in METRICS:
                paired = _paired(by, FLAGSHIP, ref, seeds, t, metric, n_boot)
                if paired is not None:
                    per_task[t][metric] = {**paired[0], "seeds": paired[2]}
        if all(per_task[t] for t in tasks):
            out[ref] = per_task
    return out


def frame_table(agg: dict) -> str:
    """Controls × tasks: FRAME minus each control, with the verdict for FRAME."""
    rows = []
    for ref, per_task in agg.get("frame_vs", {}).items():
        row = [f"frame − {ref} ({len(per_task[agg['tasks'][0]]['nll']['seeds'])} seeds)"]
        rows.append(row + [_verdict_cell(per_task[t]) for t in agg["tasks"]])
    return markdown_table(["FRAME against", *agg["tasks"]], rows) if rows else ""


def _ci(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    return (f"{d['estimate'] * scale:.{digits}f} [{d['low'] * scale:.{digits}f}, "
            f"{d['high'] * scale:.{digits}f}]")  # fmt: skip


def _seeds(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def _word(d: dict, metric: str) -> str:
    """'better', 'worse' (the interval excludes 0; lower NLL / higher accuracy is better) or
    'n.s.'."""
    if not (d["low"] > 0 or d["high"] < 0):
        return "n.s."
    return "better" if (d["estimate"] < 0) == (metric == "nll") else "worse"


def _verdict_cell(paired: dict) -> str:
    """``{"nll": interval, "correct": interval}`` of one task -> 'NLL +0.087 worse; acc ...'."""
    return "; ".join(
        f"{label} {paired[metric]['estimate'] * scale:+.3f} {_word(paired[metric], metric)}"
        for metric, scale, label in (("nll", 1.0, "NLL"), ("correct", 100.0, "acc"))
    )


def _verdict(d: dict, metric: str, ref: str) -> str:
    word = _word(d, metric)
    if word == "n.s.":
        return f"no significant difference from {ref}"
    return f"significantly {'lower' if d['estimate'] < 0 else 'higher'} ({word}) than {ref}"


def findings(agg: dict) -> list[str]:
    """One generated sentence per (method, task, metric) paired difference to MoE-LoRA and to
    the frozen base model (significant when the 95 % seeds × items interval excludes 0)."""
    lines = []
    for ref, label in (("base", "the base model"), (REFERENCE, "MoE-LoRA")):
        lines += ["", f"Against {label}:", ""]
        for m, e in agg["methods"].items():
            for t in agg["tasks"]:
                for metric in METRICS:
                    d = e[t][metric].get(f"minus_{ref}")
                    if d is None:
                        continue
                    scale, unit = (100.0, "points") if metric == "correct" else (1.0, "nats/token")
                    name = "answer NLL" if metric == "nll" else "accuracy / exact match"
                    n = len(e[t][metric][f"minus_{ref}_seeds"])
                    lines.append(f"- {m}, {t}, {name}: {_verdict(d, metric, label)} "
                                 f"(Δ {_ci(d, scale)} {unit}, {n} seed(s) paired).")  # fmt: skip
    return lines


def cells_fingerprint(cells: list[dict]) -> str:
    """sha256 of the cells' canonical JSON (order-free): what a written reading refers to."""
    keyed = sorted(cells, key=lambda c: (c["method"], c["seed"]))
    blob = json.dumps(keyed, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


READING_TAG = "<!-- reading of cells sha256:"


def reading_section(path: Path, fingerprint: str) -> list[str]:
    """The hand-written reading at ``path``, marked stale unless its first line names
    ``fingerprint`` (``<!-- reading of cells sha256: <hex> -->``)."""
    if not path.exists():
        return ["No reading has been written for these cells yet; the verdicts below are all "
                "there is."]  # fmt: skip
    text = path.read_text().strip().splitlines()
    head = text[0].strip() if text else ""
    body = text[1:] if head.startswith(READING_TAG) else text
    if head != f"{READING_TAG} {fingerprint} -->":
        body = ["**Stale**: this reading was written from another set of cells than this page's "
                "(its fingerprint differs); trust the tables, not the prose, until it is "
                "rewritten.", "", *body]  # fmt: skip
    return body


def verdict_table(agg: dict) -> str:
    """Methods × tasks: each paired difference to MoE-LoRA as 'Δ better/worse/n.s.'."""
    rows = []
    for m, e in agg["methods"].items():
        if m in ("base", REFERENCE) or f"minus_{REFERENCE}" not in e[agg["tasks"][0]]["nll"]:
            continue
        paired = [{k: e[t][k][f"minus_{REFERENCE}"] for k in METRICS} for t in agg["tasks"]]
        rows.append([f"{m} ({len(e['seeds'])} seeds)", *map(_verdict_cell, paired)])
    return markdown_table(["vs MoE-LoRA", *agg["tasks"]], rows) if rows else ""


def _coverage(agg: dict, planned: int | None) -> str:
    """Which cells the page is made of, and whether the plan is complete."""
    have = {m: e["seeds"] for m, e in agg["methods"].items()}
    text = "Cells in this page: " + "; ".join(f"{m} seeds {s}" for m, s in have.items()) + "."
    short = [m for m, s in have.items() if planned and m != "base" and len(s) < planned]
    if short:
        text += (
            f" **In progress**: {', '.join(short)} have fewer than the plan's {planned} seeds, "
            "and methods of the plan with no cell yet are not shown; read nothing into a "
            "comparison until every row has its seeds."
        )
    return text


def render(agg: dict, meta: dict[str, Any]) -> str:
    tasks = agg["tasks"]
    lines = [
        "# Benchmark of record: quality at matched active parameters",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit: {meta['commit']}  ",
        f"Model: {meta['model']}; targets {', '.join(meta['targets'])}; {meta['steps']} steps of "
        f"{meta['batch']} items; data: {meta['data']}  ",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in meta["machine"].items()),
        "",
        _coverage(agg, meta.get("seeds_planned")),
        "",
        "Answer NLL = mean over items of the answer's negative log-likelihood per token (nats, "
        "lower is better); accuracy (multiple choice) / exact match (math) in %. Brackets: 95 % "
        "percentile-bootstrap intervals over items (pooled: items averaged over seeds). ± : "
        "sample std of the per-seed means. Δ: paired difference to MoE-LoRA on the same items and "
        "seeds, its interval from a two-level bootstrap over seeds and items (a rerun's "
        "variance included); a difference is called significant only when that interval "
        "excludes 0.",
        "",
        "## Parameters and cost per method",
        "",
        markdown_table(
            ["method", "config", "lr", "active / token", "trainable", "train s", "tokens/s",
             "eval s", "peak RSS MiB"],
            [[m, e["parameters"]["config"], e["lr"] if e["lr"] is not None else "–",
              e["parameters"]["active_per_token"], e["parameters"]["trainable"],
              f"{e['cost']['train_seconds']:.0f}", f"{e['cost']['tokens_per_second']:.0f}",
              f"{e['cost']['eval_seconds']:.0f}", f"{e['cost']['peak_rss_mb']:.0f}"]
             for m, e in agg["methods"].items()],
        ),
    ]  # fmt: skip
    for metric, title, scale in (("nll", "Answer NLL (nats/token)", 1.0),
                                 ("correct", "Accuracy / exact match (%)", 100.0)):  # fmt: skip
        rows = []
        for m, e in agg["methods"].items():
            row = [m]
            for t in tasks:
                r = e[t][metric]
                key = f"minus_{REFERENCE}"
                delta = f"; Δ {_ci(r[key], scale)}" if key in r else ""
                row.append(f"{_ci(r['pooled'], scale)}; {_seeds(r['seeds'], scale)}{delta}")
            rows.append(row)
        lines += ["", f"## {title}", "", markdown_table(["method", *tasks], rows)]
    reading = reading_section(Path(meta["reading"]), meta["fingerprint"]) if meta.get(
        "reading") else []  # fmt: skip
    lines += ["", "## What this shows", "", *reading,
              "", f"Cells fingerprint: sha256 `{meta.get('fingerprint', '')}`", "",
              "### Paired differences to MoE-LoRA (seeds × items, 95 %)", "",
              verdict_table(agg), "",
              "### FRAME against each control (seeds × items, 95 %; better/worse: FRAME's)", "",
              frame_table(agg), "",
              "### Every paired difference (generated from the intervals)",
              *findings(agg)]  # fmt: skip
    if meta.get("plot"):
        lines += ["", f"![methods x tasks]({meta['plot']})"]
    return "\n".join(lines) + "\n"


def plot(agg: dict, path: Path) -> Path | None:
    """Methods × tasks (PNG). Top row: the paired answer-NLL difference to MoE-LoRA with its
    seeds × items interval and a zero line (below 0 = better than MoE-LoRA), the comparison the
    page's verdicts use; then pooled answer NLL and accuracy with their item intervals."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks, methods = agg["tasks"], list(agg["methods"])
    rows = (("minus", "nll", f"Δ answer NLL vs {REFERENCE}", 1.0),
            ("pooled", "nll", "answer NLL", 1.0),
            ("pooled", "correct", "acc / EM %", 100.0))  # fmt: skip
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(3.2 * len(tasks), 9), squeeze=False)
    for row, (kind, metric, label, scale) in enumerate(rows):
        for col, t in enumerate(tasks):
            ax = axes[row][col]
            for i, m in enumerate(methods):
                r = agg["methods"][m][t][metric]
                p = r.get(f"minus_{REFERENCE}") if kind == "minus" else r["pooled"]
                if p is None:  # the reference itself and the base model have no paired row
                    continue
                est = p["estimate"] * scale
                err = [[est - p["low"] * scale], [p["high"] * scale - est]]
                ax.errorbar([i], [est], yerr=err, fmt="o", capsize=3, color=f"C{i}")
            if kind == "minus":
                ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xticks(range(len(methods)), methods, rotation=60, fontsize=7)
            ax.set_title(f"{t}: {label}", fontsize=9)
    return save_figure(fig, path)  # tight layout, 110 dpi, written atomically
