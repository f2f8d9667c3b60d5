"""torch.compile: a FRAME layer compiles as one graph and matches eager in values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frame_peft as fp
from _models import param_grads, single_linear


def _frame_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = fp.FrameConfig(target_modules=["0"], num_experts=4, top_k=2, rank=2, dropout=0.0)
    model = fp.inject(single_linear(64, 32), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1:
                p.normal_(0.0, 0.1)  # B starts at zero: give every path a non-zero value
    return fp.adapted_layers(model)["0"]


def _grads(layer: nn.Module, out: torch.Tensor) -> dict[str, torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    out.square().sum().backward()
    return param_grads(layer)


def test_frame_layer_compiles_without_graph_breaks_and_matches_eager():
    pytest.importorskip("torch._inductor")
    layer = _frame_layer()
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]

    eager = layer(x)
    eager_grads = _grads(layer, eager)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    grads = _grads(layer, out)
    assert grads.keys() == eager_grads.keys() and "adapter.order_logits" in grads
    for name, g in grads.items():  # float32 round-off only: relative to the gradient's scale
        scale = float(eager_grads[name].abs().max())
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
