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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._files import write_json
from .recipes.data_prep import PreparedData, prepare_data
from .recipes.model_prep import load_trained
from .recipes.schema import Recipe, load_recipe

__all__ = [
    "OFFLINE_NOTE",
    "check_finished",
    "check_same_split",
    "load_run",
    "read_data_records",
    "read_run_info",
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

    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def write_data_json(run_dir: Path, data: PreparedData) -> None:
    """``data.json``: the records of how every set was drawn, and :data:`OFFLINE_NOTE`."""
    write_json(run_dir / "data.json", {"records": data.records, "note": OFFLINE_NOTE}, default=str)


def write_run_json(run_dir: Path, info: dict[str, Any]) -> None:
    """``run.json``: what ``train`` records about the run (method, parameters, timings, ...)."""
    write_json(run_dir / "run.json", info, default=str)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json``; ``FileNotFoundError`` naming the directory if it has none."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory written by `frame-peft train` (no run.json)"
        )
    return json.loads(path.read_text())


def check_finished(run_dir: str | Path) -> None:
    """Raise ``FileNotFoundError`` unless ``recipe.yaml`` and ``adapter/`` are there."""
    for name in ("recipe.yaml", "adapter"):
        if not (Path(run_dir) / name).exists():
            raise FileNotFoundError(f"{run_dir} has no {name}: was its training finished?")


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
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    model, tokenizer = load_trained(recipe, info["method"], run_dir / "adapter")
    data = prepare_data(recipe)
    check_same_split(run_dir, data)
    return info, recipe, model, tokenizer, data
