r"""Final-answer extraction and comparison for math tasks (exact match after normalisation).

:func:`extract_answer` looks for, in this order (the last occurrence of each form wins):

1. ``#### X`` (GSM8K): ``X`` = the rest of that line;
2. ``\boxed{X}`` (MATH; nested braces kept, also ``\fbox{X}`` and ``\boxed X``);
3. ``The answer is X`` (case-insensitive, an optional ``:``): ``X`` = the rest of the line up
   to a sentence end (``". "``), trailing period dropped;
4. otherwise the last number in the text (``-1,234.5``, ``3/4``, ``.5``);

and returns ``None`` when none is present.

:func:`normalize_answer` canonicalises a string: strips whitespace, ``$``, ``\$``, ``%``,
``\%``, ``\(``/``\)``, ``\left``/``\right``, thin spaces, degree marks, ``\text{…}`` wrappers,
a trailing period and thousands separators (``1,234`` → ``1234``; ``(1,2)`` keeps its comma);
takes the right-hand side of ``x = 5``; reads ``(B)``/``B)`` as ``B``; drops unit words after a
number (``18 dollars`` → ``18``). A numeric result (integer, decimal, ``a/b``, ``\frac{a}{b}``,
``\frac12``, ``1e-3``) is written canonically: an integer without ``.0`` or trailing zeros, a
terminating fraction as a decimal (``1/2`` → ``0.5``), any other fraction as ``p/q``.

:func:`math_equal` is ``True`` when the normalised strings are equal, or both are numbers and
equal as exact fractions, or (not both integers) within ``1e-6 · max(1, |gold|)`` (so
``0.3333333`` matches ``1/3`` but ``100005`` never matches ``100000``).

:func:`math_equal` scores GSM8K-style tasks (numbers, option letters). MATH answers are LaTeX
expressions and go through the symbolic checker of
:mod:`frame_peft.evaluation.math_verify_check` (math-verify), which falls back to this one.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ..data.tasks.math import last_boxed

__all__ = ["extract_answer", "math_equal", "normalize_answer", "parse_number"]

_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+(?:\.\d+)?)?"
_LAST_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text`` (see the module docstring for the rules), raw."""
    if "####" in text:
        answer = text[text.rindex("####") + 4 :].split("\n", 1)[0].strip()
        if answer:
            return answer
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        line = text[matches[-1].end() :].split("\n", 1)[0]
        answer = re.split(r"\.\s", line, maxsplit=1)[0].strip()
        answer = answer.rstrip(".").strip()
        if answer:
            return answer
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None


_LATEX_DROP = (
    "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "\\%", "$", "%",
    "^\\circ", "^{\\circ}", "\\circ", "\\displaystyle",
)  # fmt: skip
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}$|^(-?)\\frac(\d)(\d)$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_UNITS_AFTER_NUMBER = re.compile(rf"^({_NUMBER})\s+[A-Za-z][A-Za-z\s]*$")
_LETTER = re.compile(r"^\(?([A-J])\)?$")


def parse_number(text: str) -> Fraction | None:
    """The exact value of an integer, decimal, ``a/b``, ``\\frac{a}{b}`` or ``\\frac12`` string
    (already normalised: no spaces, no separators), else ``None``."""
    match = _FRAC.match(text)
    if match:
        sign, num, den = (match.group(1), match.group(2), match.group(3))
        if num is None:
            sign, num, den = match.group(4), match.group(5), match.group(6)
        a, b = parse_number(num), parse_number(den)
        if a is None or b is None or b == 0:
            return None
        return -a / b if sign else a / b
    if "/" in text:
        num, _, den = text.partition("/")
        a, b = parse_number(num), parse_number(den)
        return None if a is None or b is None or b == 0 else a / b
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", text):
        return None
    return Fraction(text)


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = abs(int(value * 10**digits))
    body = str(scaled).rjust(digits + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{body[:-digits]}.{body[-digits:]}"


def normalize_answer(answer: str) -> str:
    """Canonical form of an answer string (rules in the module docstring)."""
    s = answer.strip().replace("\u2212", "-")
    for wrapper in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(wrapper[0]) and s.endswith(wrapper[1]):
            s = s[2:-2]
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    for token in _LATEX_DROP:
        s = s.replace(token, "")
    s = s.strip()
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().rstrip(".").strip()
    s = _THOUSANDS.sub("", s)
    letter = _LETTER.match(s)
    if letter:
        return letter.group(1)
    units = _UNITS_AFTER_NUMBER.match(s)
    if units:
        s = units.group(1)
    s = s.replace(" ", "")
    if s.startswith("+"):
        s = s[1:]
    value = parse_number(s)
    return _canonical(value) if value is not None else s


def math_equal(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer matches the gold one (rules in the module docstring)."""
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g:
        return True
    pv, gv = parse_number(p), parse_number(g)
    if pv is None or gv is None:
        return False
    if pv == gv:
        return True
    if pv.denominator == 1 and gv.denominator == 1:
        return False
    return abs(pv - gv) <= Fraction(1, 10**6) * max(1, abs(gv))
