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

:func:`check_lm_eval_tasks` is the preflight ``frame-peft eval --lm-eval`` runs before anything
else: it indexes the task YAMLs (``include_path`` folders, and lm-eval's built-in tasks when
needed), resolves every requested name (unknown → :class:`LmEvalTaskError` with close matches)
and, in offline mode, refuses tasks whose data is not on this machine, so a missing dataset is
reported in seconds rather than after minutes of our own evaluation.

Needs ``pip install 'lm-eval==0.4.*'`` (tested with 0.4.13).
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .._files import write_json_lines, write_text
from ..data.types import Example
from ._model_io import eval_mode

__all__ = [
    "LmEvalPlan",
    "LmEvalTaskError",
    "check_lm_eval_tasks",
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
    return write_text(directory / f"{task}.yaml", text)


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
    rows = []
    for ex in examples:
        choices = [c[1:] for c in ex.choices] if spaced else list(ex.choices)
        rows.append({"uid": ex.uid, "prompt": ex.prompt, "choices": choices, "label": ex.label})
    write_json_lines(data, rows)
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
    include_path: str | Path | Sequence[str | Path] | None = None,
    include_defaults: bool | None = None,
    log_samples: bool = False,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on the in-memory ``model``; returns its output dict
    (``output["results"][task]["acc,none"]``, ...; see :func:`lm_eval_metrics`).

    ``local_tasks`` maps a task name to :class:`Example` records (written to a temporary JSONL
    + YAML) or to a JSONL file of ``prompt``/``choices``/``label`` rows (a temporary YAML points
    at it, choices appended after a space); those tasks are evaluated too. ``include_path`` adds
    one or more folders of your own task YAMLs. ``include_defaults`` (index lm-eval's thousands
    of built-in tasks, which takes seconds) defaults to True only when ``tasks`` names a task
    that is not in ``local_tasks`` and no ``include_path`` is given. Remaining keyword arguments
    go to ``simple_evaluate`` (``num_fewshot``, ``apply_chat_template``, ...).
    """
    lm_eval, HFLM, TaskManager = _lm_eval()
    local_tasks = dict(local_tasks or {})
    names = list(tasks) + [t for t in local_tasks if t not in tasks]
    if not names:
        raise ValueError("no tasks to evaluate")
    if include_defaults is None:
        include_defaults = not _as_paths(include_path) and any(t not in local_tasks for t in names)
    with tempfile.TemporaryDirectory(prefix="frame_peft_lm_eval_") as tmp:
        paths = [str(p) for p in _as_paths(include_path)]
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


# ---------------------------------------------------------------- preflight

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_WHAT_TO_DO = (
    "What to do: run online (unset {vars}), pre-download the dataset into the datasets cache "
    "on a machine with network access (datasets.load_dataset(...) with the same path and name), "
    "or write the task as a YAML over local files (dataset_path: json + dataset_kwargs.data_files;"
    " see frame_peft.evaluation.write_local_task_yaml) and pass its folder with "
    "--lm-eval-include DIR."
)


class LmEvalTaskError(ValueError):
    """An lm-eval task that cannot be run: unknown name, or data that is not on this machine
    while offline mode is set. Raised before any model is loaded."""


@dataclass(frozen=True)
class LmEvalPlan:
    """What :func:`check_lm_eval_tasks` resolved: the requested ``tasks``, the registered
    ``names`` they match (globs expanded; pass these to lm-eval, whose ``simple_evaluate`` does
    not expand globs), the leaf tasks each expands to (groups and tags), and the TaskManager
    settings to evaluate them with."""

    tasks: list[str]
    names: list[str]
    leaves: dict[str, list[str]]
    include_path: list[Path]
    include_defaults: bool
    offline: bool
    unchecked: list[str]  # leaf tasks whose data source cannot be read from the YAML


def _as_paths(include_path: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if include_path is None:
        return []
    if isinstance(include_path, (str, Path)):
        return [Path(include_path)]
    return [Path(p) for p in include_path]


def offline_mode() -> bool:
    """True when any of HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE is set to a
    true value (1, ON, YES, TRUE), the variables the Hugging Face libraries read."""
    return any(
        os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in _OFFLINE_VARS
    )


def _leaf_configs(
    index: Mapping[str, Any], name: str, overrides: dict[str, Any], depth: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """(task name, merged config) for every task ``name`` expands to, as lm-eval's factory
    merges them: group-level keys, then the member's own overrides, over the task's YAML."""
    from lm_eval.tasks._factory import GROUP_FIELD_NAMES
    from lm_eval.tasks._index import Kind

    if depth > 20:
        raise LmEvalTaskError(f"lm-eval group {name!r} nests more than 20 levels (a cycle?)")
    entry = index[name]
    if entry.kind == Kind.TAG:
        return [
            leaf
            for t in sorted(entry.tags)
            if t in index
            for leaf in _leaf_configs(index, t, overrides, depth + 1)
        ]
    cfg = dict(entry.cfg or {})
    if entry.kind != Kind.GROUP:
        return [(name, {**cfg, **overrides})]
    return _group_members(index, name, cfg, overrides, depth, GROUP_FIELD_NAMES)


def _group_members(index, name, cfg, overrides, depth, group_fields):
    merged = {**{k: v for k, v in cfg.items() if k not in group_fields}, **overrides}
    leaves: list[tuple[str, dict[str, Any]]] = []
    members = cfg.get("task")
    for item in members if isinstance(members, list) else []:
        if isinstance(item, str):
            if item in index:
                leaves += _leaf_configs(index, item, merged, depth + 1)
        elif isinstance(item, dict) and "group" in item:
            extra = {k: v for k, v in item.items() if k != "group"}
            if item["group"] in index:
                leaves += _leaf_configs(index, item["group"], {**merged, **extra}, depth + 1)
            else:  # an inline group
                leaves += _group_members(
                    index, item["group"], item, merged, depth + 1, group_fields
                )
        elif isinstance(item, dict) and "task" in item:
            item_over = {**merged, **item}
            if isinstance(item["task"], str) and item["task"] in index:
                leaves += _leaf_configs(index, item["task"], item_over, depth + 1)
            else:  # an inline task
                leaves.append((f"{name}::{item['task']}", item_over))
    return leaves


def _data_files(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, (str, Path)):
        return [str(spec)]
    if isinstance(spec, Mapping):
        return [f for v in spec.values() for f in _data_files(v)]
    return [f for v in spec for f in _data_files(v)]


def _local_pattern_exists(pattern: str) -> bool:
    path = Path(pattern).expanduser()
    return path.exists() or bool(glob.glob(str(path), recursive=True))


def _missing_locally(cfg: Mapping[str, Any]) -> str | None:
    """None when the task's data loads without the network; else what it would download.

    The rule follows ``datasets.load_dataset(dataset_path, dataset_name, **dataset_kwargs)``:
    a packaged loader (json, csv, parquet, ...) needs ``data_files``/``data_dir`` that exist
    here; an existing local path is local; any other path is a Hub dataset, local only when
    the datasets cache (``dataset_kwargs.cache_dir`` or HF_DATASETS_CACHE) already holds
    ``<namespace>___<name>/<config>/`` as datasets' offline fallback looks it up. URLs in
    ``data_files`` are downloads.
    """
    import datasets
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    path = str(cfg.get("dataset_path"))
    kwargs = cfg.get("dataset_kwargs") or {}
    files = _data_files(kwargs.get("data_files"))
    urls = [f for f in files if "://" in f and not f.startswith("file://")]
    if urls:
        return f"data files {urls[:3]} (URLs)"
    if path in _PACKAGED_DATASETS_MODULES:
        data_dir = kwargs.get("data_dir")
        if not files and not data_dir:
            return f"nothing: dataset_path {path!r} has no dataset_kwargs.data_files to read"
        missing = [f for f in files if not _local_pattern_exists(f.removeprefix("file://"))]
        if data_dir and not Path(data_dir).expanduser().is_dir():
            missing.append(str(data_dir))
        return f"nothing, but these local files are missing: {missing}" if missing else None
    if not path.startswith("hf://") and Path(path).expanduser().exists():
        return None
    repo = path.removeprefix("hf://datasets/")
    cache = Path(kwargs.get("cache_dir") or datasets.config.HF_DATASETS_CACHE).expanduser()
    parts = repo.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])  # as datasets names its cache folders
    config = cfg.get("dataset_name") or "*"
    cached = glob.glob(str(cache / "___".join(parts) / config / "*" / "*"))
    if any(Path(p).is_dir() for p in cached):
        return None
    which = f" (config {cfg['dataset_name']!r})" if cfg.get("dataset_name") else ""
    return f"the Hugging Face Hub dataset {repo!r}{which}, not in the datasets cache {cache}"


def check_lm_eval_tasks(
    tasks: Sequence[str],
    *,
    include_path: str | Path | Sequence[str | Path] | None = None,
    offline: bool | None = None,
) -> LmEvalPlan:
    """Resolve lm-eval ``tasks`` and, offline, check their data is here, loading no data.

    Indexes the ``include_path`` folders first and lm-eval's built-in tasks only when a name is
    not among them (or no folder is given). Glob patterns (``arc_*``) are expanded as lm-eval
    does. Raises :class:`LmEvalTaskError` listing unknown names with close matches, and, when
    ``offline`` (default: :func:`offline_mode`), naming every task whose dataset would be
    downloaded and what to do. Tasks whose data comes from Python (``class:`` or
    ``custom_dataset``) cannot be checked from the YAML; they are listed in ``unchecked``.
    """
    _, _, TaskManager = _lm_eval()
    from lm_eval.utils import pattern_match

    names = list(tasks)
    if not names:
        raise LmEvalTaskError("no lm-eval tasks named")
    paths = _as_paths(include_path)
    for p in paths:
        if not p.is_dir():
            raise LmEvalTaskError(f"--lm-eval-include {p}: not a folder of lm-eval task YAMLs")
    offline = offline_mode() if offline is None else offline
    defaults = not paths
    manager = TaskManager(include_path=paths or None, include_defaults=defaults)
    matched = {n: pattern_match([n], manager.all_tasks) for n in names}
    if paths and not all(matched.values()):  # some names are lm-eval's own tasks
        defaults = True
        manager = TaskManager(include_path=paths, include_defaults=True)
        matched = {n: pattern_match([n], manager.all_tasks) for n in names}
    unknown = [n for n, m in matched.items() if not m]
    if unknown:
        lines = []
        for n in unknown:
            close = difflib.get_close_matches(n, manager.all_tasks, n=5, cutoff=0.6)
            lines.append(f"  {n!r}: " + (f"did you mean {close}?" if close else "no close match"))
        where = f" in {[str(p) for p in paths]} or" if paths else ""
        raise LmEvalTaskError(
            f"unknown lm-eval task(s), not found{where} among lm-eval's built-in tasks:\n"
            + "\n".join(lines)
            + "\nList the built-in tasks with `lm-eval ls tasks`; add your own YAML folder "
            "with --lm-eval-include DIR."
        )
    index = manager.task_index
    leaves = {n: [leaf for m in matched[n] for leaf in _leaf_configs(index, m, {})] for n in names}
    unchecked, problems = [], []
    if offline:
        for leaf, cfg in {k: v for ls in leaves.values() for k, v in ls}.items():
            if "class" in cfg or cfg.get("custom_dataset") or not cfg.get("dataset_path"):
                unchecked.append(leaf)
            elif (what := _missing_locally(cfg)) is not None:
                problems.append(f"  {leaf}: would download {what}")
    if problems:
        raise LmEvalTaskError(
            "offline mode is set ("
            + ", ".join(f"{v}={os.environ[v]}" for v in _OFFLINE_VARS if v in os.environ)
            + ") and these lm-eval tasks need data that is not on this machine:\n"
            + "\n".join(problems)
            + "\n"
            + _WHAT_TO_DO.format(vars="/".join(_OFFLINE_VARS))
        )
    return LmEvalPlan(
        tasks=names,
        names=list(dict.fromkeys(m for n in names for m in matched[n])),
        leaves={n: [leaf for leaf, _ in ls] for n, ls in leaves.items()},
        include_path=paths,
        include_defaults=defaults,
        offline=offline,
        unchecked=unchecked,
    )
