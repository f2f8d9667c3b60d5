"""The record every task, the training mix and the evaluators share.

An :class:`Example` is one benchmark or training item, already rendered to text by its task: the
prompt the model sees, plus what is needed to train on it (``target``) and to score it
(``choices``/``label`` for multiple choice, ``answer`` for math, ``tests``/``entry_point`` for
code). Nothing downstream needs to know which dataset an example came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FAMILIES", "Example", "TaskKind"]

FAMILIES = ("commonsense", "math", "code", "knowledge")


class TaskKind(StrEnum):
    """How a task is scored."""

    MULTIPLE_CHOICE = "multiple_choice"  # log-likelihood of each choice after the prompt
    MATH = "math"  # greedy generation, extracted answer == ``answer``
    CODE = "code"  # greedy generation, ``prompt + completion + tests`` run in a sandbox


@dataclass(frozen=True)
class Example:
    """One rendered item of a task.

    Attributes:
        task: registry name of the task (``"arc_easy"``, ``"gsm8k"``, ...).
        uid: id unique and stable within the task; the seeded train/eval split is made on it.
        prompt: the text the model is conditioned on (instruction, question, ``"Answer:"``...).
        choices: multiple choice only: the continuations scored after ``prompt``, each written
            exactly as appended to it (normally with a leading space).
        label: multiple choice only: index of the gold entry of ``choices``.
        target: the completion trained on after ``prompt`` (multiple choice: ``choices[label]``;
            math: worked solution ending in the answer; code: the reference solution).
        answer: math only: the canonical short answer compared after extraction (``"18"``).
        tests: code only: a test program that defines ``check(candidate)`` (HumanEval style) or
            plain ``assert`` lines (MBPP style).
        entry_point: code only: name of the function under test.
        meta: anything else worth keeping (source file, original fields, split record).
    """

    task: str
    uid: str
    prompt: str
    choices: tuple[str, ...] = ()
    label: int | None = None
    target: str | None = None
    answer: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label is not None and not 0 <= self.label < len(self.choices):
            raise ValueError(
                f"Example {self.task}/{self.uid}: label {self.label} is not an index of its "
                f"{len(self.choices)} choices"
            )
