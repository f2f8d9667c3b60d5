"""Small helpers shared by the evaluators: device, config, forward signature, train/eval state.

They accept a plain ``transformers`` model, a frame-peft adapted one (the same object) and a PEFT
``PeftModel`` (which forwards ``config``/``generate``/``**kwargs`` to the wrapped model).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost ``transformers`` model (PEFT ``get_base_model``, DDP ``.module``)."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif isinstance(getattr(inner, "module", None), nn.Module):
            inner = inner.module
        else:
            break
    return inner


def model_config(model: nn.Module) -> Any:
    return getattr(unwrap(model), "config", None)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model takes (``max_position_embeddings`` / ``n_positions``)."""
    cfg = model_config(model)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def accepts_position_ids(model: nn.Module) -> bool:
    try:
        params = inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    return "position_ids" in params


def model_id(model: nn.Module) -> str | None:
    """``config._name_or_path`` of the base model, or None for a model built from a config."""
    name = getattr(model_config(model), "_name_or_path", None)
    return name or None


def pad_id(tokenizer: Any) -> int:
    """Token id used to fill padded positions (masked out; any valid id works)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own ``training`` flag after."""
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in states:
            m.training = training


@contextlib.contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old
