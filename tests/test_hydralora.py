"""HydraLoRA: the adapter-core matrix, one head = LoRA, fast path = per-head loop, aux, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import frame_peft as fp
from _models import MODELS, TARGETS, batch
from frame_peft.methods.hydralora import HydraLoRAAdapter, HydraLoRAConfig
from frame_peft.routing import RoutingState


def make_config(targets="all-linear", **kw):
    return HydraLoRAConfig(
        target_modules=targets, **{"num_experts": 3, "rank": 2, "dropout": 0.0, **kw}
    )


def _inputs():
    return {k: v for k, v in batch().items() if k != "labels"}


def _adapters(model):
    return {n: layer.adapter for n, layer in fp.adapted_layers(model).items()}


def perturb(model, std=0.1, seed=123):
    """Move every head B (E, d_out, r) away from zero (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for a in _adapters(model).values():
            a.B.copy_(torch.randn(a.B.shape, generator=g) * std)
            n += 1
    assert n > 0


def build(model_name, **kw):
    base = MODELS[model_name]()
    with torch.no_grad():
        ref = base(**_inputs()).logits
    return fp.inject(base, make_config(**kw)), ref


# --- adapter-core matrix ---------------------------------------------------------------------


@pytest.mark.parametrize("model_name", list(MODELS))
def test_identity_at_init_and_disable(model_name):
    model, ref = build(model_name)
    with torch.no_grad():
        assert torch.equal(model(**_inputs()).logits, ref)
        perturb(model)
        moved = model(**_inputs()).logits
        assert (moved - ref).abs().max() > 1e-4
        with fp.disable_adapters(model):
            assert torch.equal(model(**_inputs()).logits, ref)
        assert torch.equal(model(**_inputs()).logits, moved)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_only_adapter_parameters_train(model_name):
    model, _ = build(model_name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".adapter." in n}
    assert {n.rsplit(".adapter.", 1)[1] for n in trainable} == {"A", "B", "router.weight"}
    counts = fp.count_parameters(model)
    assert counts["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad
    )
    assert 0 < counts["active_per_token"] <= counts["trainable"] < counts["total"]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_training_steps_reduce_loss(model_name):
    model, _ = build(model_name)
    model.train()
    data = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(**data)
        (out.loss + fp.aux_loss(model)).backward()
        losses.append(float(out.loss.detach()))
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("model_name", list(MODELS))
def test_fp32_and_bf16_forward_finite(model_name):
    model, _ = build(model_name)
    perturb(model)
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs()).logits).all()
        model.to(torch.bfloat16)
        out = model(**_inputs()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    for a in _adapters(model).values():
        assert a.router.weight.dtype == torch.float32
        assert a.B.dtype == torch.bfloat16


_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    import frame_peft as fp
    from _models import MODELS, batch
    for job in json.loads({jobs!r}):
        model = fp.load_adapter(MODELS[job["model"]](), job["dir"])
        with torch.no_grad():
            logits = model(**{{k: v for k, v in batch().items() if k != "labels"}}).logits
        torch.save(logits, job["out"])
    """
)


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Save one perturbed adapter per model, reload all of them in one fresh process."""
    root = tmp_path_factory.mktemp("hydra-reload")
    jobs, expected = [], {}
    for model_name in MODELS:
        model, _ = build(model_name)
        perturb(model)
        with torch.no_grad():
            for a in _adapters(model).values():  # a trained-looking router, not the init one
                a.router.weight.normal_(0.0, 1.0)
            expected[model_name] = model(**_inputs()).logits
        d = root / model_name
        fp.save_adapter(model, d)
        jobs.append({"model": model_name, "dir": str(d), "out": str(d / "logits.pt")})
    code = _CHILD.format(tests=os.path.dirname(__file__), jobs=json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    return {m: (v, torch.load(root / m / "logits.pt")) for m, v in expected.items()}


@pytest.mark.parametrize("model_name", list(MODELS))
def test_save_load_new_process_bit_identical(reloaded, model_name):
    expected, got = reloaded[model_name]
    assert torch.equal(expected, got)


# --- HydraLoRA specifics ---------------------------------------------------------------------


@pytest.mark.parametrize("model_name", list(MODELS))
def test_one_head_equals_lora(model_name):
    targets = TARGETS[model_name]
    hydra = fp.inject(MODELS[model_name](), make_config(targets, num_experts=1, rank=4))
    lora = fp.inject(
        MODELS[model_name](), fp.LoRAConfig(target_modules=targets, rank=4, dropout=0.0)
    )
    perturb(hydra)
    with torch.no_grad():
        for name, h in _adapters(hydra).items():
            lo = _adapters(lora)[name]
            lo.A.copy_(h.A)
            lo.B.copy_(h.B[0])
        got, ref = hydra(**_inputs()).logits, lora(**_inputs()).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert (got - MODELS[model_name]()(**_inputs()).logits).abs().max() > 1e-3


def test_fast_path_equals_reference_loop():
    torch.manual_seed(0)
    a = HydraLoRAAdapter(12, 20, make_config().settings_for("m"), RoutingState(), "m")
    with torch.no_grad():
        a.B.normal_()
        a.router.weight.normal_()
    x = torch.randn(2, 5, 12)
    fast, ref = a(x, x), a.reference_forward(x, x)
    assert fast.shape == (2, 5, 20)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)
    # every head contributes: zeroing one changes the output
    with torch.no_grad():
        a.B[1].zero_()
    assert (a(x, x) - fast).abs().max() > 1e-3


def test_merge_one_head_and_refuse_several():
    model, _ = build("gpt2", num_experts=1)
    perturb(model)
    with torch.no_grad():
        adapted = model(**_inputs()).logits
    merged = fp.merge_and_unload(model)
    with torch.no_grad():
        torch.testing.assert_close(merged(**_inputs()).logits, adapted, rtol=1e-5, atol=1e-5)
    model, _ = build("llama")
    with pytest.raises(fp.NotMergeableError, match="heads"):
        fp.merge_and_unload(model)
    assert fp.adapted_layers(model)  # nothing was changed


def test_active_parameters_count_every_head():
    a = HydraLoRAAdapter(12, 20, make_config().settings_for("m"), RoutingState(), "m")
    assert a.active_parameters() == 2 * 12 + 3 * 20 * 2 + 3 * 12
    assert a.active_parameters() == sum(p.numel() for p in a.parameters())


def test_aux_loss_none_by_default_and_switch_trains_router():
    model, _ = build("llama")
    model.train()
    model(**batch())
    assert fp.aux_stats(model) == {}
    assert HydraLoRAConfig().aux_loss == "none"

    model, _ = build("llama", aux_loss="switch", aux_loss_coef=1.0)
    model.train()
    model(**batch())
    stats = fp.aux_stats(model)
    assert set(stats) == {"balance"} and stats["balance"] >= 1.0 - 1e-6
    loss = fp.aux_loss(model)
    loss.backward()
    grads = [a.router.weight.grad for a in _adapters(model).values()]
    assert all(g is not None and g.abs().max() > 0 for g in grads)  # not the constant dense f


def test_switch_loss_excludes_padding():
    a = HydraLoRAAdapter(
        8, 8, make_config(aux_loss="switch").settings_for("m"), RoutingState(), "m"
    )
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 2:] = 0
    a.state.begin_forward(mask)
    a(x, x)
    masked = a.state.current.terms[0].losses["balance"]
    a.state.begin_forward(None)
    a(x[mask.bool()].reshape(1, -1, 8), x[mask.bool()].reshape(1, -1, 8))
    valid_only = a.state.current.terms[0].losses["balance"]
    torch.testing.assert_close(masked, valid_only)
    assert float(a.state.current.terms[0].num_tokens) == 7


def test_config_roundtrip_and_defaults():
    cfg = make_config(num_experts=4, aux_loss="switch")
    assert fp.config_from_dict(cfg.to_dict()) == cfg
    d = HydraLoRAConfig()
    assert (d.num_experts, d.rank, d.aux_loss) == (3, 8, "none")
    s = HydraLoRAConfig(overrides={r"layers\.0\.": {"num_experts": 1}}).settings_for(
        "model.layers.0.self_attn.q_proj"
    )
    assert s["num_experts"] == 1 and s["alpha"] == 16.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"num_experts": 0}, "num_experts must be a positive integer"),
        ({"num_experts": 2.0}, "num_experts must be a positive integer"),
        ({"aux_loss": "grouped"}, "aux_loss must be one of"),
        ({"aux_loss_coef": -1.0}, "aux_loss_coef must be a number >= 0"),
        ({"z_loss_coef": "x"}, "z_loss_coef must be a number >= 0"),
        ({"router_jitter": 1.0}, r"router_jitter must be in \[0, 1\)"),
        ({"overrides": {"q_proj": {"num_experts": -1}}}, "num_experts must be a positive"),
        ({"overrides": {"q_proj": {"top_k": 1}}}, "cannot be set per module"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        HydraLoRAConfig(**kw)
