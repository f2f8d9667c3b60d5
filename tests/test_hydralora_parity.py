"""HydraLoRA against a small reference written from the authors' code (GitHub Clin0212/HydraLoRA,
commit afb693b, ``HydraLoRA/peft/tuners/lora.py``, class ``Linear``: ``lora_route``, shared
``lora_A``, heads ``lora_B{i}``), given identical weights: forward, the gradient of every
parameter and of the input, and the auxiliary loss (none: their layer returns a zero balance
term, and so does our default ``aux_loss="none"``), on random (B, S, d) inputs with padding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import frame_peft as fp
from frame_peft.core.adapter import build_adapter
from frame_peft.routing import RoutingState

D_IN, D_OUT = 16, 12


class AuthorsHydraLinear(nn.Module):
    """The LoRA term of the authors' ``Linear.forward`` (base layer excluded, dropout 0)."""

    def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float, nums: int):
        super().__init__()
        self.lora_num = nums
        self.lora_route = nn.Linear(in_features, nums, bias=False)
        self.lora_A = nn.Linear(in_features, r, bias=False)
        for i in range(nums):
            setattr(self, f"lora_B{i}", nn.Linear(r, out_features, bias=False))
        self.scaling = lora_alpha / r
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        for i in range(nums):
            nn.init.normal_(getattr(self, f"lora_B{i}").weight)  # zero in theirs; moved here
        nn.init.kaiming_uniform_(self.lora_route.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route_weight = nn.functional.softmax(self.lora_route(x), dim=-1, dtype=torch.float32)
        route_weight = route_weight.to(x.dtype)
        result = torch.zeros(*x.shape[:-1], self.lora_B0.out_features)
        for i in range(self.lora_num):
            head = getattr(self, f"lora_B{i}")(self.lora_A(x))
            result = result + torch.unsqueeze(route_weight[:, :, i], -1) * head * self.scaling
        return result


def build_pair(seed: int = 0, **kw):
    torch.manual_seed(seed)
    config = fp.HydraLoRAConfig(dropout=0.0, **kw).for_module("layers.0.up_proj")
    ref = AuthorsHydraLinear(D_IN, D_OUT, config.rank, config.alpha, config.num_experts)
    adapter = build_adapter(fp.HydraLoRAConfig(dropout=0.0, **kw), D_IN, D_OUT, "layers.0.up_proj",
                            RoutingState())  # fmt: skip
    with torch.no_grad():
        adapter.A.copy_(ref.lora_A.weight)
        adapter.router.weight.copy_(ref.lora_route.weight)
        for i in range(config.num_experts):
            adapter.B[i].copy_(getattr(ref, f"lora_B{i}").weight)
    return adapter, ref


@pytest.mark.parametrize("kw", [{}, {"num_experts": 3, "rank": 2, "alpha": 5.0}])
def test_forward_gradients_and_aux_match_the_authors_layer(kw):
    adapter, ref = build_pair(**kw)
    cfg = fp.HydraLoRAConfig(**kw)
    assert adapter.scale == ref.scaling and adapter.num_experts == ref.lora_num
    if not kw:  # the defaults are the authors' fine-tuning.sh: 4 heads, r = 4, α = 32
        assert (cfg.num_experts, cfg.rank, adapter.scale) == (4, 4, 8.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, D_IN, generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6:] = 0
    adapter.state.begin_forward(mask)
    adapter.train()
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_r = adapter(xa, xa), ref(xr)
    torch.testing.assert_close(out_a, out_r, rtol=1e-5, atol=1e-6)
    assert adapter.state.aux_loss() is None  # no balance term, as the authors' zero `blcls`
    w = torch.randn(out_a.shape, generator=g)
    (out_a * w).sum().backward()
    (out_r * w).sum().backward()
    close = dict(rtol=1e-4, atol=1e-5)  # float32, different summation order
    torch.testing.assert_close(adapter.A.grad, ref.lora_A.weight.grad, **close)
    torch.testing.assert_close(adapter.router.weight.grad, ref.lora_route.weight.grad, **close)
    for i in range(ref.lora_num):
        torch.testing.assert_close(
            adapter.B.grad[i], getattr(ref, f"lora_B{i}").weight.grad, **close
        )
    torch.testing.assert_close(xa.grad, xr.grad, **close)
    assert adapter.router.weight.grad.abs().max() > 0


def test_reference_is_not_trivially_equal():
    """A router with other weights gives another output (the comparison above can fail)."""
    adapter, ref = build_pair()
    with torch.no_grad():
        adapter.router.weight.mul_(3.0)
    x = torch.randn(2, 5, D_IN)
    assert not torch.allclose(adapter(x, x), ref(x), atol=1e-5)


def test_router_init_matches_nn_linear_default():
    """Same bound and spread as the authors' ``nn.Linear(d_in, E, bias=False)`` router."""
    d_in, e = 256, 64
    ours = build_adapter(fp.HydraLoRAConfig(num_experts=e), d_in, 8, "m").router.weight.detach()
    theirs = nn.Linear(d_in, e, bias=False).weight.detach()
    bound = 1 / math.sqrt(d_in)
    assert ours.abs().max() <= bound and theirs.abs().max() <= bound
    torch.testing.assert_close(ours.std(), theirs.std(), rtol=0.05, atol=0)
