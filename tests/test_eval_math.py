"""Math answers (extraction, normalisation, comparison) and batched greedy generation."""

from __future__ import annotations

import warnings

import pytest
import torch

from _tokenizer import char_tokenizer, tiny_text_llama
from frame_peft.data.types import Example
from frame_peft.evaluation import (
    cut_at_stop,
    evaluate,
    extract_answer,
    extract_code,
    generate_completions,
    math_equal,
    normalize_answer,
    parse_number,
)
from frame_peft.evaluation.generation import render_prompt

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. "#### X" wins over everything else, last one, rest of its line
        ("She pays 3 + 15 = 18.\n#### 18", "18"),
        ("#### 5\nmore text 7 \\boxed{9}", "5"),
        ("first #### 1\nthen #### 1,234 dollars\n", "1,234 dollars"),
        # 2. \boxed{...}, nested braces, the last one, \fbox, \boxed without braces
        ("so the value is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{3} then \\boxed{4}", "4"),
        ("\\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("\\fbox{12}", "12"),
        ("$\\boxed 5$", "5"),
        # 3. "The answer is X": case-insensitive, optional colon, up to the sentence end
        ("Thus the answer is 42.", "42"),
        ("THE ANSWER IS: (B). Next question", "(B)"),
        ("The answer is $3.50. I think.", "$3.50"),
        ("the answer is 18 dollars\nQuestion: ...", "18 dollars"),
        ("So the answer is 7. The answer is 8.", "8"),
        # 4. else the last number
        ("5 apples and 3 pears make 8", "8"),
        ("costs -3.25 now", "-3.25"),
        ("ratio 3/4, done", "3/4"),
        ("it is .5 of it", ".5"),
        ("total 1,000,000 people", "1,000,000"),
        ("word2vec has no standalone number", None),
        ("no numbers at all", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("18", "18"),
        (" 18.0 ", "18"),
        ("18.00", "18"),
        ("3.50", "3.5"),
        ("18.", "18"),
        ("$1,234", "1234"),
        ("1,234,567.50", "1234567.5"),
        ("50%", "50"),
        ("50\\%", "50"),
        ("\\$5", "5"),
        ("1/2", "0.5"),
        ("2/3", "2/3"),
        ("4/6", "2/3"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{1}{3}", "1/3"),
        ("-\\tfrac{1}{8}", "-0.125"),
        ("\\frac12", "0.5"),
        ("+7", "7"),
        ("\u22127", "-7"),
        ("1e-3", "0.001"),
        ("x = 5", "5"),
        ("18 dollars", "18"),
        ("5\\text{ cm}", "5"),
        ("90^\\circ", "90"),
        ("(B)", "B"),
        ("C)", "C"),
        ("\\text{(D)}", "D"),
        ("(1,2)", "(1,2)"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\(x^2\\)", "x^2"),
        ("2x + 1", "2x+1"),
    ],
)
def test_normalize_answer(raw, canonical):
    assert normalize_answer(raw) == canonical


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("$18.00", "18", True),
        ("1,000", "1000", True),
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.5", True),
        ("0.3333333", "1/3", True),  # non-integers: relative tolerance 1e-6
        ("0.333", "1/3", False),
        ("100005", "100000", False),  # integers: exact only
        ("17", "18", False),
        ("-5", "5", False),
        ("(B)", "B", True),
        ("B", "C", False),
        ("\\sqrt{2}", "\\sqrt2", True),
        ("(1, 2)", "(1,2)", True),
        (None, "18", False),
        ("x", "18", False),
    ],
)
def test_math_equal(pred, gold, equal):
    assert math_equal(pred, gold) is equal


def test_end_to_end_extract_then_compare():
    text = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"
    assert math_equal(extract_answer(text), "72")
    assert math_equal(extract_answer("so we get \\boxed{\\dfrac{6}{4}}"), "1.5")
    assert not math_equal(extract_answer("I do not know"), "3")


def test_parse_number_rejects_non_numbers():
    assert parse_number("3/0") is None
    assert parse_number("abc") is None
    assert parse_number("1.5.2") is None
    assert parse_number("-2.50") == parse_number("-5/2")


def test_cut_at_stop_and_extract_code():
    assert cut_at_stop("a #### 3\n\nQuestion: b", ["Question:", "\n\n\n"]) == "a #### 3\n\n"
    assert cut_at_stop("no stop", ["X"]) == "no stop"
    assert cut_at_stop("xaby", ["b", "a"]) == "x"  # the earliest stop wins, not the first listed
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == (
        "def f():\n    return 1\n"
    )
    assert extract_code("    return 1\n") == "    return 1\n"
    # code ran unfenced up to a closing fence, then prose
    assert extract_code("def f():\n    return 1\n```\nIn this code...") == (
        "def f():\n    return 1\n"
    )
    # an example block first, the function in the second one
    text = "Usage:\n```\nf()\n```\nCode:\n```py\ndef f():\n    pass\n```"
    assert extract_code(text) == "def f():\n    pass\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_text_llama(seed=2), char_tokenizer()


def _greedy_alone(model, tok, prompt: str, n: int) -> str:
    """Reference: plain argmax decoding of one unpadded prompt, no cache, no generate()."""
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            ids.append(nxt)
    return tok.decode(ids[len(tok(prompt)["input_ids"]) :], skip_special_tokens=True)


PROMPTS = ["Question: 2+2?\nAnswer:", "Q:", "A long question about apples and pears?\nAnswer:"]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_greedy_equals_unbatched_reference(model_and_tokenizer, batch_size):
    model, tok = model_and_tokenizer
    got = generate_completions(model, tok, PROMPTS, max_new_tokens=12, batch_size=batch_size)
    assert got == [_greedy_alone(model, tok, p, 12) for p in PROMPTS]
    assert tok.padding_side == "right"  # the caller's tokenizer is left as it was


def test_stop_strings_cut_and_stop_early(model_and_tokenizer):
    model, tok = model_and_tokenizer
    full = [_greedy_alone(model, tok, p, 16) for p in PROMPTS]
    # a stop string made of the 3rd and 4th generated characters of each row's free run
    stops = sorted({t[2:4] for t in full if len(t) >= 4})
    got = generate_completions(model, tok, PROMPTS, max_new_tokens=16, stop=stops, batch_size=3)
    assert got == [cut_at_stop(t, stops) for t in full]
    assert all(not any(s in g for s in stops) for g in got)


def test_chat_template_renders_one_user_turn():
    tok = char_tokenizer()
    assert render_prompt(tok, "hi", chat=True) == ("hi", True)  # no template: raw prompt
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_prompt(tok, "hi", chat=True) == ("<user>hi\n<assistant>", False)
    assert render_prompt(tok, "hi", chat=False) == ("hi", True)


def test_evaluate_math_scores_the_extracted_answers(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["Question: 10-3?\nAnswer:", "Question: 1+1?\nAnswer:", "Question: 2*2?\nAnswer:"]
    free = [cut_at_stop(_greedy_alone(model, tok, p, 10), ["\n"]) for p in prompts]
    said = extract_answer(free[0])
    assert said is not None, f"the seed-2 model should write a number here, wrote {free[0]!r}"
    golds = [f"{said}.0", "2", "4"]  # the first is right (after normalisation), the others not
    examples = [
        Example(task="toy_math", uid=str(i), prompt=p, answer=g, meta={"stop": "\n"})
        for i, (p, g) in enumerate(zip(prompts, golds, strict=True))
    ]
    res = evaluate(model, tok, {"toy_math": examples}, max_new_tokens=10, progress=False)
    preds = res.predictions["toy_math"]
    assert [p["completion"] for p in preds] == free
    expected = [math_equal(extract_answer(t), g) for t, g in zip(free, golds, strict=True)]
    assert expected[0] and [p["correct"] for p in preds] == expected
    assert res.tasks["toy_math"].metrics["exact_match"] == pytest.approx(sum(expected) / 3)
    assert res.tasks["toy_math"].kind == "math" and res.tasks["toy_math"].family == "other"
