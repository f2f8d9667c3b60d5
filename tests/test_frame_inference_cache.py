"""FRAME caches its transformed factors while gradients are off, and never serves stale ones."""

from __future__ import annotations

import torch
from torch import nn

import frame_peft as fp
from _models import single_linear


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    config = fp.FrameConfig(target_modules=["0"], num_experts=4, top_k=2, rank=2, **kwargs)
    model = fp.inject(single_linear(32, 16), config)
    with torch.no_grad():
        fp.adapted_layers(model)["0"].adapter.B.normal_(0.0, 0.1)
    return model.eval()


def _fresh(adapter) -> tuple[torch.Tensor, torch.Tensor]:
    return adapter._transformed_factors()


def test_cached_factors_are_reused_and_equal_the_fresh_ones():
    adapter = fp.adapted_layers(_model())["0"].adapter
    with torch.no_grad():
        first = adapter.expert_factors()
        second = adapter.expert_factors()
        fresh = _fresh(adapter)
    assert first[0] is second[0] and first[1] is second[1]
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)


def test_training_forwards_bypass_the_cache_and_get_gradients():
    model = _model()
    adapter = fp.adapted_layers(model)["0"].adapter
    with torch.no_grad():
        adapter.expert_factors()
    a, _ = adapter.expert_factors()
    assert a.requires_grad and adapter._factor_cache is None
    model(torch.randn(2, 32)).sum().backward()
    assert adapter.order_logits.grad is not None and adapter.A.grad is not None


def test_cache_follows_optimizer_steps_state_loads_and_device_moves():
    model = _model()
    adapter = fp.adapted_layers(model)["0"].adapter
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = model(x)
    opt = fp.build_optimizer(model, lr=0.1, order_lr=0.1)
    model.train()
    model(x).square().sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model(x)
        torch.testing.assert_close(adapter.expert_factors(), _fresh(adapter), rtol=0, atol=0)
    assert not torch.allclose(before, after)

    other = _model()
    with torch.no_grad():
        other(x)  # fill its cache, then overwrite its parameters from `model`
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), after, rtol=0, atol=0)
        other.double()
        torch.testing.assert_close(other(x.double()), after.double(), rtol=1e-5, atol=1e-6)


def test_fixed_orders_are_cached_too_and_zero_orders_skip_the_transform():
    adapter = fp.adapted_layers(_model(order_mode="fixed"))["0"].adapter
    with torch.no_grad():
        assert adapter.expert_factors()[0] is adapter.expert_factors()[0]
    zeros = fp.adapted_layers(_model(order_mode="fixed", init_orders="zeros"))["0"].adapter
    with torch.no_grad():
        assert zeros.expert_factors()[0] is zeros.A
