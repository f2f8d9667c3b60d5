"""FRAME experts held at an order (pinned by the order scan, or fixed at 0) compute the same maths,
and those held at order 0 skip the transform and the imaginary half of the rank-2r mixture."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _format1 import save_format1
from _models import MODELS, TARGETS, batch, param_grads, single_linear


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return param_grads(model)


PINS = [0.0, -1.0, 1.0, 0.0, -1.0, 0.0]  # -1: free; three experts held at 0, one at 1


def _layer_model(order_mode: str = "learned", init_orders=None, seed: int = 0):
    cfg = fp.FrameConfig(
        target_modules=["0"], num_experts=6, top_k=3, rank=2, dropout=0.0,
        order_mode=order_mode, init_orders=init_orders,
    )  # fmt: skip
    model = fp.inject(single_linear(32, 16, seed), cfg)
    adapter = fp.adapted_layers(model)["0"].adapter
    with torch.no_grad():
        adapter.A.normal_(0.0, 0.3)
        adapter.B.normal_(0.0, 0.3)
        if order_mode == "learned":
            adapter.order_pins.copy_(torch.tensor(PINS))
    return model, adapter


def _reference(adapter, x):
    """Dense per-expert reference: gates times ΔW_e x with ΔW_e = Re(T^H B A T) built densely."""
    dw = adapter.dense_delta_weights()  # (E, d_out, d_in), includes the scale
    gates = adapter.router(x.reshape(-1, adapter.in_features)).gates.double()
    per_expert = torch.einsum("eoi,ti->teo", dw, x.reshape(-1, adapter.in_features).double())
    return (gates.unsqueeze(-1) * per_expert).sum(1).reshape(*x.shape[:-1], -1)


def test_pinned_orders_read_back_and_get_no_gradient():
    model, adapter = _layer_model()
    orders = adapter.orders()
    assert orders[[0, 3, 5]].tolist() == [0.0, 0.0, 0.0] and orders[2].item() == 1.0
    assert adapter.spatial_experts() == (0, 3, 5) and adapter.pinned_experts() == (0, 2, 3, 5)
    x = torch.randn(7, 32)
    model(x).square().sum().backward()
    g = adapter.order_logits.grad
    assert torch.all(g[[0, 2, 3, 5]] == 0) and torch.all(g[[1, 4]] != 0)


@pytest.mark.parametrize("order_mode", ["learned", "fixed"])
def test_held_experts_match_the_dense_reference_and_the_transform_path(order_mode):
    init = [0.0, 0.3, 1.0, 0.0, 0.7, 0.0] if order_mode == "fixed" else None
    model, adapter = _layer_model(order_mode, init)
    assert adapter.spatial_experts() == (0, 3, 5)
    assert adapter.pinned_experts() == ((0, 2, 3, 5) if order_mode == "learned" else ())
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    out = model(x)
    a, b, slots = adapter.mixture_factors()
    # three moving experts at rank 2r = 4, three held at 0 at rank r = 2
    assert a.shape == (3 * 4 + 3 * 2, 32) and b.shape == (16, 18) and slots.shape == (18,)
    delta = out - model[0].base_layer(x)
    torch.testing.assert_close(delta.double(), _reference(adapter, x), rtol=1e-5, atol=1e-6)
    grads = _grads(model, out.square().sum())

    adapter.spatial_shortcut = False  # every expert through the transform, at rank 2r
    assert adapter.spatial_experts() == () and adapter.mixture_factors()[2] is None
    slow = model(x)
    torch.testing.assert_close(slow, out, rtol=1e-5, atol=1e-6)
    for name, g in _grads(model, slow.square().sum()).items():
        torch.testing.assert_close(g, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_every_expert_held_at_zero_is_moe_lora_exactly():
    torch.manual_seed(0)
    kw = dict(target_modules=["0"], num_experts=4, top_k=2, rank=2, dropout=0.0)
    moe = fp.inject(single_linear(32, 16), fp.MoELoRAConfig(**kw))
    frame = fp.inject(single_linear(32, 16), fp.FrameConfig(**kw))
    a_moe, a_frame = fp.adapted_layers(moe)["0"].adapter, fp.adapted_layers(frame)["0"].adapter
    with torch.no_grad():
        a_moe.B.normal_(0.0, 0.3)
        for name in ("A", "B", "router.weight"):
            a_frame.get_parameter(name).copy_(a_moe.get_parameter(name))
        frame[0].base_layer.weight.copy_(moe[0].base_layer.weight)
        a_frame.place_experts(range(4), [0.0] * 4, [True] * 4)
    assert a_frame.identity_orders and a_frame.mixture_factors()[0] is a_frame.A
    x = torch.randn(9, 32)
    assert torch.equal(frame(x), moe(x))


def test_expert_factors_pad_held_experts_with_a_zero_imaginary_half():
    _, adapter = _layer_model()
    a, b = adapter.expert_factors()
    assert a.shape == (6, 4, 32) and b.shape == (6, 16, 4)
    torch.testing.assert_close(a[0, :2], adapter.A[0]) and torch.testing.assert_close(
        b[3, :, :2], adapter.B[3]
    )
    assert torch.all(a[[0, 3, 5], 2:] == 0) and torch.all(b[[0, 3, 5], :, 2:] == 0)
    ref_a, ref_b = adapter.reference_factors()
    torch.testing.assert_close(a, ref_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, ref_b, rtol=1e-5, atol=1e-6)


def test_grouped_forward_with_held_experts_equals_the_per_layer_path():
    torch.manual_seed(0)
    cfg = fp.FrameConfig(target_modules=TARGETS["llama"], num_experts=4, top_k=2, rank=2,
                         dropout=0.0)  # fmt: skip
    model = fp.inject(MODELS["llama"](), cfg)
    layers = fp.adapted_layers(model)
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.adapter.B.normal_(0.0, 0.1)
            layer.adapter.place_experts([i % 4, (i + 1) % 4], [0.0, 1.0], [True, True])
    inputs = batch()
    out = model(**inputs).logits
    assert fp.aux_loss(model) is not None
    grads = _grads(model, out.square().mean())
    for layer in layers.values():  # per-layer transforms (the grouped pass is skipped)
        layer.adapter._groupable = lambda: False
    ref = model(**inputs).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for name, g in _grads(model, ref.square().mean()).items():
        torch.testing.assert_close(g, grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_pins_are_saved_and_old_adapters_without_them_still_load(tmp_path):
    model, _ = _layer_model()
    fp.save_adapter(model, tmp_path / "new")
    loaded = fp.load_adapter(single_linear(32, 16), tmp_path / "new")
    assert fp.adapted_layers(loaded)["0"].adapter.order_pins.tolist() == PINS

    # an adapter written before the order scan existed has no order_pins tensor
    old = save_format1(model, tmp_path / "old", drop=("order_pins",))
    with pytest.warns(FutureWarning, match="format 1"):
        restored = fp.adapted_layers(fp.load_adapter(single_linear(32, 16), old))["0"].adapter
    assert restored.order_pins.tolist() == [-1.0] * 6
    assert restored.spatial_experts() == ()
