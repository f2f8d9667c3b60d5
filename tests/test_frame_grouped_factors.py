"""FRAME's grouped factor path (one transform call per row group, prepared once per forward)
equals the plain per-layer path (forward transform on A, adjoint on B) in values and gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

import frame_peft as fp
import frame_peft.methods.frame.factors as factors_mod
from _adapters import CONFIGS
from _models import VOCAB, param_grads, tiny_llama
from frame_peft.methods.frame.layer import FrameAdapter
from frame_peft.transforms import frft
from frame_peft.transforms.chirp import frft_rows_packed


def _frame(transform: str = "chirp") -> torch.nn.Module:
    """Tiny Llama with the test matrix's FRAME config (E=4, k=2, r=2) on every Linear."""
    model = tiny_llama()
    torch.manual_seed(1)
    fp.inject(model, CONFIGS["frame" if transform == "chirp" else "frame-exact"]("all-linear"))
    with torch.no_grad():
        for layer in fp.adapted_layers(model).values():
            layer.adapter.B.normal_(0.0, 0.2)
    return model.train()


def _adapters(model) -> list[FrameAdapter]:
    return [layer.adapter for layer in fp.adapted_layers(model).values()]


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "labels": ids}


def test_packed_rows_equal_real_and_imaginary_parts_of_frft():
    torch.manual_seed(0)
    z = torch.randn(3, 2, 16, dtype=torch.float64, requires_grad=True)
    a = torch.rand(3, dtype=torch.float64, requires_grad=True)
    y = frft(z, a, dim=-1)
    ref = torch.cat([y.real, y.imag], dim=1)
    packed = frft_rows_packed(z, a, unit_orders=True)
    torch.testing.assert_close(packed, ref, rtol=0, atol=1e-13)
    g = torch.randn_like(ref)
    for got, want in zip(
        torch.autograd.grad(packed, (z, a), g), torch.autograd.grad(ref, (z, a), g), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z, a: frft_rows_packed(z, a), (z, a))


def test_unit_orders_are_checked():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        frft(torch.randn(2, 8), torch.tensor([0.5, 1.5]), unit_orders=True)


@pytest.mark.parametrize("transform", ["chirp", "exact"])
@pytest.mark.parametrize("chunk", [None, 64])
def test_grouped_factors_equal_the_reference_path(transform, chunk, monkeypatch):
    if chunk is not None:  # many small calls instead of one per width
        monkeypatch.setattr(factors_mod, "MAX_CALL_ELEMENTS", chunk)
    adapters = _adapters(_frame(transform))
    assert len({(ad.in_features, ad.out_features) for ad in adapters}) > 2
    grouped = factors_mod.grouped_factors(adapters)
    weights = {}
    loss_g, loss_r = 0.0, 0.0
    for i, ad in enumerate(adapters):
        ref = ad.reference_factors()
        g = torch.Generator().manual_seed(i)
        w = [torch.randn(t.shape, generator=g) for t in ref]
        weights[ad.name] = w
        for got, want, wt in zip(grouped[ad.name], ref, w, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            loss_g = loss_g + (got * wt).sum()
            loss_r = loss_r + (want * wt).sum()
    params = [p for ad in adapters for p in (ad.A, ad.B, ad.order_logits)]
    for got, want in zip(
        torch.autograd.grad(loss_g, params), torch.autograd.grad(loss_r, params), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_forward_prepares_every_layer_and_matches_the_per_layer_path(monkeypatch):
    model = _frame()
    batch = _batch()
    loss = model(**batch).loss + fp.aux_loss(model)
    scratch = fp.core.inject.require_injection(model).state.current.scratch
    assert set(scratch["frame_factors"]) == {ad.name for ad in _adapters(model)}
    loss.backward()
    grouped = param_grads(model)
    model.zero_grad(set_to_none=True)

    monkeypatch.setattr(FrameAdapter, "prepare_forward", classmethod(lambda cls, a, s: None))
    ref_loss = model(**batch).loss + fp.aux_loss(model)
    assert "frame_factors" not in fp.core.inject.require_injection(model).state.current.scratch
    ref_loss.backward()
    ref = param_grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grouped.keys() == ref.keys() and any("order_logits" in n for n in ref)
    for name in ref:
        torch.testing.assert_close(grouped[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_prepared_factors_are_not_reused_after_the_parameters_change():
    model = _frame()
    model(**_batch()).loss.backward()
    adapter = _adapters(model)[0]
    prepared = fp.core.inject.require_injection(model).state.current.scratch["frame_factors"]
    assert adapter.expert_factors()[0] is prepared[adapter.name][1][0]  # same forward's record
    fp.build_optimizer(model, lr=0.1, order_lr=0.1).step()
    fresh = adapter.expert_factors()
    assert fresh[0] is not prepared[adapter.name][1][0]
    torch.testing.assert_close(fresh, adapter.reference_factors(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_skips_the_shared_pass_and_keeps_gradients(reentrant):
    batch = _batch()
    model = _frame()
    fp.set_aux_in_loss(model, False)  # the shared factors are under test, not the aux loss
    model(**batch).loss.backward()
    ref = param_grads(model)

    model = _frame()
    fp.set_aux_in_loss(model, False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    model(**batch).loss.backward()
    assert "frame_factors" not in fp.core.inject.require_injection(model).state.current.scratch
    got = param_grads(model)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_no_shared_pass_without_gradients():
    model = _frame().eval()
    with torch.no_grad():
        model(**_batch())
    assert fp.core.inject.require_injection(model).state.current.scratch == {}


def test_user_checkpointing_without_the_hf_flag_reuses_the_prepared_factors():
    """Blocks wrapped in non-reentrant torch.utils.checkpoint by hand: the grouped pass still runs
    (no HF flag), the recompute picks up the same prepared factors, gradients are unchanged."""
    from torch.utils.checkpoint import checkpoint

    batch = _batch()
    model = _frame()
    model(**batch).loss.backward()
    ref = param_grads(model)

    model = _frame()
    for block in model.model.layers:
        inner = block.forward
        block.forward = lambda *a, _f=inner, **k: checkpoint(_f, *a, use_reentrant=False, **k)
    model(**batch).loss.backward()
    assert "frame_factors" in fp.core.inject.require_injection(model).state.current.scratch
    got = param_grads(model)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)


def test_half_precision_rows_stay_real_and_match_float32():
    """bf16 factors are upcast to float32 real rows (never to complex, whose gradient the packed
    kernel could not return); values and gradients match the float32 computation."""
    torch.manual_seed(0)
    z32 = torch.randn(3, 2, 16, requires_grad=True)
    z16 = z32.detach().bfloat16().requires_grad_()
    a = torch.rand(3)
    g = torch.randn(3, 4, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "casting complex values to real"
        y16 = frft_rows_packed(z16, a)
        y16.backward(g)
    z_ref = z16.detach().float().requires_grad_()
    y32 = frft_rows_packed(z_ref, a)
    y32.backward(g)
    torch.testing.assert_close(y16, y32, rtol=0, atol=0)
    assert z16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z16.grad, z_ref.grad.bfloat16(), rtol=0, atol=0)
