"""MixLoRA (block-level injection) on tiny Llama and Qwen2 models: injection, forward/backward,
fast path vs dense reference, aux loss by hand, save/load, unload, merge, the E=1 truth check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import frame_peft as fp
from _models import batch, tiny_gpt2, tiny_llama, tiny_qwen2
from frame_peft.core.blocks import AdaptedBlock
from frame_peft.methods.lora import LoRAAdapter
from frame_peft.methods.mixlora import MixLoRAAdapter, MixLoRAConfig

MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2}
FFN = ("gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _config(**kw) -> MixLoRAConfig:
    base = {"num_experts": 4, "top_k": 2, "rank": 4, "dropout": 0.0}
    return MixLoRAConfig(**{**base, **kw})


def _randomize(model, seed: int = 0, std: float = 0.2) -> None:
    """Give every B (zero at init) and the routers random values so experts differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (".B" in name or "router" in name):
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(params=sorted(MODELS))
def model_name(request):
    return request.param


def test_defaults_follow_the_authors_template():
    cfg = MixLoRAConfig()
    assert (cfg.num_experts, cfg.top_k, cfg.rank, cfg.dropout) == (8, 2, 16, 0.05)
    assert cfg.for_module("x").alpha == 32.0
    assert set(cfg.target_modules) == set(ATTN + FFN)
    assert (cfg.aux_loss, cfg.aux_loss_coef) == ("mixtral", 0.001)
    assert fp.config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="aux_loss"):
        MixLoRAConfig(aux_loss="grouped")


def test_injection_layout_and_identity_at_init(model_name):
    model = MODELS[model_name]()
    b = batch()
    with torch.no_grad():
        base = model(**b).logits
    fp.inject(model, _config(dropout=0.05))
    layers = fp.adapted_layers(model)
    blocks = {n for n, la in layers.items() if isinstance(la, AdaptedBlock)}
    assert blocks == {"model.layers.0.mlp", "model.layers.1.mlp"}
    for name, layer in layers.items():
        if name in blocks:
            assert isinstance(layer.adapter, MixLoRAAdapter)
            assert layer.adapter.targets == FFN
            assert layer.adapter.A["gate_proj"].shape == (4, 4, 32)
            assert layer.adapter.B["down_proj"].shape == (4, 32, 4)
            assert layer.adapter.router.weight.shape == (4, 32)
        else:
            assert isinstance(layer.adapter, LoRAAdapter) and name.rsplit(".", 1)[1] in ATTN
    assert len(layers) == 2 + 2 * 4
    assert not any(n.endswith(FFN) for n in layers)  # FFN projections stay plain Linears
    model.eval()
    with torch.no_grad():
        out = model(**b).logits
        torch.testing.assert_close(out, base, atol=1e-5, rtol=0)  # B = 0: every expert = FFN
        _randomize(model)
        assert (model(**b).logits - base).abs().max() > 1e-3
        with fp.disable_adapters(model):
            assert torch.equal(model(**b).logits, base)


def test_forward_backward_reaches_every_parameter(model_name):
    model = MODELS[model_name]()
    fp.inject(model, _config())
    _randomize(model)
    out = model(**batch())
    (out.loss + fp.aux_loss(model)).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("mlp.adapter.router.weight" in n for n in trainable)
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad for n, p in model.named_parameters() if "adapter" not in n)


def test_fast_path_equals_dense_reference_forward_and_grads():
    block = tiny_llama().model.layers[0].mlp
    cfg = _config(num_experts=5, top_k=2)
    adapter = MixLoRAAdapter(block, FFN, cfg.for_module("mlp"), fp.LayerContext("mlp", _state()))
    _randomize(adapter)
    x = torch.randn(3, 7, 32)
    fast = adapter(block, x)
    ref = adapter.reference_forward(block, x)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), list(adapter.parameters()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(adapter.parameters()))
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _state():
    from frame_peft.routing import RoutingState

    return RoutingState()


def test_aux_loss_matches_a_hand_computation_with_padding(model_name):
    model = MODELS[model_name]()
    fp.inject(model, _config(num_experts=4, top_k=2))
    _randomize(model)
    inputs = {}
    hooks = [
        model.get_submodule(f"model.layers.{i}.mlp").register_forward_pre_hook(
            lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach())
        )
        for i in range(2)
    ]
    b = batch(pad_rows=1)
    model(**b)
    for h in hooks:
        h.remove()
    m = b["attention_mask"].reshape(-1).float()
    losses = []
    for i in range(2):
        w = model.get_submodule(f"model.layers.{i}.mlp").adapter.router.weight
        probs = torch.softmax(inputs[i].reshape(-1, 32) @ w.T, dim=-1)
        chosen = F.one_hot(probs.topk(2, dim=-1).indices, 4).float()  # (T, k, E)
        tokens_per_expert = (chosen * m[:, None, None]).sum(0) / m.sum()  # (k, E)
        prob_per_expert = (probs * m[:, None]).sum(0) / m.sum()  # (E,)
        losses.append(4 * (tokens_per_expert * prob_per_expert).sum())
    expected = 0.001 * torch.stack(losses).mean()
    torch.testing.assert_close(fp.aux_loss(model), expected, atol=1e-7, rtol=1e-5)
    assert set(fp.aux_stats(model)) == {"balance"}


def test_switch_and_no_aux_loss_options():
    model = tiny_llama()
    fp.inject(model, _config(aux_loss="none"))
    model(**batch())
    assert float(fp.aux_loss(model)) == 0.0
    fp.unload(model)
    fp.inject(model, _config(aux_loss="switch", aux_loss_coef=0.5))
    model(**batch(pad_rows=0))
    # slot-share Switch loss: 1 at perfect balance, here between 1 and E
    assert 0.5 <= float(fp.aux_loss(model).detach()) <= 0.5 * 4


def test_save_load_gives_identical_logits(tmp_path, model_name):
    model = MODELS[model_name]()
    fp.inject(model, _config())
    _randomize(model)
    model.eval()
    b = batch()
    with torch.no_grad():
        expected = model(**b).logits
    fp.save_adapter(model, tmp_path)
    fresh = fp.load_adapter(MODELS[model_name](), tmp_path).eval()
    assert set(fp.adapted_layers(fresh)) == set(fp.adapted_layers(model))
    with torch.no_grad():
        assert torch.equal(fresh(**b).logits, expected)


def test_unload_restores_the_exact_base(model_name):
    model = MODELS[model_name]()
    b = batch()
    with torch.no_grad():
        base = model(**b).logits
    mlp = model.model.layers[0].mlp
    fp.inject(model, _config())
    _randomize(model)
    fp.unload(model)
    assert model.model.layers[0].mlp is mlp
    assert not any("adapter" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(**b).logits, base)
    fp.inject(model, _config())  # injectable again


def test_merge_refused_for_several_experts_and_model_unchanged():
    model = tiny_llama()
    fp.inject(model, _config())
    _randomize(model)
    b = batch()
    with torch.no_grad():
        before = model(**b).logits
    with pytest.raises(fp.NotMergeableError, match="MixLoRA with 4 experts"):
        fp.merge_and_unload(model)
    assert isinstance(model.model.layers[0].mlp, AdaptedBlock)
    with torch.no_grad():
        assert torch.equal(model(**b).logits, before)


def test_one_expert_equals_lora_on_every_projection_and_merges(model_name):
    """E = 1, k = 1 is LoRA on gate/up/down plus LoRA on attention, given the same weights."""
    mix = MODELS[model_name]()
    fp.inject(mix, _config(num_experts=1, top_k=1))
    _randomize(mix)
    lora = MODELS[model_name]()
    fp.inject(lora, fp.LoRAConfig(target_modules=list(ATTN + FFN), rank=4, dropout=0.0))
    with torch.no_grad():
        for name, layer in fp.adapted_layers(lora).items():
            parent, _, leaf = name.rpartition(".")
            if leaf in FFN:
                src = fp.adapted_layers(mix)[parent].adapter
                layer.adapter.A.copy_(src.A[leaf][0])
                layer.adapter.B.copy_(src.B[leaf][0])
            else:
                layer.adapter.load_state_dict(fp.adapted_layers(mix)[name].adapter.state_dict())
    b = batch()
    with torch.no_grad():
        expected = lora(**b).logits
        got = mix(**b).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        merged = fp.merge_and_unload(mix)(**b).logits
        torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
    assert not isinstance(mix.model.layers[0].mlp, AdaptedBlock)


def test_partial_ffn_targets_and_per_layer_overrides():
    model = tiny_qwen2()
    cfg = _config(target_modules=["v_proj", "up_proj"], overrides={r"layers\.1\.": {"top_k": 1}})
    fp.inject(model, cfg)
    layers = fp.adapted_layers(model)
    assert layers["model.layers.0.mlp"].adapter.targets == ("up_proj",)
    assert layers["model.layers.1.mlp"].adapter.top_k == 1
    _randomize(model)
    model(**batch())


def test_count_parameters_and_routing_observers():
    model = tiny_llama()
    fp.inject(model, _config(num_experts=4, top_k=2, rank=4))
    counts = fp.count_parameters(model)
    per_expert = 4 * (32 + 64) * 2 + 4 * (64 + 32)  # gate, up (32 -> 64) and down (64 -> 32)
    attn = sum(4 * (la.in_features + la.out_features) for la in _linear_layers(model))
    assert counts["active_per_token"] == 2 * (2 * per_expert + 4 * 32) + attn
    assert counts["trainable"] == 2 * (4 * per_expert + 4 * 32) + attn
    seen = []
    remove = fp.adapted_layers(model)["model.layers.0.mlp"].adapter.state.add_observer(
        lambda name, routing, mask, task: seen.append((name, routing.gates.shape))
    )
    model(**batch())
    remove()
    assert seen == [("model.layers.0.mlp", (20, 4)), ("model.layers.1.mlp", (20, 4))]


def _linear_layers(model):
    return [la for la in fp.adapted_layers(model).values() if not isinstance(la, AdaptedBlock)]


def test_bf16_forward_keeps_router_fp32():
    model = tiny_llama()
    fp.inject(model, _config())
    _randomize(model)
    model.to(torch.bfloat16)
    adapter = fp.adapted_layers(model)["model.layers.0.mlp"].adapter
    assert adapter.router.weight.dtype == torch.float32
    assert adapter.A["gate_proj"].dtype == torch.bfloat16
    out = model(**batch())
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


def test_unsupported_architectures_are_refused_by_name():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match=r"LLaMA, Qwen2.*GPT2MLP"):
        fp.inject(model, _config(target_modules="all-linear"))
    assert not any("adapter" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="selects no gate_proj/up_proj/down_proj"):
        fp.inject(tiny_llama(), _config(target_modules=["q_proj", "v_proj"]))
    llama = tiny_llama()
    fp.inject(llama, _config())
    with pytest.raises(ValueError, match="already has frame-peft adapters"):
        fp.inject(llama, _config())


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_llama()
    fp.inject(model, _config())
    _randomize(model)
    model.train()
    b = batch()

    def grads():
        model.zero_grad()
        out = model(**b)
        (out.loss + fp.aux_loss(model)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5)


def test_block_adapters_are_not_built_standalone_as_linears():
    with pytest.raises(TypeError, match="adapts a whole block"):
        fp.build_adapter(_config(), 32, 32)
