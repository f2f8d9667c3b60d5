"""Seeded, disjoint train/eval splits of one task's examples, with a record of what was done.

Only evaluation splits ship offline, so offline training carves a train part out of a benchmark's
own evaluation set. This is *not* the papers' protocol (they train on separate training sets) and
every result obtained this way must say so; :class:`SplitRecord` carries that statement.

How the split is made (deterministic, independent of the input order):

1. examples are grouped by prompt text, so identical prompts (HellaSwag repeats some contexts)
   always land on the same side;
2. each group gets the rank ``sha256(f"{seed}:{smallest uid in the group}")``;
3. groups are taken in rank order into the eval part while they fit in ``eval_size``; the rest
   is the train part. Both parts are returned in rank order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .types import Example

__all__ = ["PROTOCOL", "SplitLeakError", "SplitRecord", "check_disjoint", "split_examples"]

PROTOCOL = "offline seeded split of the shipped evaluation set, NOT the papers' protocol"


class SplitLeakError(ValueError):
    """An example (same task and uid, or the same prompt text) is in both train and eval."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def eval_uids_sha256(examples: Iterable[Example]) -> str:
    """sha256 of the sorted eval uids joined by newlines (identifies an eval set)."""
    return _sha256("\n".join(sorted(ex.uid for ex in examples)))


@dataclass(frozen=True)
class SplitRecord:
    """What :func:`split_examples` did; JSON-serialisable (:meth:`to_dict`, :meth:`to_json`)."""

    task: str
    seed: int
    total: int
    train_size: int
    eval_size: int
    eval_uids_sha256: str
    requested_eval_size: int | float
    protocol: str = PROTOCOL
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitRecord:
        return cls(**{**data, "notes": tuple(data.get("notes", ()))})


def _eval_count(eval_size: int | float, total: int) -> int:
    if isinstance(eval_size, bool) or not isinstance(eval_size, int | float):
        raise ValueError(f"eval_size must be an int or a float, got {eval_size!r}")
    if isinstance(eval_size, float):
        if not 0.0 < eval_size < 1.0:
            raise ValueError(f"eval_size as a fraction must be in (0, 1), got {eval_size}")
        count = round(eval_size * total)
    else:
        count = eval_size
    if not 0 < count < total:
        raise ValueError(
            f"eval_size={eval_size!r} gives {count} eval examples out of {total}; "
            "both parts must be non-empty"
        )
    return count


def split_examples(
    examples: Sequence[Example], *, eval_size: int | float, seed: int
) -> tuple[list[Example], list[Example], SplitRecord]:
    """Split one task's examples into disjoint train and eval parts.

    Args:
        examples: examples of a single task, uids unique.
        eval_size: number of eval examples (int) or fraction of all of them (float in (0, 1)).
            Groups of identical prompts are never cut, so the eval part can end up a few
            examples smaller than asked when the last groups do not fit.
        seed: the split seed; the same seed and examples give the same split in any order.

    Returns:
        ``(train, eval, record)``.

    Raises:
        ValueError: several tasks, duplicate uids, or an ``eval_size`` leaving a part empty.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    tasks = sorted({ex.task for ex in examples})
    if len(tasks) != 1:
        raise ValueError(f"split_examples expects the examples of one task, got tasks {tasks}")
    counts = Counter(ex.uid for ex in examples)
    if len(counts) != len(examples):
        dupes = sorted(uid for uid, n in counts.items() if n > 1)[:5]
        raise ValueError(f"task {tasks[0]!r}: duplicate uids {dupes}; uids must be unique")
    target = _eval_count(eval_size, len(examples))

    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.prompt, []).append(ex)
    ranked = []
    for members in groups.values():
        members.sort(key=lambda ex: ex.uid)
        ranked.append((_sha256(f"{seed}:{members[0].uid}"), members))
    ranked.sort(key=lambda item: item[0])

    train: list[Example] = []
    evals: list[Example] = []
    for _, members in ranked:
        if len(evals) + len(members) <= target:
            evals.extend(members)
        else:
            train.extend(members)
    notes = ()
    if len(evals) != target:
        notes = (f"eval has {len(evals)} examples, not {target}: identical prompts kept together",)
    record = SplitRecord(
        task=tasks[0],
        seed=seed,
        total=len(examples),
        train_size=len(train),
        eval_size=len(evals),
        eval_uids_sha256=eval_uids_sha256(evals),
        requested_eval_size=eval_size,
        notes=notes,
    )
    check_disjoint(train, evals)
    return train, evals, record


def check_disjoint(train: Iterable[Example], evals: Iterable[Example]) -> None:
    """Raise :class:`SplitLeakError` if train and eval share a ``(task, uid)`` or a prompt text.

    Prompts are compared after stripping surrounding whitespace, across tasks (a generated math
    problem must not repeat a held-out GSM8K question either).
    """
    train = list(train)
    eval_keys = set()
    eval_prompts = set()
    for ex in evals:
        eval_keys.add((ex.task, ex.uid))
        eval_prompts.add(ex.prompt.strip())
    shared_uids = sorted(f"{ex.task}/{ex.uid}" for ex in train if (ex.task, ex.uid) in eval_keys)
    if shared_uids:
        raise SplitLeakError(
            f"{len(shared_uids)} examples are in both train and eval, e.g. {shared_uids[:5]}"
        )
    shared_prompts = [ex for ex in train if ex.prompt.strip() in eval_prompts]
    if shared_prompts:
        first = shared_prompts[0]
        raise SplitLeakError(
            f"{len(shared_prompts)} train examples repeat an eval prompt word for word, e.g. "
            f"{first.task}/{first.uid}: {first.prompt[:80]!r}"
        )
