"""The dry run's data and eval checks: what would fail before or during data preparation.

:func:`check_data` never downloads: hub data is not fetched (its sizes are reported as not
checked), offline sets are counted only when their asset is already on this machine. The checks
mirror what :func:`frame_peft.recipes.data_prep.prepare_data` and the Trainer would refuse:

* every task has a source: a ``data.paths`` file that exists, a hub dataset for ``source: hub``,
  shipped data for ``source: offline`` (training sets other than ``reasoning_gym_math`` load
  from the hub unless given a path, reported as a warning under ``source: offline``);
* a task both trained on and evaluated has a non-zero held-out count (the split needs a size);
* offline counts are possible: ``eval ≤ available`` and ``train ≤ available − eval``;
* at least one optimizer step per epoch: training items ≥ the global batch;
* lengths: ``data.max_length`` and ``max_length + eval.max_new_tokens`` within the model's
  ``max_position_embeddings``; ``data.paths`` keys name tasks the recipe uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .estimate import ModelShape
from .schema import TRAIN_ONLY_SOURCES, Recipe

__all__ = ["Finding", "check_data", "train_items"]


@dataclass
class Finding:
    """One check result: ``level`` ``error`` (the run would fail), ``warn`` or ``info``."""

    level: str
    where: str
    message: str


def _offline_size(task: str) -> int | None:
    """Examples shipped for ``task`` when its asset is on this machine, else ``None``."""
    from ..assets import AssetMissingError
    from ..data import get_task

    try:
        return len(get_task(task).load("offline"))
    except (AssetMissingError, FileNotFoundError, ValueError):
        return None


def _source(recipe: Recipe, task: str) -> str:
    if task in recipe.data.paths:
        return "path"
    if task in TRAIN_ONLY_SOURCES and task != "reasoning_gym_math":
        return "hub"  # data_prep loads training sets from the hub unless a path is given
    return recipe.data.source


def train_items(recipe: Recipe) -> int | None:
    """Training items per epoch when every count is known without the network, else ``None``."""
    total = 0
    for task, n in recipe.data.train.items():
        if n > 0:
            total += n
        elif task == "reasoning_gym_math":
            total += 1000  # data_prep's default for 0
        elif _source(recipe, task) == "offline":
            size = _offline_size(task)
            if size is None:
                return None
            total += size - recipe.data.eval.get(task, 0)
        else:
            return None
    return total


def check_data(recipe: Recipe, shape: ModelShape, nproc: int) -> list[Finding]:
    """Findings for ``recipe``'s data and eval settings (see the module docstring)."""
    from ..data import TRAINING_SOURCES, get_task

    data, out = recipe.data, []
    tasks = list(dict.fromkeys([*data.eval, *data.train]))
    for task, path in data.paths.items():
        if task not in tasks:
            out.append(
                Finding(
                    "warn",
                    f"data.paths.{task}",
                    "names a task the recipe neither trains nor evaluates; unused",
                )
            )
        elif not Path(path).exists():
            out.append(Finding("error", f"data.paths.{task}", f"{path!r} does not exist"))
    for task in tasks:
        where, source = (
            f"data.{'eval' if task in data.eval else 'train'}.{task}",
            _source(recipe, task),
        )
        if task == "reasoning_gym_math" or source == "path":
            continue
        if task in TRAINING_SOURCES:
            if TRAINING_SOURCES[task].hub is None:
                out.append(
                    Finding(
                        "error",
                        where,
                        f"this training set has no hub copy; give its file with data.paths.{task}",
                    )
                )
            elif data.source == "offline":
                out.append(
                    Finding(
                        "warn",
                        where,
                        "a training set: loads from the hub although "
                        "data.source is offline (or set data.paths)",
                    )
                )
            continue
        spec = get_task(task)
        if source == "hub" and spec.hub is None:
            out.append(Finding("error", where, f"{task!r} has no hub dataset; use data.paths"))
        if source == "offline" and not spec.offline:
            out.append(
                Finding(
                    "error",
                    where,
                    f"{task!r} is not shipped offline; use data.source: hub or data.paths",
                )
            )
    for task in data.train:
        if task in data.eval and data.eval[task] == 0:
            out.append(
                Finding(
                    "error",
                    f"data.eval.{task}",
                    "0 (all items) but the task is also "
                    "trained on: give the number of held-out items",
                )
            )
    out += _check_sizes(recipe, tasks)
    out += _check_lengths(recipe, shape, nproc)
    return out


def _check_sizes(recipe: Recipe, tasks: list[str]) -> list[Finding]:
    data, out, unchecked = recipe.data, [], []
    for task in tasks:
        if task in TRAIN_ONLY_SOURCES or _source(recipe, task) != "offline":
            if task != "reasoning_gym_math" and _source(recipe, task) == "hub":
                unchecked.append(task)
            continue
        size = _offline_size(task)
        if size is None:
            out.append(
                Finding(
                    "info",
                    f"data.{task}",
                    "offline size not checked: its asset is "
                    "not fetched (`frame-peft assets fetch`)",
                )
            )
            continue
        n_eval, n_train = data.eval.get(task, 0), data.train.get(task, 0)
        if n_eval > size:
            out.append(
                Finding(
                    "error", f"data.eval.{task}", f"asks for {n_eval} items but {size} are shipped"
                )
            )
        elif task in data.train and n_train > size - n_eval:
            out.append(
                Finding(
                    "error",
                    f"data.train.{task}",
                    f"asks for {n_train} items but "
                    f"{size} are shipped and {n_eval} are held out for eval "
                    f"(at most {size - n_eval})",
                )
            )
    if unchecked:
        out.append(
            Finding(
                "info",
                "data",
                "hub data is not downloaded by a dry run; sizes not "
                f"checked for: {', '.join(unchecked)}",
            )
        )
    return out


def _check_lengths(recipe: Recipe, shape: ModelShape, nproc: int) -> list[Finding]:
    out, data = [], recipe.data
    tc = recipe.train_config(output_dir="/tmp/frame-peft-dry-run")
    limit = shape.max_positions
    if limit is not None and data.max_length > limit:
        out.append(
            Finding(
                "error",
                "data.max_length",
                f"{data.max_length} exceeds the model's max_position_embeddings {limit}",
            )
        )
    gen = data.max_length + recipe.eval.max_new_tokens
    if limit is not None and gen > limit:
        out.append(
            Finding(
                "error",
                "eval.max_new_tokens",
                f"prompt ({data.max_length}) + "
                f"{recipe.eval.max_new_tokens} new tokens exceed the model's "
                f"max_position_embeddings {limit}",
            )
        )
    items = train_items(recipe)
    batch = tc.per_device_batch_size * tc.gradient_accumulation_steps * nproc
    if items is not None and tc.max_steps is None and items < batch:
        out.append(
            Finding(
                "error",
                "data.train",
                f"{items} training items are fewer than one "
                f"global batch ({batch} = per_device_batch_size × "
                "gradient_accumulation_steps × nproc): zero steps per epoch",
            )
        )
    return out
