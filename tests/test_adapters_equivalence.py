"""FRAME reduces to its neighbours exactly; fast paths equal plain references; LoRA equals PEFT."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import perturb
from _models import MODELS, TARGETS, batch, mlp


def _inputs():
    return {k: v for k, v in batch().items() if k != "labels"}


def _adapters(model):
    return {n: layer.adapter for n, layer in fp.adapted_layers(model).items()}


def _copy_params(src, dst, mapping=lambda k, v: v):
    """Copy every adapter tensor of ``src`` into the same-named one of ``dst``."""
    with torch.no_grad():
        for name, a_src in _adapters(src).items():
            a_dst = _adapters(dst)[name]
            for k, v in a_src.state_dict().items():
                dict(a_dst.named_parameters())[k].copy_(mapping(k, v))


@pytest.mark.parametrize("model_name", list(MODELS))
def test_lora_matches_peft(model_name):
    from peft import LoraConfig, get_peft_model

    targets = TARGETS[model_name]
    ours = fp.inject(
        MODELS[model_name](), fp.LoRAConfig(target_modules=targets, rank=4, dropout=0.0)
    )
    perturb(ours)
    peft_model = get_peft_model(
        MODELS[model_name](),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
            fan_in_fan_out=model_name == "gpt2",
        ),
    )  # fmt: skip
    n_copied = 0
    with torch.no_grad():
        for name, layer in fp.adapted_layers(ours).items():
            peft_layer = peft_model.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.adapter.A)
            peft_layer.lora_B["default"].weight.copy_(layer.adapter.B)
            n_copied += 1
        peft_layers = [m for m in peft_model.modules() if hasattr(m, "lora_A")]
        assert n_copied == len(peft_layers) >= 6
        ref = peft_model(**_inputs()).logits
        got = ours(**_inputs()).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert (got - MODELS[model_name]()(**_inputs()).logits).abs().max() > 1e-3


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_frame_with_orders_fixed_at_zero_is_moe_lora(model_name):
    targets = TARGETS[model_name]
    kw = dict(target_modules=targets, num_experts=4, top_k=2, rank=2, dropout=0.0)
    moe = fp.inject(MODELS[model_name](), fp.MoELoRAConfig(**kw))
    frame = fp.inject(
        MODELS[model_name](), fp.FrameConfig(**kw, order_mode="fixed", init_orders="zeros")
    )
    perturb(moe)
    _copy_params(moe, frame)
    with torch.no_grad():
        ref = moe(**_inputs()).logits
        assert torch.equal(frame(**_inputs()).logits, ref)  # identity shortcut: exact
        for adapter in _adapters(frame).values():  # the transform path at a = 0, too
            adapter.spatial_shortcut = False
        torch.testing.assert_close(frame(**_inputs()).logits, ref, rtol=1e-5, atol=1e-5)


def test_frame_one_expert_at_order_zero_is_lora():
    targets = TARGETS["llama"]
    lora = fp.inject(MODELS["llama"](), fp.LoRAConfig(target_modules=targets, rank=4, dropout=0.0))
    frame = fp.inject(
        MODELS["llama"](),
        fp.FrameConfig(
            target_modules=targets, num_experts=1, top_k=1, rank=4, dropout=0.0,
            order_mode="fixed", init_orders="zeros",
        ),
    )  # fmt: skip
    perturb(lora)
    with torch.no_grad():
        for name, adapter in _adapters(lora).items():
            _adapters(frame)[name].A.copy_(adapter.A[None])
            _adapters(frame)[name].B.copy_(adapter.B[None])
        assert torch.equal(frame(**_inputs()).logits, lora(**_inputs()).logits)


def _frame_mlp(transform: str, **kw):
    model = fp.inject(
        mlp(width=16),
        fp.FrameConfig(target_modules=["0"], num_experts=3, top_k=2, rank=2, dropout=0.0,
                       transform=transform, **kw),
    )  # fmt: skip
    perturb(model, std=0.3)
    return model, model[0].adapter


@pytest.mark.parametrize("transform", ["chirp", "exact"])
def test_factor_path_equals_dense_conjugation(transform):
    _, adapter = _frame_mlp(transform)
    x = torch.randn(7, 16)
    with torch.no_grad():
        got = adapter(x, x).double()
        gates = adapter.router(x).gates.double()
        dense = adapter.dense_delta_weights()  # (E, d_out, d_in), Re(T^H B A T), float64
        ref = torch.einsum("te,eoi,ti->to", gates, dense, x.double())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert ref.abs().max() > 1e-2


@pytest.mark.parametrize("transform", ["chirp", "exact"])
def test_order_one_is_a_spectral_adapter(transform):
    _, adapter = _frame_mlp(transform, order_mode="fixed", init_orders=[1.0, 1.0, 1.0])

    def centered_dft(n):
        eye = torch.eye(n, dtype=torch.complex128)
        f = torch.fft.fft(torch.fft.ifftshift(eye, dim=0), dim=0, norm="ortho")
        return torch.fft.fftshift(f, dim=0)

    c_in, c_out = centered_dft(16), centered_dft(32)
    x = torch.randn(5, 16)
    with torch.no_grad():
        gates = adapter.router(x).gates.double()
        ba = (adapter.B.double() @ adapter.A.double()).to(torch.complex128)
        dw = adapter.scale * (c_out.conj().T @ ba @ c_in).real
        ref = torch.einsum("te,eoi,ti->to", gates, dw, x.double())
        torch.testing.assert_close(adapter(x, x).double(), ref, rtol=1e-5, atol=1e-6)


def test_orders_get_gradients_once_b_moves():
    model = fp.inject(
        MODELS["llama"](), fp.FrameConfig(target_modules=TARGETS["llama"], dropout=0.0)
    )
    model.train()
    model(**batch()).loss.backward()
    grads = [a.order_logits.grad for a in _adapters(model).values()]
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)  # B = 0
    model.zero_grad()
    perturb(model)
    model(**batch()).loss.backward()
    assert all(a.order_logits.grad.abs().max() > 0 for a in _adapters(model).values())


@pytest.mark.parametrize("method", ["moe-lora", "frame", "frame-exact"])
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_packed_fast_path_equals_reference_loop(method, top_k):
    from _adapters import CONFIGS

    cfg = CONFIGS[method](["0"])
    cfg.top_k = top_k
    model = fp.inject(mlp(width=16), cfg)
    perturb(model, std=0.3)
    adapter = model[0].adapter
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            adapter(x, x), adapter.reference_forward(x, x), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "make",
    [
        lambda t: fp.LoRAConfig(target_modules=t, rank=4, dropout=0.0),
        lambda t: fp.MoELoRAConfig(target_modules=t, num_experts=1, top_k=1, rank=4, dropout=0.0),
        lambda t: fp.FrameConfig(target_modules=t, num_experts=1, top_k=1, rank=4, dropout=0.0,
                                 init_orders=[0.3]),
    ],
    ids=["lora", "moe-1-expert", "frame-1-expert"],
)  # fmt: skip
def test_merge_and_unload_equals_adapted_forward(model_name, make):
    model = fp.inject(MODELS[model_name](), make(TARGETS[model_name]))
    perturb(model)
    with torch.no_grad():
        ref = model(**_inputs()).logits
        merged = fp.merge_and_unload(model)
        assert not any(isinstance(m, fp.AdaptedLinear) for m in merged.modules())
        torch.testing.assert_close(merged(**_inputs()).logits, ref, rtol=1e-5, atol=1e-5)
        base = MODELS[model_name]()(**_inputs()).logits
    assert (ref - base).abs().max() > 1e-3


def test_merge_refuses_routed_mixture_and_changes_nothing():
    model = fp.inject(MODELS["llama"](), fp.FrameConfig(target_modules=TARGETS["llama"]))
    perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(fp.NotMergeableError, match="no single ΔW"):
        fp.merge_and_unload(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert fp.adapted_layers(model)


def test_plain_mlp_and_per_module_overrides():
    cfg = fp.FrameConfig(
        target_modules="all-linear", num_experts=4, rank=2,
        overrides={r"^2$": {"num_experts": 2, "top_k": 1, "rank": 3}},
    )  # fmt: skip
    model = fp.inject(mlp(width=16), cfg)
    a0, a2 = model[0].adapter, model[2].adapter
    assert (a0.num_experts, a0.rank, a0.top_k) == (4, 2, 2)
    assert (a2.num_experts, a2.rank, a2.top_k) == (2, 3, 1)
    assert a2.A.shape == (2, 3, 32) and a2.B.shape == (2, 16, 3)
    assert set(fp.orders(model)) == {"0", "2"} and fp.orders(model)["2"].shape == (2,)
    torch.testing.assert_close(fp.orders(model)["0"], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.isfinite(model(torch.randn(4, 16))).all()


def test_count_parameters_by_hand():
    model = fp.inject(
        mlp(width=16), fp.FrameConfig(target_modules=["0"], num_experts=4, top_k=2, rank=2)
    )
    base_total = sum(p.numel() for p in mlp(width=16).parameters())
    per_expert = 2 * 16 + 32 * 2
    router, orders = 4 * 16, 4
    counts = fp.count_parameters(model)
    assert counts["trainable"] == 4 * per_expert + router + orders
    assert counts["total"] == base_total + counts["trainable"]
    assert counts["active_per_token"] == 2 * per_expert + router + orders
