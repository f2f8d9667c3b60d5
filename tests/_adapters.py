"""Adapter configs for the parametrised test matrix (small sizes, dropout off for determinism),
and what the matrix expects of each method's adapter module.

Tensor names in the tables are relative to ``<module>.adapter.`` (``layer.adapter.state_dict()``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import frame_peft as fp
from _models import MODELS, batch

CONFIGS = {
    "lora": lambda t: fp.LoRAConfig(target_modules=t, rank=4, dropout=0.0),
    "moe-lora": lambda t: fp.MoELoRAConfig(
        target_modules=t, num_experts=4, top_k=2, rank=2, dropout=0.0
    ),
    "frame": lambda t: fp.FrameConfig(
        target_modules=t, num_experts=4, top_k=2, rank=2, dropout=0.0
    ),
    "frame-exact": lambda t: fp.FrameConfig(
        target_modules=t, num_experts=4, top_k=2, rank=2, dropout=0.0, transform="exact"
    ),
    "fouriermoe": lambda t: fp.FourierMoEConfig(
        target_modules=t, num_experts=4, top_k=2, num_coefficients=16, dropout=0.0
    ),
    "hydralora": lambda t: fp.HydraLoRAConfig(target_modules=t, num_experts=3, rank=2, dropout=0.0),
    # HMoRA's per-module variant (one router and encoder per module): the matrix's per-module
    # expectations hold for it; the default's shared encoder/routers are tested in test_hmora.py
    "hmora": lambda t: fp.HMoRAConfig.simplified(
        target_modules=t, num_experts=4, rank=2, dropout=0.0
    ),
    "flylora": lambda t: fp.FlyLoRAConfig(target_modules=t, rank=8, top_k=2, dropout=0.0),
}

_MOE = {"A", "B", "router.weight"}
_HMORA_ROUTING = {"router.beta", "router.token.weight", "router.task_encoder.weight",
                  "router.task_encoder.bias", "router.task.weight"}  # fmt: skip

# Trainable parameters of every adapter module.
TRAINABLE: dict[str, set[str]] = {
    "lora": {"A", "B"},
    "moe-lora": _MOE,
    "frame": _MOE | {"order_logits"},
    "frame-exact": _MOE | {"order_logits"},
    "fouriermoe": {"coef_real", "coef_imag", "router.weight", "freq_router.weight"},
    "hydralora": _MOE,
    "hmora": {"A", "B"} | _HMORA_ROUTING,
    "flylora": {"B"},
}

# Persistent buffers (saved with the adapter, never trained).
BUFFERS: dict[str, set[str]] = {
    "fouriermoe": {"positions"},
    "flylora": {"A", "rank_bias"},
    "frame": {"order_pins"},
    "frame-exact": {"order_pins"},
}

# Buffers that training never changes (FlyLoRA's bias b moves by its sign rule, A never does).
FROZEN: dict[str, set[str]] = {
    "fouriermoe": {"positions"},
    "flylora": {"A"},
    "frame": {"order_pins"},
    "frame-exact": {"order_pins"},
}

# Floating tensors that stay float32 when the model is cast to bf16 (all others follow the model).
FP32: dict[str, set[str]] = {
    "lora": set(),
    "moe-lora": {"router.weight"},
    "frame": {"router.weight", "order_logits", "order_pins"},
    "frame-exact": {"router.weight", "order_logits", "order_pins"},
    "fouriermoe": {"router.weight", "freq_router.weight"},
    "hydralora": {"router.weight"},
    "hmora": _HMORA_ROUTING,
    "flylora": {"A", "rank_bias"},
}

# The routing loss each forward records (``fp.aux_stats`` keys); other methods record none.
AUX: dict[str, str] = {
    "moe-lora": "balance",
    "frame": "balance",
    "frame-exact": "balance",
    "fouriermoe": "balance",
    "hmora": "entropy",
}

# Methods whose every trainable parameter is used by every token (no top-k).
DENSE = {"lora", "hydralora", "hmora"}


def _moe(i: int, o: int) -> int:  # E = 4, k = 2, r = 2 experts + an E x d_in router
    return 2 * 2 * (i + o) + 4 * i


# Active parameters per token of one module with d_in = i, d_out = o, for the CONFIGS above,
# written out from docs/methods.md independently of the adapters' own ``active_parameters``.
ACTIVE: dict[str, Callable[[int, int], int]] = {
    "lora": lambda i, o: 4 * (i + o),
    "moe-lora": _moe,
    "frame": lambda i, o: _moe(i, o) + 4,  # + one order per expert
    "frame-exact": lambda i, o: _moe(i, o) + 4,
    "fouriermoe": lambda i, o: 2 * (2 * 16) + 4 * i + 4 * 4,  # k·2n + W_x + W_f (E x E)
    "hydralora": lambda i, o: 2 * i + 3 * 2 * o + 3 * i,  # shared A, all 3 heads, router
    # all 4 experts (dense), token router, task encoder (32 x d_in + bias), task router, β
    "hmora": lambda i, o: 4 * 2 * (i + o) + 4 * i + (32 * i + 32) + 4 * 32 + 1,
    "flylora": lambda i, o: 2 * o,  # the k = 2 kept columns of B; A is a frozen buffer
}

# Zero-initialised output parameters of each method, which ``perturb`` moves.
OUTPUT_PARAMS = ("adapter.B", "adapter.coef_real", "adapter.coef_imag")


def randomise_saved_state(model: nn.Module, seed: int = 7) -> None:
    """Overwrite every floating-point tensor an adapter saves (routers, orders, biases, ...).

    A fresh process that re-seeds and re-injects draws the same initial values, so only tensors
    moved away from their initialisation prove that save -> load really carries them.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in fp.adapted_layers(model).values():
            for tensor in layer.adapter.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)


def inputs() -> dict[str, torch.Tensor]:
    """The shared test batch without labels (a plain forward's keyword arguments)."""
    return {k: v for k, v in batch().items() if k != "labels"}


def adapters(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: adapter}`` of an injected model."""
    return {n: layer.adapter for n, layer in fp.adapted_layers(model).items()}


def assert_equals_reference(
    model_name: str,
    config: fp.AdapterConfig,
    reference: fp.AdapterConfig,
    copy: Callable[[nn.Module, nn.Module], None],
    moved: float = 1e-4,
) -> None:
    """A method that reduces to another: inject ``config`` and ``reference`` into two copies of
    the same tiny model, perturb the first, ``copy(adapter, reference_adapter)`` per module, and
    check equal logits (atol 1e-6) that differ from the base model's by more than ``moved``."""
    model = fp.inject(MODELS[model_name](), config)
    ref = fp.inject(MODELS[model_name](), reference)
    perturb(model)
    ref_adapters = adapters(ref)
    with torch.no_grad():
        for name, adapter in adapters(model).items():
            copy(adapter, ref_adapters[name])
        got, want = model(**inputs()).logits, ref(**inputs()).logits
        base = MODELS[model_name]()(**inputs()).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - base).abs().max() > moved


def perturb(model: nn.Module, std: float = 0.1, seed: int = 123) -> None:
    """Move every adapter's zero-initialised output parameters away from zero (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(OUTPUT_PARAMS):
                p.copy_(torch.randn(p.shape, generator=g) * std)
