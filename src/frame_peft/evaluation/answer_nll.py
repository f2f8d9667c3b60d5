"""Per-item answer negative log-likelihood: a continuous held-out metric that moves with training.

Accuracy on a few hundred items changes in steps of ``1/n`` and is noisy; the negative
log-likelihood of the *reference answer* given the prompt is continuous, so small differences
between adapters are measurable on the same items. For item ``i`` with prompt ``c_i`` and
reference answer ``y_i`` (multiple choice: the gold choice; math: the worked solution ending in
``#### <answer>``) of ``|y_i|`` tokens,

    nll_i = -(1 / |y_i|) Σ_{t ∈ y_i} log p(t | c_i, earlier tokens of y_i)        (nats / token)

and the task's metric is the mean of ``nll_i`` over items (every item weighs the same, so a long
solution does not dominate; intervals bootstrap the ``nll_i``, :mod:`.intervals`).

Tokenisation and scoring are :func:`~frame_peft.evaluation.multiple_choice.loglikelihoods`'
(lm-eval's ``_encode_pair``), so for a multiple-choice item the gold choice's log-likelihood from
:func:`~frame_peft.evaluation.multiple_choice.score_multiple_choice` is the same number:
:func:`mc_answer_nll` reuses it without a second forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..data.types import Example
from .multiple_choice import encode_pair, loglikelihoods

__all__ = ["ItemNLL", "answer_nll", "mc_answer_nll", "reference_answer"]


@dataclass(frozen=True)
class ItemNLL:
    """One item's answer NLL: summed over ``tokens`` answer tokens; ``per_token`` = the metric."""

    uid: str
    nll: float
    tokens: int

    @property
    def per_token(self) -> float:
        return self.nll / self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_token": self.per_token}


def reference_answer(ex: Example) -> str:
    """The text whose likelihood is scored: the gold choice, else the training target.

    Raises:
        ValueError: an item with neither (nothing to score).
    """
    if ex.choices and ex.label is not None:
        return ex.choices[ex.label]
    if ex.target:
        return ex.target
    raise ValueError(
        f"{ex.task}/{ex.uid} has no gold choice and no target: answer NLL needs a reference "
        "answer (math items need their worked solution as `target`)"
    )


def _tokens(tokenizer: Any, ex: Example, answer: str) -> int:
    return len(encode_pair(tokenizer, ex.prompt, answer)[1])


def answer_nll(
    model: nn.Module, tokenizer: Any, examples: Sequence[Example], *, batch_size: int = 8
) -> list[ItemNLL]:
    """Answer NLL of every example (one forward per item, batched); the caller sets eval mode."""
    if not examples:
        raise ValueError("answer_nll needs at least one example")
    answers = [reference_answer(ex) for ex in examples]
    scored = loglikelihoods(
        model, tokenizer, [(ex.prompt, a) for ex, a in zip(examples, answers, strict=True)],
        batch_size=batch_size,
    )  # fmt: skip
    return [
        ItemNLL(ex.uid, -ll, _tokens(tokenizer, ex, a))
        for ex, a, (ll, _) in zip(examples, answers, scored, strict=True)
    ]


def mc_answer_nll(
    tokenizer: Any, examples: Sequence[Example], predictions: Sequence[dict[str, Any]]
) -> list[ItemNLL]:
    """Answer NLL of multiple-choice items from ``score_multiple_choice``'s ``predictions``
    (their ``logliks`` of every choice), without running the model again.

    Raises:
        ValueError: predictions that do not belong to ``examples`` (count or uid differs).
    """
    if len(examples) != len(predictions):
        raise ValueError(
            f"{len(examples)} examples but {len(predictions)} predictions: pass the predictions "
            "score_multiple_choice returned for exactly these examples"
        )
    out = []
    for ex, pred in zip(examples, predictions, strict=True):
        if pred.get("uid") != ex.uid or ex.label is None:
            raise ValueError(
                f"prediction for {pred.get('uid')!r} does not match example {ex.uid!r} (or the "
                "example has no label); keep the examples in the order they were scored"
            )
        answer = ex.choices[ex.label]
        out.append(
            ItemNLL(ex.uid, -float(pred["logliks"][ex.label]), _tokens(tokenizer, ex, answer))
        )
    return out
