"""Adapter configs for the parametrised test matrix (small sizes, dropout off for determinism)."""

from __future__ import annotations

import torch
from torch import nn

import frame_peft as fp

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
    "hmora": lambda t: fp.HMoRAConfig(target_modules=t, num_experts=4, rank=2, dropout=0.0),
    "flylora": lambda t: fp.FlyLoRAConfig(target_modules=t, rank=8, top_k=2, dropout=0.0),
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


def perturb(model: nn.Module, std: float = 0.1, seed: int = 123) -> None:
    """Move every adapter's zero-initialised output parameters away from zero (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(OUTPUT_PARAMS):
                p.copy_(torch.randn(p.shape, generator=g) * std)
