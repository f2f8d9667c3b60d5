"""FlyLoRA specifics: frozen sparse A, k = r is LoRA, bias balancing, selection, merge, config.

The adapter-core matrix (identity at init, disable, only B trains, A and b saved and float32, A
unchanged by training, save/load in a fresh process) and the active-parameter formula run in
``test_adapters_matrix.py`` (``_adapters.CONFIGS``).
"""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import adapters, assert_equals_reference, inputs, perturb
from _models import MODELS, TARGETS, batch
from frame_peft.core.adapter import build_adapter
from frame_peft.methods.flylora import FlyLoRAConfig
from frame_peft.methods.flylora.layer import nonzeros_per_row

U = 1e-3


def make_config(targets="all-linear", **kw):
    return FlyLoRAConfig(target_modules=targets, **{"rank": 8, "top_k": 2, "dropout": 0.0, **kw})


def build(model_name, **kw):
    return fp.inject(MODELS[model_name](), make_config(**kw))


def make_adapter(d_in=12, d_out=20, name="m", **kw):
    return build_adapter(make_config(**kw), d_in, d_out, name)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_k_equals_r_is_lora_with_that_a(model_name):
    def copy(fly, lora):
        lora.A.copy_(fly.A)
        lora.B.copy_(fly.B)

    targets = TARGETS[model_name]
    lora = fp.LoRAConfig(target_modules=targets, rank=4, dropout=0.0)
    assert_equals_reference(model_name, make_config(targets, rank=4, top_k=4), lora, copy)


def test_sparse_a_exact_nonzeros_and_scale():
    model = build("llama", rank=8, top_k=2)
    values = []
    for a in adapters(model).values():
        p = a.in_features // (8 // 2)  # the authors' training code: d_in // (r // k)
        assert a.nonzeros == p
        assert ((a.A != 0).sum(dim=1) == p).all()
        values.append(a.A[a.A != 0])
    std = torch.cat(values).std()
    assert 0.7 / 8 < std < 1.3 / 8  # N(0, 1/r²)
    # d_in = 10, r = 4, k = 3: 10 // (4 // 3) = 10, int(10 · 0.75) = 7, round(7.5) = 8
    for rule, p in (("integer_ratio", 10), ("floor", 7), ("round", 8)):
        a = make_adapter(d_in=10, rank=4, top_k=3, nonzeros_rule=rule)
        assert a.nonzeros == p == nonzeros_per_row(10, 4, 3, rule)
        assert ((a.A != 0).sum(dim=1) == p).all()
    assert nonzeros_per_row(3, 32, 1, "floor") == 1  # at least one non-zero per row


def test_frozen_a_reproducible_per_module_and_seed(tmp_path):
    m1 = build("gpt2")
    m2 = build("gpt2")
    a1, a2 = adapters(m1), adapters(m2)
    assert all(torch.equal(a1[n].A, a2[n].A) for n in a1)  # rebuild: same A
    mats = [a.A for n, a in a1.items() if n.endswith("c_proj")]
    assert len(mats) >= 2 and not torch.equal(mats[0], mats[1])  # modules differ
    m3 = build("gpt2", seed=1)
    assert not any(torch.equal(a1[n].A, a.A) for n, a in adapters(m3).items())
    # saved in the file, and loaded bit-identically even into a model built with another seed
    perturb(m1)
    fp.save_adapter(m1, tmp_path / "ad")
    _, tensors = fp.core.serialization.read_adapter(tmp_path / "ad")
    assert {k.rsplit(".", 1)[1] for k in tensors} == {"A", "B", "rank_bias"}
    with torch.no_grad():
        for a in adapters(m3).values():
            a.A.mul_(2.0)
    m4 = fp.load_adapter(MODELS["gpt2"](), tmp_path / "ad")
    for n, a in adapters(m4).items():
        assert torch.equal(a.A, a1[n].A) and torch.equal(a.B, a1[n].B)


def _balanced_case():
    """An adapter with A = I (so y_A = x[:r]) and tokens chosen to over-select rank 0."""
    a = make_adapter(d_in=6, rank=4, top_k=2)
    with torch.no_grad():
        a.A.copy_(torch.eye(4, 6))
    x = torch.zeros(2, 3, 6)
    x[..., 0] = 5.0  # every token keeps rank 0
    x[0, :, 1] = 3.0  # row 0 keeps rank 1
    x[1, :, 2] = 3.0  # row 1 keeps rank 2; rank 3 is never kept
    return a, x


def test_bias_moves_toward_balance_in_training_only():
    a, x = _balanced_case()
    a.eval()
    a(x, x).sum().backward()  # eval with grad on
    with torch.no_grad():
        a(x, x)  # eval without grad
    assert torch.equal(a.rank_bias, torch.zeros(4))  # evaluation never moves b
    a.train()
    a(x, x)
    # counts c = (6, 3, 3, 0), mean 3: b = u · sign(3 − c)
    assert torch.equal(a.rank_bias, torch.tensor([-U, 0.0, 0.0, U]))
    with torch.no_grad():
        a(x, x)  # a training forward moves b whatever the grad mode
    assert torch.equal(a.rank_bias, torch.tensor([-2 * U, 0.0, 0.0, 2 * U]))


def test_checkpoint_recompute_moves_bias_again():
    """Activation checkpointing re-runs the forward in training mode: b moves twice a step (as
    in the authors' runs, which used non-reentrant gradient checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    for reentrant in (False, True):
        a, x = _balanced_case()
        with torch.no_grad():
            a.B.normal_()
        a.train()
        x = x.requires_grad_()
        checkpoint(a, x, x, use_reentrant=reentrant).sum().backward()
        assert torch.equal(a.rank_bias, torch.tensor([-2 * U, 0.0, 0.0, 2 * U]))


def test_detach_input_cuts_the_gradient_to_x_only():
    x = torch.randn(5, 12)
    for detach in (True, False):
        a = make_adapter(rank=8, top_k=3, detach_input=detach)
        with torch.no_grad():
            a.B.normal_()
        xi = x.clone().requires_grad_()
        a(xi, xi).square().sum().backward()
        assert a.B.grad is not None and a.B.grad.abs().sum() > 0
        assert (xi.grad is None) == detach
    assert FlyLoRAConfig().detach_input is True


def test_bias_update_excludes_padding():
    a, x = _balanced_case()
    x[0, :, 0] = 0.0  # row 0 now keeps ranks 1 and 3
    x[0, :, 3] = 1.0
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    a.state.begin_forward(mask)
    a.train()
    a(x, x)
    # valid tokens: 3 of row 0 (ranks 1, 3) and 1 of row 1 (ranks 0, 2): c = (1, 3, 1, 3), mean 2
    assert torch.equal(a.rank_bias, torch.tensor([U, -U, U, -U]))


def test_training_forward_moves_bias_in_model():
    model = build("qwen2")
    model.train()
    out = model(**batch())
    moved = [a.rank_bias.abs().max() > 0 for a in adapters(model).values()]
    assert all(moved)
    b = {n: a.rank_bias.clone() for n, a in adapters(model).items()}
    model.eval()
    model(**batch())  # grad on, but eval
    assert all(torch.equal(a.rank_bias, b[n]) for n, a in adapters(model).items())
    del out


@pytest.mark.parametrize("selection", ["signed", "abs"])
def test_selection_keeps_exactly_k_ranks(selection):
    a = make_adapter(rank=8, top_k=3, selection=selection)
    with torch.no_grad():
        a.B.copy_(torch.eye(20, 8))  # Δy[:8] = scale · (y_A ⊙ m)
        a.rank_bias.copy_(torch.linspace(-0.2, 0.2, 8))
    a.eval()
    x = torch.randn(4, 12)
    out = a(x, x)[:, :8] / a.scale
    kept = out != 0
    assert (kept.sum(dim=1) == 3).all()
    y = x @ a.A.T
    score = y + a.rank_bias
    score = score.abs() if selection == "abs" else score
    top = score.topk(3, dim=1).indices
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, top, True))
    torch.testing.assert_close(out[kept], y[kept])


def test_signed_and_abs_selection_differ_on_negative_activations():
    a = make_adapter(d_in=4, rank=4, top_k=1)
    b = make_adapter(d_in=4, rank=4, top_k=1, selection="abs")
    for ad in (a, b):
        with torch.no_grad():
            ad.A.copy_(torch.eye(4))
            ad.B.copy_(torch.eye(20, 4))
        ad.eval()
    x = torch.tensor([[-3.0, 1.0, 0.0, 0.0]])
    assert a(x, x)[0, :4].nonzero().flatten().tolist() == [1]  # largest signed value
    assert b(x, x)[0, :4].nonzero().flatten().tolist() == [0]  # largest magnitude


def test_merge_refuses_k_below_r_and_is_exact_for_k_equal_r():
    model = build("llama")
    with pytest.raises(fp.NotMergeableError, match="top_k == rank"):
        fp.merge_and_unload(model)
    assert fp.adapted_layers(model)
    for name in ("gpt2", "llama"):
        model = build(name, rank=4, top_k=4)
        perturb(model)
        with torch.no_grad():
            adapted = model(**inputs()).logits
            merged = fp.merge_and_unload(model)(**inputs()).logits
        torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)


def test_config_roundtrip_and_defaults():
    cfg = make_config(seed=3, bias_update_rate=0.01)
    assert fp.config_from_dict(cfg.to_dict()) == cfg
    d = FlyLoRAConfig()
    assert (d.rank, d.top_k, d.bias_update_rate) == (32, 8, 1e-3)
    assert (d.selection, d.nonzeros_rule, d.detach_input) == ("signed", "integer_ratio", True)
    assert d.for_module("x").alpha == 64.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"top_k": 9}, r"top_k \(9\) cannot exceed rank \(8\)"),
        ({"bias_update_rate": 0.0}, "bias_update_rate must be a finite number > 0"),
        ({"bias_update_rate": float("nan")}, "bias_update_rate must be a finite number > 0"),
        ({"bias_update_rate": "1e-3"}, "bias_update_rate must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"selection": "magnitude"}, "selection must be one of"),
        ({"nonzeros_rule": "ceil"}, "nonzeros_rule must be one of"),
        ({"detach_input": 1}, "detach_input must be True or False"),
        ({"overrides": {"q_proj": {"top_k": 16}}}, "cannot exceed rank"),
        ({"overrides": {"q_proj": {"num_experts": 2}}}, "cannot be set per module"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kw)
