"""HydraLoRA specifics: one head = LoRA, fast path = per-head loop, merge, aux, config.

The adapter-core matrix (identity at init, disable, trainable set, training, bf16, save/load) and
the active-parameter formula run in ``test_adapters_matrix.py`` (``_adapters.CONFIGS``).
"""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import adapters, assert_equals_reference, inputs, perturb
from _models import MODELS, TARGETS, batch
from frame_peft.core.adapter import build_adapter
from frame_peft.methods.hydralora import HydraLoRAConfig


def make_config(targets="all-linear", **kw):
    return HydraLoRAConfig(
        target_modules=targets, **{"num_experts": 3, "rank": 2, "dropout": 0.0, **kw}
    )


def build(model_name, **kw):
    return fp.inject(MODELS[model_name](), make_config(**kw))


@pytest.mark.parametrize("model_name", list(MODELS))
def test_one_head_equals_lora(model_name):
    def copy(hydra, lora):
        lora.A.copy_(hydra.A)
        lora.B.copy_(hydra.B[0])

    targets = TARGETS[model_name]
    lora = fp.LoRAConfig(target_modules=targets, rank=4, dropout=0.0)
    hydra = make_config(targets, num_experts=1, rank=4, alpha=8.0)  # LoRA's α = 2r
    assert_equals_reference(model_name, hydra, lora, copy, moved=1e-3)


def test_fast_path_equals_reference_loop():
    torch.manual_seed(0)
    a = build_adapter(make_config(), 12, 20, "m")
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
    model = build("gpt2", num_experts=1)
    perturb(model)
    with torch.no_grad():
        adapted = model(**inputs()).logits
    merged = fp.merge_and_unload(model)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs()).logits, adapted, rtol=1e-5, atol=1e-5)
    model = build("llama")
    with pytest.raises(fp.NotMergeableError, match="heads"):
        fp.merge_and_unload(model)
    assert fp.adapted_layers(model)  # nothing was changed


def test_aux_loss_none_by_default_and_switch_trains_router():
    model = build("llama")
    model.train()
    model(**batch())
    assert fp.aux_stats(model) == {}
    assert HydraLoRAConfig().aux_loss == "none"

    model = build("llama", aux_loss="switch", aux_loss_coef=1.0)
    model.train()
    model(**batch())
    stats = fp.aux_stats(model)
    assert set(stats) == {"balance"} and stats["balance"] >= 1.0 - 1e-6
    loss = fp.aux_loss(model)
    loss.backward()
    grads = [a.router.weight.grad for a in adapters(model).values()]
    assert all(g is not None and g.abs().max() > 0 for g in grads)  # not the constant dense f


def test_switch_loss_excludes_padding():
    a = build_adapter(make_config(aux_loss="switch"), 8, 8, "m")
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
    d = HydraLoRAConfig()  # the authors' fine-tuning.sh: 4 heads, r = 4, α = 32
    assert (d.num_experts, d.rank, d.alpha, d.aux_loss) == (4, 4, 32.0, "none")
    assert d.router_init == "kaiming_uniform"
    s = HydraLoRAConfig(overrides={r"layers\.0\.": {"num_experts": 1}}).for_module(
        "model.layers.0.self_attn.q_proj"
    )
    assert s.num_experts == 1 and s.alpha == 32.0 and s.scale == 8.0
    assert HydraLoRAConfig(alpha=None).for_module("m").alpha == 8.0  # library-wide 2·rank


@pytest.mark.parametrize("init", ["kaiming_uniform", "normal"])
def test_router_init(init):
    d_in = 400
    a = build_adapter(make_config(router_init=init, num_experts=8), d_in, 16, "m")
    w = a.router.weight.detach()
    assert w.dtype == torch.float32 and a.router.weight.shape == (8, d_in)
    if init == "kaiming_uniform":  # U(−1/√d_in, 1/√d_in): std 1/√(3 d_in)
        assert w.abs().max() <= d_in**-0.5
        assert abs(float(w.std()) - (3 * d_in) ** -0.5) < 0.1 * (3 * d_in) ** -0.5
    else:
        assert abs(float(w.std()) - 0.02) < 0.002


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
        ({"router_init": "zeros"}, "router_init must be one of"),
        ({"overrides": {"q_proj": {"num_experts": -1}}}, "num_experts must be a positive"),
        ({"overrides": {"q_proj": {"top_k": 1}}}, "cannot be set per module"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        HydraLoRAConfig(**kw)
