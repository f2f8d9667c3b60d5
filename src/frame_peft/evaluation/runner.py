"""``evaluate``: score a model on several tasks of :class:`~frame_peft.data.types.Example`.

Each task is scored by its kind:

- multiple choice → :func:`~frame_peft.evaluation.multiple_choice.score_multiple_choice`
  (``acc``, ``acc_norm``);
- math → greedy generation (stops: ``example.meta["stop"]`` or :data:`MATH_STOPS`),
  :func:`extract_answer`, compared with ``example.answer`` (``exact_match``) by the checker
  :func:`~frame_peft.evaluation.math_verify_check.resolve_checker` picks for the task
  (``math-verify`` for MATH, :func:`math_equal` for GSM8K-style numbers; recorded in
  ``metadata["math_checkers"]``);
- code → greedy generation (stops: ``meta["stop"]``, else :data:`HUMANEVAL_STOPS` when the
  tests define ``check`` and :data:`MBPP_STOPS` otherwise; with ``chat=True`` no default stops
  and the first fenced block is taken), then ``prompt + completion + tests`` run in the sandbox
  (``pass@1``: one greedy sample per problem).

A task's kind and family come from the task registry (``frame_peft.data.get_task(name)``, looked
up lazily) and otherwise from the examples (``choices`` → multiple choice, ``tests`` → code,
``answer`` → math; family ``"other"``). The model is put in eval mode and every module's mode is
restored afterwards. Works for plain ``transformers`` models, frame-peft adapted models and PEFT
models.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..data.types import Example, TaskKind
from ..peft_bridge import count_parameters, is_peft_model
from ._model_io import eval_mode, model_id, unwrap
from .code_sandbox import build_program, is_humaneval_style, run_many
from .generation import (
    HUMANEVAL_STOPS,
    MATH_STOPS,
    MBPP_STOPS,
    extract_code,
    generate_completions,
)
from .math_answer import extract_answer
from .math_verify_check import CHECKERS, answers_equal, resolve_checker
from .multiple_choice import score_multiple_choice
from .results import EvalResults, TaskResult

__all__ = ["evaluate", "infer_kind", "task_info"]


def infer_kind(examples: Sequence[Example]) -> TaskKind:
    """The kind the examples' fields imply (all examples must agree)."""
    kinds = set()
    for ex in examples:
        if ex.choices:
            kinds.add(TaskKind.MULTIPLE_CHOICE)
        elif ex.tests is not None:
            kinds.add(TaskKind.CODE)
        elif ex.answer is not None:
            kinds.add(TaskKind.MATH)
        else:
            raise ValueError(
                f"{ex.task}/{ex.uid}: cannot tell how to score it (no choices, tests or answer)"
            )
    if len(kinds) != 1:
        raise ValueError(f"examples mix task kinds {sorted(k.value for k in kinds)}")
    return kinds.pop()


def task_info(name: str, examples: Sequence[Example]) -> tuple[TaskKind, str]:
    """``(kind, family)`` from the task registry, else inferred (family ``"other"``)."""
    try:
        from .. import data

        get_task = getattr(data, "get_task", None)
        task = get_task(name) if get_task is not None else None
    except (ImportError, KeyError, ValueError, LookupError):
        task = None
    if task is not None:
        kind = getattr(task, "kind", None)
        return (TaskKind(kind) if kind else infer_kind(examples)), str(task.family)
    return infer_kind(examples), "other"


def _parameters(model: nn.Module) -> dict[str, int]:
    """``count_parameters`` plus ``base``: the parameters of the model without adapters."""
    from ..core.inject import find_injection

    counts = dict(count_parameters(model))
    inj = find_injection(model)
    if inj is not None:
        adapter = {id(p): p.numel() for a in inj.layers.values() for p in a.adapter.parameters()}
        counts["base"] = counts["total"] - sum(adapter.values())
    elif is_peft_model(model):
        counts["base"] = counts["total"] - counts["trainable"]  # PEFT freezes the base
    else:
        counts["base"] = counts["total"]
    return counts


def _method_name(model: nn.Module) -> str:
    from ..core.inject import find_injection

    inj = find_injection(model)
    if inj is not None:
        return type(inj.config).method or type(inj.config).__name__
    if is_peft_model(model):
        configs = getattr(model, "peft_config", {}) or getattr(unwrap(model), "peft_config", {})
        config = next(iter(configs.values()), None)
        peft_type = getattr(config, "peft_type", None)
        if getattr(config, "use_dora", False):
            return "peft:dora"
        return f"peft:{getattr(peft_type, 'value', peft_type)}".lower()
    return "base"


def _score_math(model, tokenizer, examples, *, settings, progress, task, checker):
    stops = [ex.meta.get("stop", MATH_STOPS) for ex in examples]
    completions = _generate_by_stop(model, tokenizer, examples, stops, settings, progress, task)
    records, correct = [], 0
    for ex, text in zip(examples, completions, strict=True):
        if ex.answer is None:
            raise ValueError(f"{ex.task}/{ex.uid}: math example without an answer")
        pred = extract_answer(text)
        ok = answers_equal(pred, ex.answer, checker)
        correct += ok
        records.append(
            {"uid": ex.uid, "completion": text, "pred": pred, "gold": ex.answer, "correct": ok}
        )
    return {"exact_match": correct / len(examples)}, records


def _score_code(model, tokenizer, examples, *, settings, progress, task):
    def default(ex: Example) -> tuple[str, ...]:
        if settings["chat"]:
            return ()
        return HUMANEVAL_STOPS if is_humaneval_style(ex) else MBPP_STOPS

    stops = [ex.meta.get("stop", default(ex)) for ex in examples]
    completions = _generate_by_stop(model, tokenizer, examples, stops, settings, progress, task)
    if settings["chat"]:
        completions = [extract_code(c) for c in completions]
    programs = [build_program(ex, c) for ex, c in zip(examples, completions, strict=True)]
    outcomes = run_many(
        programs,
        workers=settings["code_workers"],
        timeout=settings["code_timeout"],
        allow_unsafe_code_execution=settings["allow_unsafe_code_execution"],
        progress=progress,
        desc=f"{task} (tests)",
    )
    records = [
        {"uid": ex.uid, "completion": c, **o.to_dict()}
        for ex, c, o in zip(examples, completions, outcomes, strict=True)
    ]
    passed = sum(o.passed for o in outcomes)
    return {"pass@1": passed / len(examples)}, records


def _generate_by_stop(model, tokenizer, examples, stops, settings, progress, task) -> list[str]:
    """Generate for every example, one batch stream per distinct stop list."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, stop in enumerate(stops):
        key = (stop,) if isinstance(stop, str) else tuple(stop)
        groups.setdefault(key, []).append(i)
    out = [""] * len(examples)
    for stop, indices in groups.items():
        texts = generate_completions(
            model,
            tokenizer,
            [examples[i].prompt for i in indices],
            max_new_tokens=settings["max_new_tokens"],
            stop=stop,
            batch_size=settings["batch_size"],
            chat=settings["chat"],
            progress=progress,
            desc=f"{task} (generate)",
        )
        for i, text in zip(indices, texts, strict=True):
            out[i] = text
    return out


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    examples: Mapping[str, Sequence[Example]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    code_timeout: float = 10.0,
    code_workers: int = 4,
    chat: bool = False,
    math_checker: str = "auto",
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    allow_unsafe_code_execution: bool = False,
) -> EvalResults:
    """Score ``model`` on every task of ``examples`` (``{task name: examples}``).

    Returns :class:`EvalResults` with one :class:`TaskResult` per task, per-example records in
    ``.predictions``, and ``metadata`` = ``{"method", "model_id", "parameters", "settings",
    "timings"}`` updated with the caller's ``metadata`` (which wins: pass ``method``, ``seed``,
    ``splits``, ...). ``code_workers`` sandboxes run at once.

    ``math_checker`` (``"auto"``, ``"math_verify"``, ``"normalized"``) decides how math answers
    are compared (:mod:`frame_peft.evaluation.math_verify_check`); ``metadata["math_checkers"]``
    records the checker each math task was scored with.

    Code runs in :mod:`frame_peft.evaluation.code_sandbox`; where its namespace mode is not
    available, a code task raises unless ``allow_unsafe_code_execution=True`` (guard mode, not
    isolated from this machine; ``settings`` records the choice).
    """
    if not examples:
        raise ValueError("evaluate needs at least one task")
    if math_checker not in CHECKERS:
        raise ValueError(f"math_checker must be one of {CHECKERS}, got {math_checker!r}")
    settings = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "code_timeout": code_timeout,
        "code_workers": code_workers,
        "chat": chat,
        "math_checker": math_checker,
        "allow_unsafe_code_execution": bool(allow_unsafe_code_execution),
    }
    checkers: dict[str, str] = {}
    results = EvalResults()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with eval_mode(model):
        for task, items in examples.items():
            items = list(items)
            if not items:
                raise ValueError(f"task {task!r} has no examples")
            kind, family = task_info(task, items)
            t0 = time.perf_counter()
            if kind == TaskKind.MULTIPLE_CHOICE:
                mc = score_multiple_choice(
                    model, tokenizer, items, batch_size=batch_size, progress=progress, desc=task
                )
                metrics, records = mc.metrics, mc.predictions
            elif kind == TaskKind.MATH:
                checkers[task] = resolve_checker(task, math_checker)
                metrics, records = _score_math(
                    model, tokenizer, items, settings=settings, progress=progress, task=task,
                    checker=checkers[task],
                )  # fmt: skip
            else:
                metrics, records = _score_code(
                    model, tokenizer, items, settings=settings, progress=progress, task=task
                )
            timings[task] = round(time.perf_counter() - t0, 3)
            results.tasks[task] = TaskResult(
                task, kind.value, family, len(items), metrics, timings[task]
            )
            results.predictions[task] = records
    results.metadata = {
        "method": _method_name(model),
        "model_id": model_id(model),
        "parameters": _parameters(model),
        "settings": settings,
        "math_checkers": checkers,
        "timings": {"total_seconds": round(time.perf_counter() - start, 3), "tasks": timings},
        **dict(metadata or {}),
    }
    return results
