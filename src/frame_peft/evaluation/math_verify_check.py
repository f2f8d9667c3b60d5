r"""Which checker decides a math answer, and the symbolic one built on ``math-verify``.

Two checkers compare an extracted answer (:func:`~frame_peft.evaluation.math_answer.extract_answer`)
with the gold one:

``"normalized"``
    :func:`~frame_peft.evaluation.math_answer.math_equal`: exact match after normalisation,
    numbers compared as exact fractions. Right for answers that are numbers (GSM8K, SVAMP, MAWPS)
    or option letters (AQuA), and the only checker those tasks use.
``"math_verify"``
    Hugging Face's ``math-verify`` (optional extra ``frame-peft[math]``): both answers are parsed
    as LaTeX into SymPy and compared symbolically (``\sqrt{8}`` = ``2\sqrt{2}``, ``(x+1)^2`` =
    ``x^2+2x+1``, ``\{1,2\}`` = ``\{2,1\}``, ``\frac{\pi}{2}`` = ``\pi/2``, intervals, tuples).
    When it says no, the ``"normalized"`` check is still tried, so every answer the normalised
    checker accepts (``18 dollars`` = ``18``) stays accepted: the symbolic checker only adds
    matches. MATH answers are LaTeX expressions, which exact matching under-scores.

:func:`resolve_checker` picks one per task: with ``"auto"`` (the default of
:func:`~frame_peft.evaluation.evaluate`) the MATH tasks (:data:`SYMBOLIC_TASKS`: ``math`` and
``math_<subject>``) get ``"math_verify"`` and every other math task ``"normalized"``. When
``math-verify`` is not installed, ``"auto"`` falls back to ``"normalized"`` with one warning naming
the extra (scores then differ from a run with it: the checker used is recorded in the results'
metadata so numbers stay traceable); asking for ``"math_verify"`` explicitly raises instead.

Timeouts: ``math-verify`` bounds parsing and comparison with ``signal.alarm``, which only works in
the main thread. :func:`symbolic_equal` uses ``timeout_seconds`` there and runs without a time limit
in any other thread (``math-verify`` would refuse otherwise); a comparison that times out counts
as "not equal" (``math-verify`` logs it).
"""

from __future__ import annotations

import threading
import warnings
from types import ModuleType
from typing import Literal

from ..data.tasks.math import MATH_SUBJECTS
from .math_answer import math_equal

__all__ = [
    "CHECKERS",
    "MATH_VERIFY_EXTRA",
    "SYMBOLIC_TASKS",
    "answers_equal",
    "math_verify_available",
    "resolve_checker",
    "symbolic_equal",
]

Checker = Literal["math_verify", "normalized"]
CHECKERS: tuple[str, ...] = ("auto", "math_verify", "normalized")
MATH_VERIFY_EXTRA = "pip install 'frame-peft[math]' (or: pip install 'math-verify[antlr4_13_2]')"
SYMBOLIC_TASKS: frozenset[str] = frozenset({"math", *(f"math_{s}" for s in MATH_SUBJECTS)})

_warned_missing = False  # the fallback warning is given once per process


def _load_math_verify() -> ModuleType | None:
    """The ``math_verify`` module, or ``None`` when it (or its LaTeX parser) cannot be imported."""
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def math_verify_available() -> bool:
    """Whether ``math-verify`` can be imported (the ``frame-peft[math]`` extra is installed)."""
    return _load_math_verify() is not None


def resolve_checker(task: str, requested: str = "auto") -> Checker:
    """The checker scoring ``task``'s answers when ``requested`` (one of :data:`CHECKERS`).

    ``"auto"``: ``"math_verify"`` for :data:`SYMBOLIC_TASKS` when installed, else (with a one-time
    warning) ``"normalized"``; ``"normalized"`` for every other task.

    Raises:
        ValueError: ``requested`` is not one of :data:`CHECKERS`.
        ImportError: ``"math_verify"`` was asked for explicitly and is not installed.
    """
    global _warned_missing
    if requested not in CHECKERS:
        raise ValueError(f"math_checker must be one of {CHECKERS}, got {requested!r}")
    if requested == "normalized":
        return "normalized"
    if requested == "auto" and task not in SYMBOLIC_TASKS:
        return "normalized"
    if math_verify_available():
        return "math_verify"
    if requested == "math_verify":
        raise ImportError(f"math_checker='math_verify' needs math-verify: {MATH_VERIFY_EXTRA}")
    if not _warned_missing:
        warnings.warn(
            f"math-verify is not installed, so MATH answers (task {task!r}) are scored by the "
            f"normalised exact-match checker, which misses equivalent forms such as \\sqrt{{8}} "
            f"vs 2\\sqrt{{2}}; scores are not comparable with math-verify runs. To fix: "
            f"{MATH_VERIFY_EXTRA}",
            UserWarning,
            stacklevel=2,
        )
        _warned_missing = True
    return "normalized"


def _boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def symbolic_equal(pred: str | None, gold: str, *, timeout_seconds: int = 5) -> bool:
    r"""Whether ``math-verify`` finds the extracted answer ``pred`` equal to ``gold``.

    Both are wrapped in ``\boxed{…}`` and parsed with LaTeX then plain-expression extraction;
    ``verify(gold, pred)`` compares them (gold first: ``math-verify`` is asymmetric, e.g. it
    reads ``x = 5`` in a prediction as ``5``). ``timeout_seconds`` bounds each parse and
    comparison in the main thread (no limit elsewhere, see the module docstring).

    Raises:
        ImportError: ``math-verify`` is not installed.
    """
    mv = _load_math_verify()
    if mv is None:
        raise ImportError(f"symbolic_equal needs math-verify: {MATH_VERIFY_EXTRA}")
    if pred is None or not pred.strip() or not gold.strip():
        return False
    limit = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    parsed_gold = mv.parse(_boxed(gold), extraction_config=config, parsing_timeout=limit)
    parsed_pred = mv.parse(_boxed(pred), extraction_config=config, parsing_timeout=limit)
    if not parsed_gold or not parsed_pred:
        return False
    return bool(mv.verify(parsed_gold, parsed_pred, timeout_seconds=limit))


def answers_equal(pred: str | None, gold: str, checker: Checker) -> bool:
    """Whether ``pred`` (an extracted answer, ``None`` when none was found) matches ``gold``
    under ``checker`` (``"math_verify"``: symbolic, else the normalised check; ``"normalized"``:
    :func:`~frame_peft.evaluation.math_answer.math_equal`)."""
    if checker == "normalized":
        return math_equal(pred, gold)
    if checker == "math_verify":
        return symbolic_equal(pred, gold) or math_equal(pred, gold)
    raise ValueError(f"unknown math checker {checker!r}; use 'math_verify' or 'normalized'")
