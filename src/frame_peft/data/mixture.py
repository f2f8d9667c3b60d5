"""Tokenisation of examples and the seeded multi-task training mixture.

:func:`encode_example` turns one :class:`Example` into causal-LM training ids::

    input_ids = prompt_ids + target_ids + [eos]
    labels    = [-100] * len(prompt_ids) + target_ids + [eos]

Prompt and target are tokenised separately (the target keeps its leading space), so the label
boundary is exact. When the sequence is longer than ``max_length`` the prompt is cut from the
left (keeping a leading BOS the tokenizer added); the target is never cut: if target + EOS alone
does not fit, :class:`TargetTooLongError` is raised (the mixture skips and counts such examples).

:class:`MultiTaskMixture` is a map-style dataset over ``{task: [Example, ...]}``. Its order is a
pure function of the seed: each task contributes a number of draws fixed by the weights
(largest-remainder rounding), drawn by cycling through a seeded permutation of that task's
examples, and all draws are then shuffled together with the same seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._files import write_json
from .types import Example

__all__ = [
    "IGNORE_INDEX",
    "MultiTaskMixture",
    "TargetTooLongError",
    "TaskVocabulary",
    "encode_example",
]

IGNORE_INDEX = -100


class TargetTooLongError(ValueError):
    """Target + EOS do not fit in ``max_length`` (the target is never truncated)."""


def _ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_example(
    tokenizer: Any,
    ex: Example,
    max_length: int,
    *,
    chat_template: bool = False,
    task_id: int = 0,
) -> dict[str, Any]:
    """Token ids and labels of one example (see the module docstring for the layout).

    Args:
        tokenizer: a Hugging Face tokenizer with an ``eos_token_id``.
        ex: the example; its ``target`` is trained on.
        max_length: longest allowed sequence (prompt + target + EOS).
        chat_template: wrap the prompt as one user turn with ``apply_chat_template`` (generation
            prompt added) and drop the target's leading whitespace; for instruct models.
        task_id: the integer stored under ``"task_id"`` (see :class:`TaskVocabulary`).

    Returns:
        ``{"input_ids": list[int], "labels": list[int], "task_id": int,
        "prompt_truncated": int}`` (the last: prompt tokens dropped on the left).

    Raises:
        ValueError: no target, or a tokenizer without an EOS token.
        TargetTooLongError: target + EOS are longer than ``max_length``.
    """
    if ex.target is None:
        raise ValueError(f"example {ex.task}/{ex.uid} has no target to train on")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    target = ex.target
    if chat_template:
        messages = [{"role": "user", "content": ex.prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = _ids(tokenizer, text, special=False)  # the template holds the specials
        target = target.lstrip()
    else:
        prompt_ids = _ids(tokenizer, ex.prompt, special=True)
        # Tokenizers that append EOS to every text would put one inside the prompt.
        if prompt_ids and prompt_ids[-1] == eos and len(prompt_ids) > 1:
            prompt_ids = prompt_ids[:-1]
    target_ids = [*_ids(tokenizer, target, special=False), eos]
    if len(target_ids) > max_length - 1:
        raise TargetTooLongError(
            f"example {ex.task}/{ex.uid}: target + EOS is {len(target_ids)} tokens, which leaves "
            f"no room for the prompt in max_length={max_length}"
        )
    room = max_length - len(target_ids)
    dropped = max(0, len(prompt_ids) - room)
    if dropped:
        bos = tokenizer.bos_token_id
        keep_bos = bos is not None and prompt_ids[0] == bos and room >= 2
        tail = prompt_ids[len(prompt_ids) - (room - keep_bos) :]
        prompt_ids = [bos, *tail] if keep_bos else tail
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "task_id": int(task_id),
        "prompt_truncated": dropped,
    }


class TaskVocabulary:
    """A fixed, ordered mapping task name <-> integer id (saved with a run, reloaded to route).

    Ids are positions in ``names`` (give them sorted for an order-free vocabulary:
    :meth:`from_tasks` does).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        if not self.names:
            raise ValueError("TaskVocabulary needs at least one task name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"TaskVocabulary names must be unique, got {list(self.names)}")
        self._ids = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_tasks(cls, names: Iterable[str]) -> TaskVocabulary:
        """Vocabulary of the sorted distinct names (independent of the order given)."""
        return cls(sorted(set(names)))

    def id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(f"task {name!r} is not in the vocabulary {list(self.names)}") from None

    def name(self, task_id: int) -> str:
        if not 0 <= task_id < len(self.names):
            raise KeyError(f"task id {task_id} is outside 0..{len(self.names) - 1}")
        return self.names[task_id]

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskVocabulary) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"TaskVocabulary({list(self.names)})"

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskVocabulary:
        return cls(data["tasks"])

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TaskVocabulary:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _draw_counts(sizes: Mapping[str, int], weights: Any, total: int) -> dict[str, int]:
    """How many draws each task gets: ``total`` split by the weights, largest remainder."""
    names = list(sizes)
    if weights == "proportional":
        raw = {name: float(sizes[name]) for name in names}
    elif weights == "uniform":
        raw = dict.fromkeys(names, 1.0)
    elif isinstance(weights, Mapping):
        extra = sorted(set(weights) - set(names))
        missing = sorted(set(names) - set(weights))
        if extra or missing:
            raise ValueError(
                f"weights keys must be the tasks {names}: extra {extra}, missing {missing}"
            )
        raw = {name: float(weights[name]) for name in names}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    else:
        raise ValueError(f"weights must be 'proportional', 'uniform' or a dict, got {weights!r}")
    norm = sum(raw.values())
    exact = {name: total * w / norm for name, w in raw.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(
        names, key=lambda name: (-(exact[name] - counts[name]), names.index(name))
    )
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


class MultiTaskMixture(torch.utils.data.Dataset):
    """A seeded mixture of several tasks' examples, tokenised for training.

    Args:
        examples: ``{task name: items}``; items are :class:`Example` s (each needs a ``target``;
            they are encoded here, which needs ``tokenizer`` and ``max_length``) or items
            already returned by :func:`encode_example` (used as they are, ``task_id`` included).
        tokenizer: passed to :func:`encode_example` (only for :class:`Example` items).
        max_length: passed to :func:`encode_example` (only for :class:`Example` items).
        weights: ``"proportional"`` (to task size), ``"uniform"`` or ``{task: weight}``.
        seed: fixes the order (same seed, same order).
        num_samples: length of the mixture (default: the total number of usable examples);
            a task is cycled through again once its draws exceed its size.
        vocab: task ids given to encoded :class:`Example` s; default
            ``TaskVocabulary.from_tasks(examples)``.
        chat_template: passed to :func:`encode_example`.

    Attributes:
        skipped: ``{task: count}`` of examples left out because target + EOS did not fit.
        truncated: ``{task: count}`` of examples whose prompt was cut on the left.
        counts: ``{task: number of draws}`` in the mixture.
        order: the ``(task, example index)`` of each position.
    """

    def __init__(
        self,
        examples: Mapping[str, Sequence[Example] | Sequence[Mapping[str, Any]]],
        tokenizer: Any = None,
        max_length: int | None = None,
        *,
        weights: str | Mapping[str, float] = "proportional",
        seed: int = 0,
        num_samples: int | None = None,
        vocab: TaskVocabulary | None = None,
        chat_template: bool = False,
    ) -> None:
        if not examples:
            raise ValueError("MultiTaskMixture needs at least one task")
        self.vocab = vocab or TaskVocabulary.from_tasks(examples)
        self.seed = seed
        self.skipped: dict[str, int] = {}
        self.truncated: dict[str, int] = {}
        self._encoded: dict[str, list[dict[str, Any]]] = {}
        for name, items in examples.items():
            if not items:
                raise ValueError(f"task {name!r} has no examples")
            if all(isinstance(item, Example) for item in items):
                if tokenizer is None or max_length is None:
                    raise ValueError("Example items need a tokenizer and max_length to be encoded")
                if any(ex.task != name for ex in items):
                    raise ValueError(f"examples under {name!r} must all have task {name!r}")
                encoded, skipped = [], 0
                for ex in items:
                    try:
                        encoded.append(encode_example(tokenizer, ex, max_length,
                                                      chat_template=chat_template,
                                                      task_id=self.vocab.id(name)))  # fmt: skip
                    except TargetTooLongError:
                        skipped += 1
            elif all(isinstance(item, Mapping) and "input_ids" in item for item in items):
                encoded, skipped = [dict(item) for item in items], 0
                for item in encoded:
                    if len(item["input_ids"]) != len(item["labels"]) or "task_id" not in item:
                        raise ValueError(f"encoded items of {name!r} need input_ids, labels of "
                                         "the same length and a task_id")  # fmt: skip
            else:
                raise ValueError(f"items of {name!r} must be all Examples or all encoded items")
            if not encoded:
                raise ValueError(f"task {name!r} has no example whose target fits in {max_length}")
            self._encoded[name] = encoded
            self.skipped[name] = skipped
            self.truncated[name] = sum(1 for item in encoded if item.get("prompt_truncated"))
        # Sorted task order: the mixture does not depend on the dict's insertion order.
        sizes = {name: len(self._encoded[name]) for name in sorted(self._encoded)}
        total = sum(sizes.values()) if num_samples is None else num_samples
        if total <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.counts = _draw_counts(sizes, weights, total)
        rng = random.Random(seed)
        order: list[tuple[str, int]] = []
        for name in sizes:
            permutation: list[int] = []
            while len(permutation) < self.counts[name]:
                cycle = list(range(sizes[name]))
                rng.shuffle(cycle)
                permutation.extend(cycle)
            order.extend((name, index) for index in permutation[: self.counts[name]])
        rng.shuffle(order)
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> dict[str, Any]:
        name, index = self.order[position]
        return dict(self._encoded[name][index])
