r"""Symbolic math answers (math-verify) for MATH tasks; GSM8K-style tasks keep the numeric check.

The fixture holds equivalent forms the normalised exact match misses (\sqrt{8} vs 2\sqrt{2}, sets,
\frac{\pi}{2} vs \pi/2), forms both accept, and pairs that must never match.
"""

from __future__ import annotations

import sys
import threading
import warnings

import pytest

from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data.types import Example
from frame_peft.evaluation import (
    answers_equal,
    evaluate,
    extract_answer,
    math_equal,
    math_verify_available,
    resolve_checker,
    symbolic_equal,
)
from frame_peft.evaluation import math_verify_check as mvc

# (pred, gold): equal under math-verify, NOT under the normalised exact match
SYMBOLIC_ONLY = [
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("\\{2,1\\}", "\\{1,2\\}"),
    ("\\frac{\\pi}{2}", "\\pi/2"),
    ("\\dfrac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("2, 1", "1,2"),
    ("(-\\infty, 3]", "x \\leq 3"),
    ("[1,3) \\cup [4,5]", "[4,5] \\cup [1,3)"),
    ("x \\in [1,2]", "[1,2]"),
    ("0.1", "10\\%"),
    ("\\frac{2 \\cdot 7}{2}", "7"),
    ("2\\pi", "\\pi + \\pi"),
]
# equal under both checkers
BOTH = [
    ("0.5", "\\frac12"),
    ("\\dfrac{3}{4}", "0.75"),
    ("-\\frac{1}{2}", "-0.5"),
    ("[1,3)", "[1,3)"),
    ("(1,2)", "(1,2)"),
    ("x=5", "5"),
    ("5\\text{ cm}", "5"),
    ("90^\\circ", "90"),
    ("1,234", "1234"),
    ("\\$18", "18"),
    ("\\text{(B)}", "B"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
]
# only the normalised check accepts it; math-verify alone does not (units as words)
NORMALIZED_ONLY = [("18 dollars", "18")]
# must NOT match under any checker
NEVER = [
    ("2\\sqrt{3}", "\\sqrt{8}"),
    ("(1,3)", "[1,3)"),
    ("(1,2)", "(2,1)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("x^2+2x", "(x+1)^2"),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}"),
    ("100005", "100000"),
    ("3", "4"),
    ("-2", "2"),
    ("", "5"),
    (None, "5"),
]


@pytest.mark.parametrize(("pred", "gold"), SYMBOLIC_ONLY)
def test_symbolic_checker_accepts_equivalent_forms_exact_match_misses(pred, gold):
    assert answers_equal(pred, gold, "math_verify")
    assert symbolic_equal(pred, gold)
    assert not answers_equal(pred, gold, "normalized")


@pytest.mark.parametrize(("pred", "gold"), BOTH + NORMALIZED_ONLY)
def test_symbolic_checker_keeps_every_normalised_match(pred, gold):
    assert answers_equal(pred, gold, "normalized")
    assert answers_equal(pred, gold, "math_verify")


def test_normalised_fallback_inside_the_symbolic_checker_is_needed():
    pred, gold = NORMALIZED_ONLY[0]
    assert not symbolic_equal(pred, gold)  # else the fixture no longer tests the union


@pytest.mark.parametrize(("pred", "gold"), NEVER)
def test_non_equivalent_answers_never_match(pred, gold):
    assert not answers_equal(pred, gold, "math_verify")
    assert not answers_equal(pred, gold, "normalized")


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("Hence $x = \\boxed{2\\sqrt{2}}$.", "\\sqrt{8}"),
        ("so the roots are $\\boxed{\\{-1, 3\\}}$", "\\{3,-1\\}"),
        ("The area is \\boxed{\\frac{\\pi}{2}} square units.", "\\pi/2"),
        ("Worked out.\n#### \\frac{1}{2}", "0.5"),
    ],
)
def test_boxed_answer_extracted_then_checked_symbolically(completion, gold):
    assert answers_equal(extract_answer(completion), gold, "math_verify")


def test_resolve_checker_picks_math_verify_for_math_only():
    assert math_verify_available()
    for task in ("math", "math_algebra", "math_precalculus"):
        assert resolve_checker(task) == "math_verify"
    for task in ("gsm8k", "svamp", "mawps", "aqua", "my_own_math"):
        assert resolve_checker(task) == "normalized"
    assert resolve_checker("gsm8k", "math_verify") == "math_verify"
    assert resolve_checker("math", "normalized") == "normalized"
    with pytest.raises(ValueError, match="math_checker must be one of"):
        resolve_checker("math", "sympy")


def test_symbolic_check_works_off_the_main_thread():
    """math-verify's signal timeouts refuse non-main threads; the check runs without them."""
    out: list[object] = []

    def work() -> None:
        try:
            out.append(symbolic_equal("\\sqrt{8}", "2\\sqrt{2}"))
            out.append(symbolic_equal("\\sqrt{8}", "2\\sqrt{3}"))
        except Exception as exc:  # reported below
            out.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert out == [True, False]


@pytest.fixture
def without_math_verify(monkeypatch):
    """math-verify made unimportable (None in sys.modules makes ``import`` raise ImportError)."""
    monkeypatch.setitem(sys.modules, "math_verify", None)
    monkeypatch.setattr(mvc, "_warned_missing", False)


def test_missing_math_verify_warns_once_and_falls_back(without_math_verify):
    assert not math_verify_available()
    with pytest.warns(UserWarning, match=r"frame-peft\[math\]"):
        assert resolve_checker("math") == "normalized"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checker("math_algebra") == "normalized"  # no second warning
    assert answers_equal("\\frac{3}{4}", "0.75", "normalized")
    assert not answers_equal("\\sqrt{8}", "2\\sqrt{2}", "normalized")
    with pytest.raises(ImportError, match=r"frame-peft\[math\]"):
        resolve_checker("math", "math_verify")
    with pytest.raises(ImportError, match="math-verify"):
        symbolic_equal("1", "1")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_text_llama(seed=2), char_tokenizer()


def _examples(task: str, said: str) -> tuple[list[Example], list[str]]:
    said_prompt = "Question: 10-3?\nAnswer:"  # the model answers `said` here
    prompts = [said_prompt, said_prompt, "Question: 2*2?\nAnswer:"]
    golds = [f"\\frac{{2 \\cdot {said}}}{{2}}", said, "2"]
    examples = [
        Example(task=task, uid=str(i), prompt=p, answer=g, meta={"stop": "\n"})
        for i, (p, g) in enumerate(zip(prompts, golds, strict=True))
    ]
    return examples, golds


def _said(model, tok) -> str:
    probe = [Example(task="t", uid="0", prompt="Question: 10-3?\nAnswer:", answer="0",
                     meta={"stop": "\n"})]  # fmt: skip
    res = evaluate(model, tok, {"t": probe}, max_new_tokens=10, progress=False)
    said = res.predictions["t"][0]["pred"]
    assert said is not None, "the seed-2 model should write a number for this prompt"
    return said


def test_evaluate_scores_math_symbolically_and_gsm8k_numerically(model_and_tokenizer):
    model, tok = model_and_tokenizer
    said = _said(model, tok)
    math_ex, golds = _examples("math", said)
    gsm_ex, _ = _examples("gsm8k", said)
    res = evaluate(model, tok, {"math": math_ex, "gsm8k": gsm_ex}, max_new_tokens=10,
                   progress=False)  # fmt: skip
    assert res.metadata["math_checkers"] == {"math": "math_verify", "gsm8k": "normalized"}
    assert res.metadata["settings"]["math_checker"] == "auto"
    math_preds, gsm_preds = res.predictions["math"], res.predictions["gsm8k"]
    assert [p["completion"] for p in math_preds] == [p["completion"] for p in gsm_preds]
    # GSM8K: exactly the normalised exact match, as before
    expected = [math_equal(p["pred"], g) for p, g in zip(gsm_preds, golds, strict=True)]
    assert [p["correct"] for p in gsm_preds] == expected
    assert expected[:2] == [False, True]  # \frac{2·n}{2} is not a normalised match
    # MATH: the symbolic checker also accepts \frac{2·n}{2}
    assert [p["correct"] for p in math_preds][:2] == [True, True]
    assert res.tasks["math"].metrics["exact_match"] > res.tasks["gsm8k"].metrics["exact_match"]


def test_evaluate_without_math_verify_records_the_fallback(
    model_and_tokenizer, without_math_verify
):
    model, tok = model_and_tokenizer
    examples, _ = _examples("math", "7")
    with pytest.warns(UserWarning, match="math-verify is not installed"):
        res = evaluate(model, tok, {"math": examples}, max_new_tokens=4, progress=False)
    assert res.metadata["math_checkers"] == {"math": "normalized"}
    with pytest.raises(ImportError, match=r"frame-peft\[math\]"):
        evaluate(model, tok, {"math": examples}, max_new_tokens=4, progress=False,
                 math_checker="math_verify")  # fmt: skip
    with pytest.raises(ValueError, match="math_checker"):
        evaluate(model, tok, {"math": examples}, progress=False, math_checker="exact")
