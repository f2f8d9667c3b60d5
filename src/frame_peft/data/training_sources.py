"""Training data: the papers' training sets (online users) and reasoning-gym math (offline).

The MoE-LoRA papers train on separate training sets, none of which ships offline:

====================  =============================  =========================================
name                  hub id (config, split)         rendering
====================  =============================  =========================================
commonsense170k       zwhe99/commonsense_170k        Alpaca template; target = ``output``
                      (train)                        (e.g. "the correct answer is option1")
metamathqa            meta-math/MetaMathQA (train)   ``Question: {query}\\nAnswer:``;
                                                     response, ``#### <answer>`` appended
math10k               no hub copy; LLM-Adapters'     ``Question: {instruction}\\nAnswer:``;
                      ``math_10k.json`` by path      output, ``#### <answer>`` appended
codealpaca            sahil2801/CodeAlpaca-20k       Alpaca template; target = ``output``
                      (train)
mmlu_auxiliary_train  cais/mmlu (auxiliary_train,    the MMLU prompt (letters); target = gold
                      train)                         letter
====================  =============================  =========================================

The Alpaca template is LLM-Adapters' (the papers' training format)::

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Response:\\n

(with an ``### Input:`` block when ``input`` is non-empty). Its targets differ from the zero-shot
evaluation formats of :mod:`frame_peft.data.tasks`; the papers parse the generated answer
instead. Offline, train on a seeded split of the benchmark itself
(:func:`~frame_peft.data.split_examples`) or on :func:`reasoning_gym_math`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procedural_math import reasoning_gym_math
from .sources import load_hub, read_records
from .tasks.base import HubRef
from .tasks.knowledge import mmlu_prompt
from .tasks.math import format_number
from .types import FAMILIES, Example

__all__ = [
    "TRAINING_SOURCES",
    "TrainingSource",
    "alpaca_prompt",
    "load_training_source",
    "reasoning_gym_math",
]

_ALPACA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """LLM-Adapters' Alpaca prompt, ending in ``"### Response:\\n"``."""
    body = f"### Instruction:\n{instruction.strip()}\n\n"
    if input_text and input_text.strip():
        body += f"### Input:\n{input_text.strip()}\n\n"
    return f"{_ALPACA_HEAD}{body}### Response:\n"


@dataclass(frozen=True)
class TrainingSource:
    """A training set: where it is (hub id, or ``None`` when only a local copy works) and how a
    row becomes an :class:`Example` (``formatter(name, row, index)``)."""

    name: str
    family: str
    hub: HubRef | None
    formatter: Callable[[str, Mapping[str, Any], int], Example]
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"TrainingSource.family {self.family!r} must be one of {FAMILIES}")


def _instruction(name: str, row: Mapping[str, Any], index: int) -> Example:
    meta = {"answer": row["answer"]} if row.get("answer") is not None else {}
    return Example(task=name, uid=str(index), prompt=alpaca_prompt(row["instruction"],
                   row.get("input", "")), target=row["output"].strip(), meta=meta)  # fmt: skip


def _metamath(name: str, row: Mapping[str, Any], index: int) -> Example:
    response = row["response"].strip()
    marker = "The answer is:"
    answer = response.rsplit(marker, 1)[1].strip() if marker in response else None
    target = f" {response}" + (f"\n#### {answer}" if answer else "")
    return Example(task=name, uid=str(index), prompt=f"Question: {row['query'].strip()}\nAnswer:",
                   target=target, answer=answer, meta={"type": row.get("type")})  # fmt: skip


def _math10k(name: str, row: Mapping[str, Any], index: int) -> Example:
    answer = format_number(row["answer"])
    return Example(task=name, uid=str(index),
                   prompt=f"Question: {row['instruction'].strip()}\nAnswer:",
                   target=f" {row['output'].strip()}\n#### {answer}", answer=answer)  # fmt: skip


def _mmlu_auxiliary(name: str, row: Mapping[str, Any], index: int) -> Example:
    row = row.get("train", row)  # some versions of cais/mmlu nest the row under "train"
    choices = list(row["choices"])
    letters = tuple(f" {chr(ord('A') + i)}" for i in range(len(choices)))
    label = int(row["answer"])
    return Example(task=name, uid=str(index),
                   prompt=mmlu_prompt(row.get("subject") or "", row["question"], choices),
                   choices=letters, label=label, target=letters[label])  # fmt: skip


TRAINING_SOURCES: dict[str, TrainingSource] = {
    source.name: source
    for source in (
        TrainingSource("commonsense170k", "commonsense",
                       HubRef("zwhe99/commonsense_170k", None, "train"), _instruction,
                       "LLM-Adapters Commonsense170K (8 commonsense tasks' train sets)"),
        TrainingSource("metamathqa", "math", HubRef("meta-math/MetaMathQA", None, "train"),
                       _metamath, "MetaMathQA (395K augmented GSM8K/MATH solutions)"),
        TrainingSource("math10k", "math", None, _math10k,
                       "LLM-Adapters math_10k.json; no verified hub copy, pass its path"),
        TrainingSource("codealpaca", "code", HubRef("sahil2801/CodeAlpaca-20k", None, "train"),
                       _instruction, "CodeAlpaca-20k instruction/response pairs"),
        TrainingSource("mmlu_auxiliary_train", "knowledge",
                       HubRef("cais/mmlu", "auxiliary_train", "train"), _mmlu_auxiliary,
                       "MMLU auxiliary train (ARC, OBQA, RACE, MCTest questions)"),
    )
}  # fmt: skip


def load_training_source(
    name: str, source: str | Path = "hub", limit: int | None = None
) -> list[Example]:
    """Load a paper's training set as Examples (``Example.task`` is the source name).

    Args:
        name: a key of :data:`TRAINING_SOURCES`.
        source: ``"hub"`` (needs ``datasets`` and network) or a local file with the same rows.
        limit: keep at most this many (the first ones).
    """
    if name not in TRAINING_SOURCES:
        raise ValueError(f"unknown training source {name!r}; known: {sorted(TRAINING_SOURCES)}")
    spec = TRAINING_SOURCES[name]
    if source == "hub":
        if spec.hub is None:
            raise ValueError(f"training source {name!r} has no hub copy; pass its local file path")
        rows = load_hub(spec.hub.dataset_id, spec.hub.config, spec.hub.split)
    else:
        rows = read_records(source)
    if limit is not None:
        rows = rows[:limit]
    return [spec.formatter(name, row, index) for index, row in enumerate(rows)]
