"""Multiple-choice scoring of frame-peft against lm-evaluation-harness on the real SmolLM2.

Scores the first N ARC-Easy validation items with ``frame_peft.evaluation.score_multiple_choice``
and, through the lm-eval bridge, with lm-eval's own HFLM on the same in-memory model and the
same items; writes both metrics and the largest per-choice log-likelihood difference to
``benchmarks/results/mc_vs_lm_eval.md``. Needs the assets (`frame-peft assets fetch`) and lm-eval.

    OMP_NUM_THREADS=1 python benchmarks/mc_vs_lm_eval.py [--items 80]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from frame_peft import assets
from frame_peft._files import write_text
from frame_peft._tables import markdown_table
from frame_peft.data import get_task
from frame_peft.evaluation import evaluate_with_lm_eval, lm_eval_metrics, score_multiple_choice

RESULTS = Path(__file__).parent / "results" / "mc_vs_lm_eval.md"


def _row(name: str, metrics: dict, seconds: float) -> list[str]:
    return [name, f"{metrics['acc']:.4f}", f"{metrics['acc_norm']:.4f}", f"{seconds:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=80)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.asset_path("smollm2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    items = get_task("arc_easy").load(limit=args.items)

    t0 = time.perf_counter()
    ours = score_multiple_choice(model, tok, items, batch_size=8)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = evaluate_with_lm_eval(
        model, tok, [], local_tasks={"arc_easy_local": items}, batch_size=8, log_samples=True
    )
    lm_s = time.perf_counter() - t0
    theirs_metrics = lm_eval_metrics(lm)["arc_easy_local"]
    samples = sorted(lm["samples"]["arc_easy_local"], key=lambda s: s["doc_id"])
    theirs = [ll for s in samples for ll, _ in s["filtered_resps"]]
    mine = [ll for p in ours.predictions for ll in p["logliks"]]
    diff = max(abs(a - b) for a, b in zip(mine, theirs, strict=True))

    table = markdown_table(
        ["scorer", "acc", "acc_norm", "seconds"],
        [
            _row("frame_peft.evaluation", ours.metrics, ours_s),
            _row("lm-eval (HFLM via the bridge)", theirs_metrics, lm_s),
        ],
        align="lrrr",
    )
    text = f"""# Multiple-choice scoring: frame-peft vs lm-evaluation-harness

Command: `OMP_NUM_THREADS=1 python benchmarks/mc_vs_lm_eval.py --items {args.items}`
(SmolLM2-135M-Instruct from the offline asset, float32, CPU, torch {torch.__version__},
{torch.get_num_threads()} thread; ARC-Easy validation, first {args.items} items, shipped data).

{table}

Largest per-choice log-likelihood difference over {len(mine)} choices: {diff:.3g}.
"""
    write_text(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
