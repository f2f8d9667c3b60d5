"""Load a Hugging Face causal LM and its tokenizer, ready for adapter training."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_name(name_or_path: str) -> str:
    """``frame_peft.assets.resolve_model(name_or_path)`` when that module exists (``"smollm2"``
    -> the local converted folder), else ``name_or_path`` unchanged."""
    try:
        from ..assets import resolve_model
    except ImportError:
        return name_or_path
    return str(resolve_model(name_or_path))


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass, in torch's non-reentrant mode.

    Non-reentrant checkpointing gives the adapters gradients even though the base weights and the
    embeddings are frozen (reentrant checkpointing would need inputs that require grad; we also
    call ``enable_input_require_grads`` so models that force reentrant mode still work). Uses
    ``activation_checkpointing_enable`` (transformers >= 5) or ``gradient_checkpointing_enable``.

    Raises:
        ValueError: the model supports neither.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(
            f"{type(model).__name__} supports no activation checkpointing (it has neither "
            "activation_checkpointing_enable nor gradient_checkpointing_enable)"
        )
    if callable(getattr(model, "enable_input_require_grads", None)):
        model.enable_input_require_grads()


def load_base_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    device: str | torch.device | None = None,
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
) -> tuple[nn.Module, Any]:
    """Load ``AutoModelForCausalLM`` and ``AutoTokenizer`` from a hub id or a local folder.

    Args:
        name_or_path: hub id, local path, or an asset name known to ``frame_peft.assets``
            (``"smollm2"``).
        dtype: ``"auto"`` (the checkpoint's dtype), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: where to put the model (``None``: leave it on the CPU; ignored for 4-bit, which
            bitsandbytes places on the GPU).
        gradient_checkpointing: enable it in the non-reentrant mode, which works with a frozen
            base, plus ``enable_input_require_grads`` so reentrant-only models still get gradients.
        load_in_4bit: quantise the base to NF4 with bitsandbytes (QLoRA-style; needs CUDA).

    Returns:
        ``(model, tokenizer)``: the model in eval mode with ``use_cache`` off when gradient
        checkpointing is on; the tokenizer has a pad token (the EOS token when it had none, also
        written to ``model.config.pad_token_id``).

    Raises:
        ValueError: unknown ``dtype``, or ``load_in_4bit`` without CUDA or bitsandbytes.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
    if load_in_4bit:
        kwargs.update(_four_bit_kwargs(dtype))
    path = resolve_name(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if device is not None and not load_in_4bit:
        model.to(device)
    return model.eval(), tokenizer


def _four_bit_kwargs(dtype: str) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise ValueError(
            "load_in_4bit=True needs a CUDA GPU and the bitsandbytes package; this machine has "
            "no CUDA device. Load the model in float32/bfloat16 instead"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise ValueError(
            "load_in_4bit=True needs a CUDA GPU and the bitsandbytes package: "
            "pip install bitsandbytes"
        ) from err
    compute = torch.bfloat16 if dtype in ("auto", "bfloat16") else getattr(torch, dtype)
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }
