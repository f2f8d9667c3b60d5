"""Load the recipe's base model and put one method's adapter on it (or none, for ``base``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .schema import BASELINE, PEFT_METHODS, Recipe

__all__ = ["attach_adapter", "build_model", "load_base", "load_trained"]


def load_base(recipe: Recipe, *, for_training: bool = True) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of ``recipe.model``; gradient checkpointing and 4-bit apply only
    ``for_training`` (a trained adapter is evaluated on the plain base in ``model.dtype``)."""
    from ..training import load_base_model

    spec = recipe.model
    if not for_training:
        return load_base_model(spec.name, dtype=spec.dtype)
    return load_base_model(
        spec.name,
        dtype=spec.dtype,
        gradient_checkpointing=spec.gradient_checkpointing,
        load_in_4bit=spec.load_in_4bit,
    )


def build_model(recipe: Recipe, method: str) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: the base model with a fresh ``method`` adapter (``base``: none)."""
    model, tokenizer = load_base(recipe)
    return attach_adapter(model, recipe, method), tokenizer


def attach_adapter(
    model: nn.Module, recipe: Recipe, method: str, *, total_steps: int | None = None
) -> nn.Module:
    """Inject ``method`` (a frame-peft method or ``peft:*``) into ``model``; ``base``: freeze it."""
    if method == BASELINE:
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    kwargs = recipe.adapter_kwargs(method)
    if method in PEFT_METHODS:
        from ..peft_bridge import peft_baseline

        name = method.split(":", 1)[1]
        if name == "adalora" and "total_step" not in kwargs:
            kwargs["total_step"] = total_steps
        return peft_baseline(model, name, **kwargs)
    from .. import inject
    from ..core.config import config_from_dict

    return inject(model, config_from_dict({"method": method, **kwargs}))


def load_trained(recipe: Recipe, method: str, adapter_dir: Path) -> tuple[nn.Module, Any]:
    """Rebuild a trained model: base model + the adapter saved in ``adapter_dir``."""
    model, tokenizer = load_base(recipe, for_training=False)
    if method == BASELINE:
        return model, tokenizer
    if method in PEFT_METHODS:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir)), tokenizer
    from .. import load_adapter

    return load_adapter(model, adapter_dir), tokenizer
