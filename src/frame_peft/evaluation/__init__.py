"""Evaluation: multiple choice by log-likelihood, math exact match, code pass@1 in a sandbox,
results tables, and a bridge to lm-evaluation-harness (see docs/evaluation.md).

```python
from frame_peft.evaluation import evaluate, comparison_table
results = evaluate(model, tokenizer, {"arc_easy": arc_examples, "gsm8k": gsm_examples})
results.save_json("out/eval.json")
print(comparison_table([base_results, results]))
```
"""

from __future__ import annotations

from .answer_nll import ItemNLL, answer_nll, mc_answer_nll, reference_answer
from .code_sandbox import (
    STATUSES,
    SandboxResult,
    build_program,
    humaneval_program,
    is_humaneval_style,
    mbpp_program,
    namespace_available,
    run_code_tests,
    run_many,
)
from .generation import (
    HUMANEVAL_STOPS,
    MATH_STOPS,
    MBPP_STOPS,
    cut_at_stop,
    extract_code,
    generate_completions,
)
from .intervals import (
    Interval,
    SeedSummary,
    bootstrap_ci,
    paired_difference,
    pooled_over_seeds,
    seed_summary,
    seeds_and_items,
)
from .lm_eval_bridge import (
    LmEvalTaskError,
    check_lm_eval_tasks,
    evaluate_with_lm_eval,
    lm_eval_metrics,
    write_local_mc_task,
    write_local_task_yaml,
)
from .math_answer import extract_answer, math_equal, normalize_answer, parse_number
from .math_verify_check import answers_equal, math_verify_available, resolve_checker, symbolic_equal
from .multiple_choice import (
    MultipleChoiceOutput,
    encode_pair,
    loglikelihoods,
    score_multiple_choice,
)
from .results import PRIMARY_METRIC, EvalResults, TaskResult, comparison_table
from .runner import evaluate, infer_kind, task_info

__all__ = [
    "HUMANEVAL_STOPS",
    "MATH_STOPS",
    "MBPP_STOPS",
    "PRIMARY_METRIC",
    "STATUSES",
    "EvalResults",
    "Interval",
    "ItemNLL",
    "LmEvalTaskError",
    "MultipleChoiceOutput",
    "SandboxResult",
    "SeedSummary",
    "TaskResult",
    "answer_nll",
    "answers_equal",
    "bootstrap_ci",
    "build_program",
    "check_lm_eval_tasks",
    "comparison_table",
    "cut_at_stop",
    "encode_pair",
    "evaluate",
    "evaluate_with_lm_eval",
    "extract_answer",
    "extract_code",
    "generate_completions",
    "humaneval_program",
    "infer_kind",
    "is_humaneval_style",
    "lm_eval_metrics",
    "loglikelihoods",
    "math_equal",
    "math_verify_available",
    "mbpp_program",
    "mc_answer_nll",
    "namespace_available",
    "normalize_answer",
    "paired_difference",
    "parse_number",
    "pooled_over_seeds",
    "reference_answer",
    "resolve_checker",
    "run_code_tests",
    "run_many",
    "score_multiple_choice",
    "seed_summary",
    "seeds_and_items",
    "symbolic_equal",
    "task_info",
    "write_local_mc_task",
    "write_local_task_yaml",
]
