"""Batched greedy generation with stop strings (math and code tasks).

:func:`generate_completions` renders each prompt (optionally through the tokenizer's chat
template), left-pads a batch, runs ``model.generate`` greedily (``do_sample=False``, one beam)
for at most ``max_new_tokens``, stops a row early once its text contains a stop string, decodes
only the new tokens (special tokens skipped) and cuts the text at the first stop string.
Prompts are batched longest first (less padding) and results come back in input order. A prompt
longer than ``max_positions − max_new_tokens`` keeps its last tokens.

Frame-peft routers see the right token mask without help: the injection's forward pre-hook reads
the ``attention_mask`` that ``generate`` passes to every step.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._model_io import max_positions, model_device, pad_id, unwrap

__all__ = [
    "HUMANEVAL_STOPS",
    "MATH_STOPS",
    "MBPP_STOPS",
    "cut_at_stop",
    "extract_code",
    "generate_completions",
    "render_prompt",
]

# lm-eval's GSM8K stops, the MATH prompt's "Problem:", and three newlines (a model rambling on).
MATH_STOPS: tuple[str, ...] = ("Question:", "Problem:", "</s>", "<|im_end|>", "\n\n\n")
# The bigcode-evaluation-harness stops. HumanEval: the prompt holds the signature and the
# completion is the body, which ends where a new top-level statement begins. MBPP: the model
# writes whole functions (helpers and imports included), so a new "def" is not a stop there.
HUMANEVAL_STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_STOPS: tuple[str, ...] = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any of ``stops``."""
    stops = (stops,) if isinstance(stops, str) else stops
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


def extract_code(completion: str) -> str:
    """The code in a chat answer. Splitting at the ```` ``` ```` fences, the candidates are the
    fenced blocks (their language tag dropped) and the text before the first fence; the first
    fenced block that defines a function wins, else the text before the first fence if it
    does (an answer whose code ran unfenced up to a closing fence), else the first fenced block.
    Text without fences is returned unchanged."""
    parts = completion.split("```")
    if len(parts) == 1:
        return completion
    blocks = []
    for inside in parts[1::2]:
        tag, newline, body = inside.partition("\n")
        is_language_tag = newline and " " not in tag.strip()  # "python", "py", ""
        blocks.append(body if is_language_tag else inside)
    for block in blocks:
        if "def " in block:
            return block
    if "def " in parts[0]:
        return parts[0]
    return blocks[0]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: str, chat: bool) -> tuple[str, bool]:
    """``(text, add_special_tokens)``: the prompt as one user turn of the chat template with the
    generation prompt appended when ``chat`` and the tokenizer has a template, else unchanged
    (the template writes its own special tokens, so they are not added again)."""
    if chat and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False
    return prompt, True


@functools.cache
def _stop_class() -> type:
    from transformers import StoppingCriteria

    class StopOnStrings(StoppingCriteria):
        """A row is done once its decoded new tokens contain a stop string."""

        def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str]) -> None:
            self.tokenizer, self.prompt_len = tokenizer, prompt_len
            self.stops = [s for s in stops if s]

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[:, self.prompt_len :].tolist()
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            done = [any(s in t for s in self.stops) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnStrings


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def generate_completions(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    chat: bool = False,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of ``prompts`` (new text only, cut at the first of ``stop``).

    ``chat=True`` wraps each prompt in the tokenizer's chat template; a tokenizer without one
    falls back to the raw prompt with a warning. The caller sets eval mode.
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}"
        )
    if chat and not has_chat_template(tokenizer):
        warnings.warn(
            "chat=True but the tokenizer has no chat template: raw prompts are used", stacklevel=2
        )
    limit = max_positions(model)
    keep = None if limit is None else max(limit - max_new_tokens, 1)
    encoded = []
    for prompt in prompts:
        text, special = render_prompt(tokenizer, prompt, chat)
        ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
        encoded.append(ids[-keep:] if keep is not None else ids)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    eos = _eos_ids(model, tokenizer)
    fill = pad_id(tokenizer)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=fill,
        eos_token_id=eos or None,
    )
    device = model_device(model)
    outputs: list[str] = [""] * len(prompts)
    from tqdm.auto import tqdm

    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, disable=not progress, desc=desc, leave=False):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), fill, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding: the last prompt token is at column -1
            n = len(encoded[i])
            ids[r, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
            mask[r, width - n :] = 1
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_stop_class()(tokenizer, width, stop))
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=criteria,
            )
        texts = tokenizer.batch_decode(out[:, width:].tolist(), skip_special_tokens=True)
        for i, text in zip(rows, texts, strict=True):
            outputs[i] = cut_at_stop(text, stop)
    return outputs
