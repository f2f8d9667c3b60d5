"""HMoRA (docs/methods.md §4.5): the method's own behaviour.

The adapter-core matrix (identity at init, disable, trainable set with β, entropy aux loss per
module, bf16 with float32 routing, save/load in a fresh process) and the active-parameter formula
run in ``test_adapters_matrix.py`` on the per-module variant (``HMoRAConfig.simplified``). The
tests below check that variant's behaviour (kept as options) and then the authors' defaults:
shared encoder and routers, plain-LoRA modules, generation, padding, save/load. Parity with the
authors' code is in ``test_hmora_parity.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import frame_peft as fp
from _adapters import adapters, perturb
from _models import MODELS, batch, tiny_llama
from frame_peft.core.adapter import build_adapter
from frame_peft.methods.hmora import HMoRAConfig
from frame_peft.methods.hmora.config import initial_beta
from frame_peft.routing import RoutingState


def CONFIG(t):
    return HMoRAConfig.simplified(target_modules=t, num_experts=4, rank=2, dropout=0.0)


def inputs_of(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "labels"}


def build(model_name: str, config=CONFIG, targets="all-linear"):
    return fp.inject(MODELS[model_name](), config(targets))


def make_adapter(d_in=16, d_out=12, layer_index=None, num_layers=0, **kw):
    """One standalone HMoRA module with its own routing state (as ``inject`` builds it)."""
    cfg = HMoRAConfig.simplified(**{"target_modules": ["x"], "dropout": 0.0, **kw})
    state = RoutingState()
    return build_adapter(cfg, d_in, d_out, "x", state, layer_index, num_layers), state


# --- HMoRA's own behaviour ---------------------------------------------------------------------


def test_task_routing_off_equals_dense_moe_lora():
    """w = p: HMoRA without task routing is MoE-LoRA with top_k = E and the same scale.

    MoE-LoRA scales by α/r, HMoRA by α/√r; with r = 4, α_moe = 8 and α_hmora = 4 both are 2.
    """
    targets = ["q_proj", "v_proj", "down_proj"]
    hm = fp.inject(
        tiny_llama(),
        HMoRAConfig.simplified(
            target_modules=targets, num_experts=4, rank=4, alpha=4.0, task_routing=False,
            dropout=0.0,
        ),
    )  # fmt: skip
    moe = fp.inject(
        tiny_llama(),
        fp.MoELoRAConfig(target_modules=targets, num_experts=4, top_k=4, rank=4, alpha=8.0,
                         dropout=0.0),
    )  # fmt: skip
    perturb(moe)
    h_ads, m_ads = adapters(hm), adapters(moe)
    with torch.no_grad():
        for name, ma in m_ads.items():
            ha = h_ads[name]
            assert ha.scale == ma.scale == 2.0
            assert {n for n, _ in ha.named_parameters()} == {"A", "B", "router.token.weight"}
            ma.router.weight.normal_(0.0, 1.0)  # clearly non-uniform routing
            ha.A.copy_(ma.A.reshape(-1, ma.A.shape[-1]))  # (E, r, d_in) -> (E·r, d_in)
            ha.B.copy_(ma.B.permute(1, 0, 2).reshape(ma.B.shape[1], -1))  # -> (d_out, E·r)
            ha.router.token.weight.copy_(ma.router.weight)
        inputs = inputs_of(batch())
        out_h, out_m = hm(**inputs).logits, moe(**inputs).logits
        with fp.disable_adapters(moe):
            base = moe(**inputs).logits
    assert (out_m - base).abs().max() > 1e-3
    torch.testing.assert_close(out_h, out_m, rtol=0.0, atol=1e-6)


def test_beta_init_rises_with_depth():
    c = HMoRAConfig.simplified(beta_min=-3.0, beta_max=1.0)
    betas = [initial_beta(c, i, 5) for i in range(5)]
    assert betas == pytest.approx([-3.0, -2.0, -1.0, 0.0, 1.0])
    assert initial_beta(c, None, 5) == pytest.approx(-1.0)
    assert initial_beta(c, 0, 1) == pytest.approx(-1.0)
    model = build("llama")  # two layers: layer 0 at beta_min, layer 1 at beta_max
    for name, a in adapters(model).items():
        expected = -2.0 if ".layers.0." in name else 2.0
        assert float(a.router.beta.detach()) == pytest.approx(expected), name
    mix = {n: torch.sigmoid(a.router.beta).item() for n, a in adapters(model).items()}
    assert mix["model.layers.0.mlp.down_proj"] < 0.5 < mix["model.layers.1.mlp.down_proj"]


def test_task_ids_change_routing_and_are_validated():
    ad, state = make_adapter(num_experts=4, num_tasks=3)
    with torch.no_grad():
        ad.router.task.weight.normal_(0.0, 1.0)
        ad.router.beta.fill_(3.0)
    x = torch.randn(2, 5, 16)

    def weights(task_ids=None):
        with fp.routing_context(task_ids=task_ids):
            state.begin_forward(None)
            return ad.route(x).probs.view(2, 5, 4)

    w0, w2 = weights(torch.tensor([0, 0])), weights(torch.tensor([2, 2]))
    assert (w0 - w2).abs().max() > 1e-3
    w_mixed = weights(torch.tensor([0, 2]))
    torch.testing.assert_close(w_mixed[0], w0[0])
    torch.testing.assert_close(w_mixed[1], w2[1])
    # no ids -> the encoder: the embedding table plays no part
    enc = weights()
    with torch.no_grad():
        ad.router.task_embedding.weight.normal_(0.0, 3.0)
    assert torch.equal(weights(), enc)
    assert (weights(torch.tensor([0, 0])) - w0).abs().max() > 1e-4
    for bad in (torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="out of range for num_tasks=3"):
            weights(bad)
    with pytest.raises(ValueError, match="got 3 task ids for a batch of 2"):
        weights(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        weights(torch.tensor([0.0, 1.0]))


def test_top_k_renormalises_to_k_nonzeros():
    ad, state = make_adapter(num_experts=5, top_k=2, rank=3, alpha=6.0)
    with torch.no_grad():
        ad.router.token.weight.normal_(0.0, 1.0)
        ad.B.normal_(0.0, 0.1)
    x = torch.randn(3, 4, 16)
    state.begin_forward(None)
    r = ad.route(x)
    assert torch.equal((r.gates > 0).sum(-1), torch.full((12,), 2))
    torch.testing.assert_close(r.gates.sum(-1), torch.ones(12))
    picked = r.probs.gather(-1, r.indices)
    torch.testing.assert_close(r.gates.gather(-1, r.indices), picked / picked.sum(-1, True))
    assert (picked[:, :1] >= r.probs.max(-1, keepdim=True).values).all()
    # Δy = (α/√r) Σ_e g_e B_e A_e x, against the per-expert loop
    state.begin_forward(None)
    out = ad(x, x).reshape(12, -1)
    a, b = ad.expert_factors()
    xf = x.reshape(12, 16)
    ref = sum(r.gates[:, e : e + 1] * (xf @ a[e].T @ b[e].T) for e in range(5))
    torch.testing.assert_close(out, (6.0 / math.sqrt(3)) * ref)


def _entropy_by_hand(w: torch.Tensor) -> torch.Tensor:
    mean = w.mean(0)
    return (mean * mean.log()).sum() - (w * w.log()).sum(-1).mean()


def test_entropy_aux_excludes_padding():
    ad, state = make_adapter(num_experts=4)
    with torch.no_grad():
        ad.router.task.weight.normal_(0.0, 1.0)
        ad.router.token.weight.normal_(0.0, 1.0)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0  # right padding
    mask[1, :2] = 0  # left padding
    x = torch.randn(2, 6, 16)
    garbage = x.clone()
    garbage[mask == 0] = 50.0 * torch.randn(int((mask == 0).sum()), 16)

    def aux(inp, m):
        state.begin_forward(m)
        r = ad.route(inp)
        (term,) = state.current.terms
        return term, r.probs

    term, w = aux(x, mask)
    assert float(term.num_tokens) == 8
    valid = w[mask.reshape(-1).bool()]
    torch.testing.assert_close(term.losses["entropy"], 0.005 * _entropy_by_hand(valid))
    term_g, w_g = aux(garbage, mask)
    torch.testing.assert_close(term_g.losses["entropy"], term.losses["entropy"])
    torch.testing.assert_close(w_g[mask.reshape(-1).bool()], valid)  # pads never reach the pool
    unmasked, _ = aux(garbage, None)  # without the mask the garbage counts
    assert (unmasked.losses["entropy"] - term.losses["entropy"]).abs() > 1e-4
    ad.aux_coef = 0.0
    state.begin_forward(mask)
    ad.route(x)
    assert state.current.terms == []


def test_task_pool_is_causal():
    """Earlier positions never see later tokens (no label leak through the task encoder)."""
    model = build("llama")
    perturb(model)
    with torch.no_grad():
        for a in adapters(model).values():
            a.router.beta.fill_(4.0)
            a.router.task.weight.normal_(0.0, 2.0)
        ids = batch(pad_rows=0)["input_ids"]
        changed = ids.clone()
        changed[:, 7] = (changed[:, 7] + 1) % 64
        out, out2 = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.equal(out[:, :7], out2[:, :7])
    assert (out[:, 7:] - out2[:, 7:]).abs().max() > 1e-4


def test_decode_step_continues_the_prefix_pool():
    ad, state = make_adapter(num_experts=4)
    with torch.no_grad():
        ad.router.task.weight.normal_(0.0, 1.0)
        ad.router.beta.fill_(3.0)
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    state.begin_forward(mask)
    full = ad.route(x).probs.view(2, 7, 4)
    state.begin_forward(mask[:, :5])
    ad.route(x[:, :5])
    for t in (5, 6):  # one cached step per new token
        state.begin_forward(mask[:, : t + 1])
        step = ad.route(x[:, t : t + 1]).probs
        torch.testing.assert_close(step, full[:, t])
    state.begin_forward(mask)  # a decoding step whose prefix this module never saw
    with pytest.raises(RuntimeError, match="cached decoding step"):
        ad.route(x[:, 5:])


def assert_cached_generation_matches(model, max_new_tokens: int) -> None:
    """Greedy ``generate`` with the KV cache equals it without (same tokens, scores within
    1e-5) on a left-padded batch, and the adapters change the scores."""
    model.generation_config.pad_token_id = 0
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    kw = dict(
        max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
        output_scores=True,
    )  # fmt: skip
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
        plain = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        with fp.disable_adapters(model):
            base = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    for s_c, s_p in zip(cached.scores, plain.scores, strict=True):
        torch.testing.assert_close(s_c, s_p, rtol=0.0, atol=1e-5)
    moved = zip(cached.scores, base.scores, strict=True)
    assert max((c - b).abs().max() for c, b in moved) > 1e-3


def test_generate_with_cache_equals_without():
    model = fp.inject(tiny_llama(), CONFIG("all-linear"))
    perturb(model, std=0.3)
    with torch.no_grad():
        for a in adapters(model).values():
            a.router.task.weight.normal_(0.0, 2.0)
    assert_cached_generation_matches(model, max_new_tokens=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_experts": 0}, "num_experts"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 9}, "cannot exceed num_experts"),
        ({"task_routing": 1}, "task_routing"),
        ({"task_dim": 0}, "task_dim"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_tasks": 3, "task_routing": False}, "needs task_routing=True"),
        ({"beta_min": 1.0, "beta_max": 0.0}, "must not exceed beta_max"),
        ({"beta_max": float("inf")}, "beta_max"),
        ({"aux_loss_coef": -0.1}, "aux_loss_coef"),
        ({"rank": 0}, "rank"),
        ({"overrides": {"q_proj": {"top_k": 20}}}, "cannot exceed"),
        ({"overrides": {"q_proj": {"task_dim": 4}}}, "cannot be set per module"),
        ({"top_k_gates": "sparsemax"}, "top_k_gates"),
        ({"task_encoder": "mean"}, "task_encoder"),
        ({"aux_loss": "switch"}, "aux_loss"),
        ({"aux_reduction": "max"}, "aux_reduction"),
        ({"router_dropout": 1.0}, "router_dropout"),
        ({"router_bias": 1}, "router_bias"),
        ({"gamma_balance_token": 1.5}, "gamma_balance_token"),
        ({"token_only_below": 0.9, "task_only_above": 0.1}, "must not exceed task_only_above"),
        ({"lora_modules": "o_proj"}, "lora_modules"),
        ({"task_encoder_heads": 0}, "task_encoder_heads"),
        ({"task_token_id": -1}, "task_token_id"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HMoRAConfig(**kwargs)


def test_config_round_trip_and_defaults():
    cfg = HMoRAConfig(num_tasks=4, top_k=2, overrides={"down_proj": {"num_experts": 6}})
    assert fp.config_from_dict(cfg.to_dict()) == cfg
    d = HMoRAConfig()  # the authors' run_train.sh
    assert (d.num_experts, d.rank, d.alpha, d.top_k, d.dropout) == (8, 8, 8.0, 2, 0.1)
    assert (d.aux_loss, d.aux_loss_coef, d.aux_reduction) == ("gjs", 0.005, "sum")
    assert (d.gamma_balance_token, d.gamma_certain_token) == (0.98, 0.5)
    assert (d.gamma_balance_task, d.gamma_certain_task) == (0.98, 0.5)
    assert (d.router_bias, d.router_dropout, d.task_encoder, d.top_k_gates) == (
        True,
        0.1,
        "transformer",
        "softmax",
    )
    assert (d.shared_a, d.share_router_qkv, d.share_router_gate_up) == (True, True, True)
    assert d.lora_modules == ["o_proj", "down_proj"]
    assert (d.token_only_below, d.task_only_above) == (0.2, 0.8)
    old = HMoRAConfig.simplified()
    assert (old.num_experts, old.rank, old.top_k, old.aux_loss) == (8, 4, None, "entropy")
    assert fp.config_from_dict(old.to_dict()) == old
    assert "hmora" in fp.method_names()


# --- the authors' defaults: shared encoder and routers, plain-LoRA modules ---------------------


def DEFAULT(t="all-linear", **kw):
    return HMoRAConfig(
        target_modules=t, **{"router_dropout": 0.0, "task_encoder_dropout": 0.0, "dropout": 0.0,
                             "num_experts": 4, "rank": 2, **kw}
    )  # fmt: skip


def _default_model(seed=0, **kw):
    model = fp.inject(tiny_llama(seed), DEFAULT(**kw))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # every adapter tensor away from its initialisation
        for layer in fp.adapted_layers(model).values():
            for p in layer.adapter.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_default_structure_shares_encoder_and_routers():
    model = fp.inject(tiny_llama(), HMoRAConfig())
    ads = adapters(model)
    owners = [n for n, a in ads.items() if "task_encoder" in a._modules]
    assert owners == ["model.layers.0.self_attn.q_proj"]  # one encoder, owned once
    for layer in (0, 1):
        pre = f"model.layers.{layer}."
        q, k, v = (ads[pre + f"self_attn.{p}_proj"] for p in "qkv")
        gate, up = ads[pre + "mlp.gate_proj"], ads[pre + "mlp.up_proj"]
        assert k.routing_module is q.routing_module is v.routing_module is q.router
        assert up.routing_module is gate.router
        assert {n for n, _ in k.named_parameters()} == {"A", "B"}  # the router is q's
        assert q.A.shape == (8, 32) and q.B.shape == (32, 64)  # shared A (r, d), B (d, E·r)
        for plain in ("self_attn.o_proj", "mlp.down_proj"):
            a = ads[pre + plain]
            assert not a.has_router and a.num_experts == 1
            assert a.A.shape == (8, a.in_features) and a.B.shape == (a.out_features, 8)
    # 2 layers: σ(β) = 0.12 (token only) in layer 0, 0.88 (task only) in layer 1
    assert ads["model.layers.0.self_attn.q_proj"].router.mode == "token"
    assert ads["model.layers.1.self_attn.q_proj"].router.mode == "task"
    assert ads["model.layers.0.self_attn.q_proj"].scale == pytest.approx(8 / math.sqrt(8))
    mid = fp.inject(tiny_llama(), HMoRAConfig(token_only_below=0.0, task_only_above=1.0))
    assert {a.router.mode for a in adapters(mid).values() if "router" in a._modules} == {"mixed"}


def test_default_plain_lora_modules_merge():
    model = _default_model()
    layer = fp.adapted_layers(model)["model.layers.0.mlp.down_proj"]
    a = layer.adapter
    torch.testing.assert_close(a.delta_weight(), a.scale * a.B @ a.A)
    x = torch.randn(3, a.in_features)
    torch.testing.assert_close(a(x, x), x @ a.delta_weight().T)


def test_default_save_load_gives_identical_logits(tmp_path):
    model = _default_model()
    data = inputs_of(batch())
    with torch.no_grad():
        before = model(**data).logits
    fp.save_adapter(model, tmp_path / "a")
    fresh = fp.load_adapter(tiny_llama(), tmp_path / "a")
    with torch.no_grad():
        after = fresh(**data).logits
    torch.testing.assert_close(after, before, rtol=0.0, atol=0.0)
    keys = set(fp.adapter_state_dict(fresh))
    assert "model.layers.0.self_attn.q_proj.task_encoder.task_token" in keys


def test_default_generate_with_cache_equals_without():
    model = _default_model(token_only_below=0.0, task_only_above=1.0)
    assert_cached_generation_matches(model, max_new_tokens=6)


def test_default_prompt_comes_from_labels_or_prompt_mask():
    """With labels, the encoder reads only the positions before the first supervised label; a
    routing_context prompt_mask does the same; the task loss and routing ignore the answer."""
    model = _default_model()
    data = batch(pad_rows=0)
    labels = data["labels"].clone()
    labels[:, :4] = -100  # prompt = the first 4 tokens
    changed = data["input_ids"].clone()
    changed[:, 6] = (changed[:, 6] + 1) % 64  # an answer token
    with torch.no_grad():
        out = model(input_ids=data["input_ids"], labels=labels).logits
        out2 = model(input_ids=changed, labels=labels).logits
        prompt = torch.zeros_like(labels)
        prompt[:, :4] = 1
        with fp.routing_context(prompt_mask=prompt):
            out3 = model(input_ids=data["input_ids"]).logits
    torch.testing.assert_close(out[:, :6], out2[:, :6], rtol=0.0, atol=0.0)
    torch.testing.assert_close(out3, out, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("with_aux", [True, False])
def test_default_gradient_checkpointing_gives_the_same_gradients(with_aux):
    """The shared encoder under HF checkpointing (each module then computes z in its own
    checkpointed region). Reentrant checkpointing runs the first pass without grad, so aux losses
    recorded inside blocks carry no gradient there (for every routed method): checked without."""
    data = batch()
    grads = []
    for reentrant in (None, False) if with_aux else (None, True, False):  # None: no checkpointing
        model = _default_model(token_only_below=0.0, task_only_above=1.0)
        fp.set_aux_in_loss(model, with_aux)  # with labels, outputs.loss then holds the aux loss
        model.train()
        if reentrant is not None:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
            model.enable_input_require_grads()  # reentrant blocks need a grad-requiring input
        out = model(**data)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for n in grads[0]:
            torch.testing.assert_close(other[n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
    assert (
        grads[0]["model.layers.0.self_attn.q_proj.adapter.task_encoder.task_token"].abs().max() > 0
    )


def test_default_router_dropout_only_in_training():
    model = fp.inject(tiny_llama(), HMoRAConfig(dropout=0.0, task_encoder_dropout=0.0))
    a = adapters(model)["model.layers.0.self_attn.q_proj"]
    assert a.router.drop.p == 0.1 and a.router.token.bias is not None
    x = torch.randn(2, 5, 32)
    a.train()
    assert not torch.equal(a.router.token_logits(x), a.router.token_logits(x))
    a.eval()
    assert torch.equal(a.router.token_logits(x), a.router.token_logits(x))


def test_default_bf16_keeps_routing_and_encoder_float32():
    model = _default_model().to(torch.bfloat16)
    for name, a in adapters(model).items():
        for key, p in a.named_parameters():
            want = torch.bfloat16 if key in ("A", "B") else torch.float32
            assert p.dtype == want, (name, key)
    with torch.no_grad():
        out = model(**inputs_of(batch())).logits
    assert torch.isfinite(out.float()).all()


# --- the generic core additions HMoRA uses (routing/context.py, core/inject.py) ----------------


def test_forward_record_keeps_the_model_inputs_and_embeds_them():
    from frame_peft.core.inject import find_injection
    from frame_peft.routing.context import input_embedding_of, model_inputs

    ids, labels = torch.tensor([[1, 2, 3]]), torch.tensor([[-100, 2, 3]])
    assert model_inputs((ids,), {"labels": labels}) == {
        "input_ids": ids, "inputs_embeds": None, "labels": labels,
    }  # fmt: skip
    assert model_inputs((), {"input_ids": ids, "inputs_embeds": 3})["inputs_embeds"] is None
    assert input_embedding_of(torch.nn.Linear(2, 2)) is None
    model = fp.inject(tiny_llama(), CONFIG(["q_proj"]))
    state = find_injection(model).state
    assert state.input_embedding is model.get_input_embeddings()
    assert state.embedding_dim() == 32
    prompt = torch.tensor([[1, 1, 0]])
    with torch.no_grad(), fp.routing_context(prompt_mask=prompt):
        model(input_ids=ids, labels=ids)
    rec = state.current
    assert rec.from_model and torch.equal(rec.input_ids, ids) and torch.equal(rec.labels, ids)
    assert torch.equal(rec.prompt_mask, prompt)
    torch.testing.assert_close(state.input_embeddings(), model.get_input_embeddings()(ids))
    emb = torch.randn(1, 3, 32)
    with torch.no_grad():
        model(inputs_embeds=emb)
    assert state.input_embeddings() is emb


def test_aux_reduction_sums_or_averages_the_module_terms():
    from frame_peft.routing import AuxTerm

    state = RoutingState()
    state.begin_forward(None)
    for v in (1.0, 2.0, 6.0):
        state.record(AuxTerm("m", {"x": torch.tensor(v)}, torch.tensor(1.0)))
    assert float(state.aux_loss()) == pytest.approx(3.0)
    state.aux_reduction = "sum"
    assert float(state.aux_loss()) == pytest.approx(9.0)
    assert not state.current.from_model  # opened by hand, not by a model's pre-hook


def test_z_loss_is_refused_not_ignored():
    with pytest.raises(ValueError, match="z_loss_coef must be 0 for hmora"):
        HMoRAConfig(z_loss_coef=0.01)


def test_default_deepcopy_and_pickle_after_a_training_forward():
    """The authors' variant (one model-level task encoder in the routing state's shared objects):
    a copy taken after a training forward is its own model, encoder included, and trains."""
    import copy
    import pickle

    model = _default_model()
    model.train()
    model(**batch()).loss.backward()
    clone = copy.deepcopy(model)
    enc = [a.task_encoder for a in adapters(model).values() if hasattr(a, "task_encoder")]
    cenc = [a.task_encoder for a in adapters(clone).values() if hasattr(a, "task_encoder")]
    assert enc and cenc and cenc[0] is not enc[0]
    clone(**batch()).loss.backward()
    assert pickle.loads(pickle.dumps(model)) is not None
