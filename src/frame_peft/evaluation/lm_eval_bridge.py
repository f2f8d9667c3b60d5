"""Evaluate an in-memory (adapted) model with EleutherAI's lm-evaluation-harness 0.4.x.

:func:`evaluate_with_lm_eval` wraps the model object itself in lm-eval's ``HFLM``
(``pretrained=<model>``, ``tokenizer=<tokenizer>``) and calls ``simple_evaluate``, so a
frame-peft or PEFT model is scored without saving or merging it. lm-eval ships no data and this
machine reaches no hub: local data comes in through task YAMLs with ``dataset_path: json``
(or ``arrow``/``parquet``/``csv``) and ``data_files``. :func:`write_local_task_yaml` writes such
a YAML for multiple-choice rows ``{"prompt", "choices", "label"}``, and
:func:`write_local_mc_task` writes both the rows and the YAML from
:class:`~frame_peft.data.types.Example` records.

Equivalence with :func:`~frame_peft.evaluation.multiple_choice.score_multiple_choice`: the YAML
makes lm-eval score the same (prompt, choice) strings. Choices that all start with one space are
stored without it and ``target_delimiter: " "`` puts it back (lm-eval's ``acc_norm`` then divides
by the length of the stored choice, as ours divides by ``len(choice.lstrip())``); otherwise the
choices are stored as they are with ``target_delimiter: ""``. lm-eval calls the model without an
attention mask (right padding), so frame-peft's routing statistics include padded positions;
routed outputs, and therefore scores, are unaffected.

Needs ``pip install 'lm-eval==0.4.*'`` (tested with 0.4.13).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..data.types import Example
from ._model_io import eval_mode

__all__ = [
    "evaluate_with_lm_eval",
    "lm_eval_metrics",
    "write_local_mc_task",
    "write_local_task_yaml",
]

DATASET_PATHS = ("json", "arrow", "parquet", "csv")


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "evaluate_with_lm_eval needs lm-evaluation-harness: pip install 'lm-eval==0.4.*'"
        ) from err
    return lm_eval, HFLM, TaskManager


def _quote(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def write_local_task_yaml(
    directory: str | Path,
    task: str,
    data_files: str | Path | Sequence[str | Path],
    *,
    dataset_path: str = "json",
    split: str = "test",
    text_field: str = "prompt",
    choices_field: str = "choices",
    label_field: str = "label",
    target_delimiter: str = " ",
) -> Path:
    """Write ``<directory>/<task>.yaml``: a zero-shot multiple-choice task over local files.

    Each row has ``text_field`` (the context), ``choices_field`` (a list of strings, each
    appended to the context after ``target_delimiter``) and ``label_field`` (the gold index).
    Metrics: ``acc`` and ``acc_norm``. The ``datasets`` cache goes to ``<directory>/cache``.
    """
    if dataset_path not in DATASET_PATHS:
        raise ValueError(f"dataset_path must be one of {DATASET_PATHS}, got {dataset_path!r}")
    if not task or not task.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"task name must be letters, digits, '_' or '-', got {task!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
    files_yaml = ", ".join(_quote(str(Path(f).resolve())) for f in files)
    text = "\n".join(
        [
            f"task: {task}",
            f"dataset_path: {dataset_path}",
            "dataset_kwargs:",
            f"  data_files: {{{split}: [{files_yaml}]}}",
            f"  cache_dir: {_quote(str((directory / 'cache').resolve()))}",
            f"test_split: {split}",
            "output_type: multiple_choice",
            f"doc_to_text: {text_field}",
            f"doc_to_choice: {choices_field}",
            f"doc_to_target: {label_field}",
            f"target_delimiter: {_quote(target_delimiter)}",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )
    path = directory / f"{task}.yaml"
    path.write_text(text)
    return path


def write_local_mc_task(directory: str | Path, task: str, examples: Sequence[Example]) -> Path:
    """Write ``<task>.jsonl`` (``prompt``/``choices``/``label`` rows) and its YAML; returns the
    YAML path. The delimiter rule is in the module docstring."""
    if not examples:
        raise ValueError(f"local task {task!r} has no examples")
    for ex in examples:
        if not ex.choices or ex.label is None:
            raise ValueError(f"{ex.task}/{ex.uid} is not multiple choice (needs choices, label)")
    spaced = all(c.startswith(" ") for ex in examples for c in ex.choices)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{task}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for ex in examples:
            choices = [c[1:] for c in ex.choices] if spaced else list(ex.choices)
            row = {"uid": ex.uid, "prompt": ex.prompt, "choices": choices, "label": ex.label}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return write_local_task_yaml(directory, task, data, target_delimiter=" " if spaced else "")


def lm_eval_metrics(output: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from ``simple_evaluate``'s output (``"acc,none"`` → ``"acc"``;
    standard errors dropped)."""
    table: dict[str, dict[str, float]] = {}
    for task, metrics in output.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if not filt or "_stderr" in name or not isinstance(value, (int, float)):
                continue
            row[name if filt == "none" else f"{name},{filt}"] = float(value)
        table[task] = row
    return table


def evaluate_with_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    batch_size: int = 8,
    local_tasks: Mapping[str, Sequence[Example] | str | Path] | None = None,
    include_path: str | Path | None = None,
    include_defaults: bool | None = None,
    log_samples: bool = False,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on the in-memory ``model``; returns its output dict
    (``output["results"][task]["acc,none"]``, ...; see :func:`lm_eval_metrics`).

    ``local_tasks`` maps a task name to :class:`Example` records (written to a temporary JSONL
    + YAML) or to a JSONL file of ``prompt``/``choices``/``label`` rows (a temporary YAML points
    at it, choices appended after a space); those tasks are evaluated too. ``include_path`` adds
    a folder of your own task YAMLs. ``include_defaults`` (index lm-eval's thousands of built-in
    tasks, which takes seconds) defaults to True only when ``tasks`` names a task that is not in
    ``local_tasks`` and no ``include_path`` is given. Remaining keyword arguments go to
    ``simple_evaluate`` (``num_fewshot``, ``apply_chat_template``, ...).
    """
    lm_eval, HFLM, TaskManager = _lm_eval()
    local_tasks = dict(local_tasks or {})
    names = list(tasks) + [t for t in local_tasks if t not in tasks]
    if not names:
        raise ValueError("no tasks to evaluate")
    if include_defaults is None:
        include_defaults = include_path is None and any(t not in local_tasks for t in names)
    with tempfile.TemporaryDirectory(prefix="frame_peft_lm_eval_") as tmp:
        paths: list[str] = [str(include_path)] if include_path is not None else []
        if local_tasks:
            local_dir = Path(tmp) / "tasks"
            for name, source in local_tasks.items():
                if isinstance(source, (str, Path)):
                    write_local_task_yaml(local_dir, name, source)
                else:
                    write_local_mc_task(local_dir, name, list(source))
            paths.append(str(local_dir))
        manager = TaskManager(include_path=paths or None, include_defaults=include_defaults)
        with eval_mode(model):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                limit=limit,
                task_manager=manager,
                log_samples=log_samples,
                **simple_evaluate_kwargs,
            )
    if output is None:  # non-zero ranks of a distributed run
        return {}
    return output
