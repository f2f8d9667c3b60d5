"""The run directory: what ``frame-peft train`` writes, and how it is read back.

A run directory (``runs/<recipe>/<method>`` by default) holds everything needed to reproduce and
re-evaluate the run::

    recipe.yaml        the resolved recipe (after --set overrides)
    data.json          how every train/eval set was drawn (seeds, sizes, eval-uid hashes)
    run.json           method, parameter counts, timings, library version, task ids
    train_config.json  the training settings
    log.jsonl          training log (see docs/training.md), with orders.jsonl and scans.jsonl
                       (FRAME) and tensorboard/ beside it; checkpoint-*/ while training
    adapter/           the trained adapter (frame-peft format, or PEFT's for peft:* methods)
    eval.json, eval.md held-out results (see docs/evaluation.md); lm_eval.json with --lm-eval
    analysis/          what ``frame-peft analyze`` writes (see docs/analysis.md)

``frame-peft compare`` writes one such directory per method under ``runs/<recipe>/``, with
``compare.md`` and ``compare.json`` beside them; the base model's directory (``base``) holds only
the evaluation. A run is reloaded with :func:`load_run`; every reader of a run directory
(``frame-peft eval``, ``frame-peft analyze``) goes through this module, so the layout is defined
once, here. It sits below both :mod:`frame_peft.pipeline` (which writes run directories) and
:mod:`frame_peft.analysis` (which reads them), on top of :mod:`frame_peft.recipes` (the data and
model a recipe builds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._files import atomic_write_bytes, readable_directory, write_json
from .recipes.data_prep import PreparedData, prepare_data
from .recipes.model_prep import load_trained
from .recipes.schema import Recipe, load_recipe

__all__ = [
    "OFFLINE_NOTE",
    "NotARunDirError",
    "check_finished",
    "check_same_split",
    "load_run",
    "read_data_records",
    "read_run_info",
    "require_run_dir",
    "write_data_json",
    "write_recipe",
    "write_run_json",
]

OFFLINE_NOTE = (
    "offline data: train and eval items are a seeded, disjoint split of the shipped evaluation "
    "sets (plus generated math); this is NOT the papers' protocol"
)


def write_recipe(recipe: Recipe, run_dir: Path) -> None:
    """``recipe.yaml``: the resolved recipe, keys in the recipe's order."""
    import yaml

    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    atomic_write_bytes(run_dir / "recipe.yaml", text.encode())


def write_data_json(run_dir: Path, data: PreparedData) -> None:
    """``data.json``: the records of how every set was drawn, and :data:`OFFLINE_NOTE`."""
    write_json(run_dir / "data.json", {"records": data.records, "note": OFFLINE_NOTE}, default=str)


def write_run_json(run_dir: Path, info: dict[str, Any]) -> None:
    """``run.json``: what ``train`` records about the run (method, parameters, timings, ...)."""
    write_json(run_dir / "run.json", info, default=str)


class NotARunDirError(FileNotFoundError):
    """A folder given as a run directory is not one; the message says what it looks like instead
    (a checkpoint, an adapter folder, an unfinished or base-model run, an empty folder) and what
    to pass. A ``FileNotFoundError``, so the CLI prints it as a one-line error."""


_EXPECTED = "a run directory written by `frame-peft train` (run.json, recipe.yaml, adapter/)"
_CHECKPOINT_RE = re.compile(r"checkpoint-\d+(\.tmp)?")


def _not_a_run(folder: Path) -> str | None:
    """Why ``folder`` is not a finished run directory, with what to pass instead; ``None`` if it
    is one (``run.json``, ``recipe.yaml`` and ``adapter/`` all there)."""
    if not folder.exists():
        return f"{folder} does not exist (no run.json to read); expected {_EXPECTED}"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder; expected {_EXPECTED}"
    parent = folder.parent
    if _CHECKPOINT_RE.fullmatch(folder.name) or (folder / "trainer_state.json").is_file():
        return (
            f"{folder} looks like a training checkpoint ({folder.name}), not a run directory; "
            f"pass the run directory above it ({parent}) to evaluate the finished run"
        )
    if folder.name == "adapter" and (parent / "run.json").is_file():
        return (
            f"{folder} is the adapter folder of a run; pass the run directory above it ({parent})"
        )
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        return f"{folder} is empty; expected {_EXPECTED}, or pass a recipe (name or YAML file)"
    missing = [n for n in ("run.json", "recipe.yaml") if not (folder / n).exists()]
    if not readable_directory(folder / "adapter").exists():  # also mid-swap: a version is there
        missing.append("adapter")
    if not missing:
        return None
    if "run.json" in missing and "recipe.yaml" not in missing:
        if (folder / "eval.json").is_file() and not any(
            _CHECKPOINT_RE.fullmatch(n) for n in present
        ):
            return (
                f"{folder} holds an evaluation of the base model (eval.json, no run.json): "
                "re-evaluate it with `frame-peft eval RECIPE --method base`"
            )
        return (
            f"{folder} has recipe.yaml but no run.json: its training did not finish (run.json is "
            f"written last); train it again with `frame-peft train {folder / 'recipe.yaml'} "
            f"--output-dir {folder}` (it resumes from the newest checkpoint-N if there is one)"
        )
    return (
        f"{folder} has no {', '.join(missing)}: expected {_EXPECTED}; "
        f"it holds {present[:8]}{' ...' if len(present) > 8 else ''}"
    )


def require_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a ``Path`` if it is a finished run directory, else :class:`NotARunDirError`
    naming the folder, what is missing, and what to pass instead."""
    folder = Path(run_dir)
    problem = _not_a_run(folder)
    if problem is not None:
        raise NotARunDirError(problem)
    return folder


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json``; :class:`NotARunDirError` saying what the folder is if it has none."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise NotARunDirError(_not_a_run(Path(run_dir)) or f"{run_dir} has no run.json")
    return json.loads(path.read_text())


def check_finished(run_dir: str | Path) -> None:
    """Raise :class:`NotARunDirError` unless ``run.json``, ``recipe.yaml`` and ``adapter/`` are
    there (the message says what the folder is instead and what to pass)."""
    require_run_dir(run_dir)


def read_data_records(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The split records of the run's ``data.json``, or ``None`` if it has none."""
    saved = Path(run_dir) / "data.json"
    return json.loads(saved.read_text())["records"] if saved.is_file() else None


def check_same_split(run_dir: str | Path, data: PreparedData) -> None:
    """Refuse to evaluate on items that differ from the ones recorded when the run was trained
    (nothing to check if ``run_dir`` has no ``data.json``)."""
    before = read_data_records(run_dir)
    if before is None:
        return
    if json.loads(json.dumps(before)) != json.loads(json.dumps(data.records, default=str)):
        raise ValueError(
            f"the data drawn now differs from {Path(run_dir) / 'data.json'} (different data files "
            "or seed?); the held-out items would not be the ones this run was trained around"
        )


def load_run(
    run_dir: str | Path, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], Recipe, torch.nn.Module, Any, PreparedData]:
    """Reload what ``train`` wrote in ``run_dir``: ``(run.json, recipe, trained model, tokenizer,
    data)``, the data rebuilt from the recipe and checked against the run's ``data.json``."""
    run_dir = require_run_dir(run_dir)
    info = read_run_info(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    # while an adapter swap is interrupted, the whole version left on disk (never half of one)
    model, tokenizer = load_trained(recipe, info["method"], readable_directory(run_dir / "adapter"))
    data = prepare_data(recipe)
    check_same_split(run_dir, data)
    return info, recipe, model, tokenizer, data
