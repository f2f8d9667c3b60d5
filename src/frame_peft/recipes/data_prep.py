"""Turn a recipe's ``data:`` section into train and held-out eval examples, with split records.

For every task named in ``data.train`` or ``data.eval``:

* in both (the offline case): the task's shipped set is split by uid into disjoint train and eval
  parts with ``split_seed`` (``frame_peft.data.split_examples``); ``eval[task]`` items are held
  out and ``train[task]`` items are drawn from the rest;
* only in ``eval``: ``eval[task]`` items are drawn (seeded) from the task's set;
* only in ``train``: ``train[task]`` items are drawn; training-only sources such as
  ``reasoning_gym_math`` are generated with the split seed.

A count of 0 means "all items". Every draw is recorded, and no prompt may appear in both train
and eval (checked across tasks, so generated math can never equal a GSM8K eval question).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import Example, check_disjoint, get_task, split_examples
from .schema import TRAIN_ONLY_SOURCES, Recipe

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    """Examples by task for training and for held-out evaluation, and how they were drawn."""

    train: dict[str, list[Example]]
    eval: dict[str, list[Example]]
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        tr = ", ".join(f"{t} {len(v)}" for t, v in self.train.items()) or "none"
        ev = ", ".join(f"{t} {len(v)}" for t, v in self.eval.items()) or "none"
        return f"train: {tr}\neval:  {ev}"


def _draw(examples: Sequence[Example], n: int, seed: int, task: str) -> list[Example]:
    """``n`` examples (0 = all), chosen by a seeded shuffle of the uid-sorted list."""
    ordered = sorted(examples, key=lambda e: e.uid)
    if n == 0 or n >= len(ordered):
        if n > len(ordered):
            raise ValueError(
                f"data asks for {n} items of {task!r} but only {len(ordered)} are available; "
                "lower the count (0 means all)"
            )
        return ordered
    random.Random(f"{seed}:{task}").shuffle(ordered)
    return ordered[:n]


def _load(recipe: Recipe, task: str) -> list[Example]:
    source = recipe.data.paths.get(task, recipe.data.source)
    return get_task(task).load(source)


def _generate(
    recipe: Recipe, name: str, n: int, held_out: dict[str, list[Example]]
) -> list[Example]:
    if name == "reasoning_gym_math":
        from ..data import reasoning_gym_math

        # gsm_symbolic problems are rewritten GSM8K test questions: drop those built on any
        # held-out GSM8K item (and any exact repeat of a held-out question).
        avoid = [ex for exs in held_out.values() for ex in exs]
        return reasoning_gym_math(n or 1000, seed=recipe.data.split_seed, avoid=avoid)
    from ..data import load_training_source

    source = recipe.data.paths.get(name, "hub")
    return _draw(load_training_source(name, source=source), n, recipe.data.split_seed, name)


def prepare_data(recipe: Recipe) -> PreparedData:
    """Build the examples for ``recipe`` (see the module docstring). Deterministic in the seed."""
    data, seed = recipe.data, recipe.data.split_seed
    train: dict[str, list[Example]] = {}
    held_out: dict[str, list[Example]] = {}
    records: list[dict[str, Any]] = []
    tasks = [t for t in dict.fromkeys([*data.eval, *data.train]) if t not in TRAIN_ONLY_SOURCES]
    for task in tasks:
        n_train, n_eval = data.train.get(task), data.eval.get(task)
        examples = _load(recipe, task)
        if n_train is not None and n_eval is not None:
            if n_eval == 0:
                raise ValueError(
                    f"data.eval.{task} is 0 (all items) but {task!r} is also trained on; give the "
                    "number of held-out items so the shipped set can be split"
                )
            rest, held, record = split_examples(examples, eval_size=n_eval, seed=seed)
            train[task], held_out[task] = _draw(rest, n_train, seed, task), list(held)
            records.append(
                {**record.to_dict(), "role": "train+eval", "train_used": len(train[task])}
            )
        elif n_eval is not None:
            held_out[task] = _draw(examples, n_eval, seed, task)
            records.append(
                {
                    "task": task,
                    "role": "eval",
                    "seed": seed,
                    "size": len(held_out[task]),
                    "of": len(examples),
                }
            )
        else:
            train[task] = _draw(examples, n_train or 0, seed, task)
            records.append(
                {
                    "task": task,
                    "role": "train",
                    "seed": seed,
                    "size": len(train[task]),
                    "of": len(examples),
                }
            )
    # Generated and training-only sources last: they must avoid every held-out item.
    for task in (t for t in data.train if t in TRAIN_ONLY_SOURCES):
        train[task] = _generate(recipe, task, data.train[task], held_out)
        records.append(
            {
                "task": task,
                "role": "train",
                "source": "generated" if task == "reasoning_gym_math" else "training set",
                "seed": seed,
                "size": len(train[task]),
            }
        )
    check_disjoint(
        [ex for exs in train.values() for ex in exs],
        [ex for exs in held_out.values() for ex in exs],
    )
    return PreparedData(train=train, eval=held_out, records=records)
