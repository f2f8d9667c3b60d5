"""Multiple choice by log-likelihood, the way lm-eval scores it.

For an example with prompt ``c`` and choices ``x_1 … x_K``, each choice gets

    ll_k = Σ_{t ∈ tokens(x_k)} log p(t | c, earlier tokens of x_k)

and the metrics are

    acc      = [argmax_k ll_k            == label]
    acc_norm = [argmax_k ll_k / |x_k|    == label],   |x_k| = characters of x_k.lstrip()

``|x_k|`` counts characters (not bytes, not tokens) of the choice without its leading
whitespace: that is lm-eval's ``acc_norm`` (``len(choice)``, the ``target_delimiter`` " " not
counted) for the usual rendering where the choice is stored with its leading space.

Tokenisation follows lm-eval's ``_encode_pair``: trailing whitespace of the context moves to the
start of the continuation, then ``context + continuation`` and ``context`` are encoded with the
tokenizer's default special tokens and the continuation tokens are the tail of the whole
encoding past the context's length (so a merge across the boundary is scored as continuation).
An empty context is replaced by the BOS (else EOS) token. Sequences longer than the model's
``max_position_embeddings`` keep their last ``max_length + 1`` tokens (lm-eval's left truncation).

All (example, choice) pairs are scored together: sorted by length (longest first), padded to the
batch's longest, one forward per batch under ``torch.inference_mode()`` and
:func:`frame_peft.routing_context` (so routers see the padding mask). With left padding the
position ids are ``cumsum(mask) − 1`` so every row sees the positions it would alone. The
prompt is recomputed for every choice (no prefix sharing): simple and exactly equal to scoring
one pair at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.types import Example
from ..routing.context import routing_context
from ._model_io import accepts_position_ids, max_positions, model_device, pad_id

__all__ = ["MultipleChoiceOutput", "encode_pair", "loglikelihoods", "score_multiple_choice"]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-eval encodes them (see module docstring)."""
    if not continuation:
        raise ValueError("cannot score an empty continuation")
    if context == "":
        prefix = tokenizer.bos_token_id
        prefix = tokenizer.eos_token_id if prefix is None else prefix
        if prefix is None:
            raise ValueError("empty context and the tokenizer has neither a BOS nor an EOS token")
        return [int(prefix)], list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer(context + continuation)["input_ids"])
    ctx = list(tokenizer(context)["input_ids"])
    return ctx, whole[len(ctx) :]


@dataclass(frozen=True)
class _Request:
    index: int
    inputs: list[int]  # model input: (context + continuation)[-(max_len + 1):][:-1]
    targets: list[int]  # the continuation tokens scored


def _requests(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int | None) -> list[_Request]:
    out = []
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise ValueError(
                f"continuation {continuation!r} after {context[-40:]!r} encodes to no tokens"
            )
        tokens = ctx + cont
        if max_len is not None:
            if len(cont) > max_len:
                raise ValueError(
                    f"continuation of {len(cont)} tokens is longer than the model's {max_len}"
                )
            tokens = tokens[-(max_len + 1) :]
        out.append(_Request(i, tokens[:-1], cont))
    return out


def loglikelihoods(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "loglikelihood",
) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), is_greedy)`` for every ``(context, continuation)`` pair.

    ``is_greedy`` says every continuation token is the argmax of its distribution. ``max_length``
    defaults to the model's maximum positions. The model's train/eval state is left as is (the
    caller sets eval mode).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    max_len = max_length if max_length is not None else max_positions(model)
    requests = sorted(_requests(tokenizer, pairs, max_len), key=lambda r: -len(r.inputs))
    pass_positions = accepts_position_ids(model)
    if padding_side == "left" and not pass_positions:
        raise ValueError("left padding needs a model whose forward takes position_ids")
    device, fill = model_device(model), pad_id(tokenizer)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    bar = _bar(len(batches), progress, desc)
    for batch in batches:
        width = len(batch[0].inputs)  # sorted longest first
        ids = torch.full((len(batch), width), fill, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):
            n = len(req.inputs)
            cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(req.inputs)
            mask[row, cols] = 1
        ids, mask = ids.to(device), mask.to(device)
        kwargs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        if pass_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode(), routing_context(attention_mask=mask):
            logits = model(**kwargs).logits
            for row, req in enumerate(batch):
                n, c = len(req.inputs), len(req.targets)
                end = width if padding_side == "left" else n
                logp = torch.log_softmax(logits[row, end - c : end].float(), dim=-1)
                target = torch.tensor(req.targets, device=logp.device)
                ll = logp.gather(-1, target[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == target).all())
                results[req.index] = (ll, greedy)
        bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]


@dataclass
class MultipleChoiceOutput:
    """``metrics`` = ``{"acc", "acc_norm"}`` (fractions); one ``predictions`` dict per example."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))  # ties -> first, as numpy


def score_multiple_choice(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = False,
    desc: str = "multiple choice",
) -> MultipleChoiceOutput:
    """Score ``examples`` (each with ``choices`` and ``label``); see the module docstring."""
    if not examples:
        raise ValueError("score_multiple_choice needs at least one example")
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        if not ex.choices or ex.label is None:
            raise ValueError(f"{ex.task}/{ex.uid} is not multiple choice (needs choices and label)")
        for choice in ex.choices:
            pairs.append((ex.prompt, choice))
            owners.append(i)
    scored = loglikelihoods(
        model,
        tokenizer,
        pairs,
        batch_size=batch_size,
        padding_side=padding_side,
        progress=progress,
        desc=desc,
    )
    per_example: list[list[float]] = [[] for _ in examples]
    for owner, (ll, _) in zip(owners, scored, strict=True):
        per_example[owner].append(ll)
    predictions, acc, acc_norm = [], 0, 0
    for ex, lls in zip(examples, per_example, strict=True):
        lengths = [max(len(c.lstrip()), 1) for c in ex.choices]
        pred = _argmax(lls)
        pred_norm = _argmax([ll / n for ll, n in zip(lls, lengths, strict=True)])
        acc += pred == ex.label
        acc_norm += pred_norm == ex.label
        predictions.append(
            {
                "uid": ex.uid,
                "label": ex.label,
                "pred": pred,
                "pred_norm": pred_norm,
                "correct": pred == ex.label,
                "correct_norm": pred_norm == ex.label,
                "logliks": lls,
            }
        )
    n = len(examples)
    return MultipleChoiceOutput({"acc": acc / n, "acc_norm": acc_norm / n}, predictions)


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)
