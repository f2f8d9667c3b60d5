"""The routing core: selection, losses with padding excluded, context, accumulation."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS, perturb
from _models import MODELS, TARGETS, VOCAB, param_grads, tiny_llama
from frame_peft.routing import (
    Routing,
    RoutingState,
    grouped_switch_loss,
    select_experts,
    switch_loss,
    z_loss,
)


def test_select_experts_topk_renormalises():
    logits = torch.randn(6, 5)
    r = select_experts(logits, 2)
    assert torch.allclose(r.gates.sum(-1), torch.ones(6))
    assert ((r.gates > 0).sum(-1) == 2).all()
    assert torch.equal(r.gates.argmax(-1), logits.argmax(-1))
    dense = select_experts(logits, None)
    assert torch.allclose(dense.gates, torch.softmax(logits, -1))


def _routing(probs, indices):
    return Routing(probs.log(), probs, indices, probs)


def test_switch_loss_is_one_at_balance_and_larger_when_collapsed():
    e = 4
    probs = torch.full((8, e), 1 / e)
    balanced = torch.arange(8).remainder(e).unsqueeze(-1)
    assert switch_loss(_routing(probs, balanced), None).item() == pytest.approx(1.0)
    collapsed_p = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(8, e)
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    assert switch_loss(_routing(collapsed_p, collapsed), None).item() == pytest.approx(4 * 0.97)


def test_grouped_loss_groups_by_order_not_index():
    # 4 experts, orders make groups {0, 3} and {1, 2}; traffic only to experts 0 and 3.
    orders = torch.tensor([0.1, 0.6, 0.9, 0.2])
    probs = torch.tensor([[0.5, 0.0, 0.0, 0.5]]).expand(4, 4)
    idx = torch.tensor([[0], [3], [0], [3]])
    r = _routing(probs.clamp_min(1e-9), idx)
    assert grouped_switch_loss(r, None, orders, 2).item() == pytest.approx(2.0, rel=1e-6)
    balanced_orders = torch.tensor([0.1, 0.6, 0.2, 0.9])  # groups {0, 2} and {3, 1}
    assert grouped_switch_loss(r, None, balanced_orders, 2).item() == pytest.approx(1.0, rel=1e-6)


def test_losses_ignore_masked_tokens():
    logits = torch.randn(6, 4)
    r = select_experts(logits, 2)
    mask = torch.tensor([1, 1, 1, 0, 0, 0.0])
    sub = select_experts(logits[:3], 2)
    for fn in (switch_loss, z_loss):
        assert fn(r, mask).item() == pytest.approx(fn(sub, None).item(), rel=1e-6)


def test_token_mask_for_cached_generation():
    state = RoutingState()
    state.begin_forward(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    assert state.token_mask(torch.Size([2, 4])).tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert state.token_mask(torch.Size([2, 1])).tolist() == [1, 1]  # newest position only
    assert state.token_mask(torch.Size([3, 4])) is None


def _frame_llama(**kw):
    model = fp.inject(
        MODELS["llama"](),
        fp.FrameConfig(target_modules=TARGETS["llama"], dropout=0.0, z_loss_coef=1e-3, **kw),
    )
    perturb(model)
    return model


def _padded(valid: torch.Tensor, length: int, seed: int):
    """Right-pad ``valid`` (B, S) to ``length`` with random garbage ids."""
    g = torch.Generator().manual_seed(seed)
    b, s = valid.shape
    ids = torch.cat([valid, torch.randint(0, VOCAB, (b, length - s), generator=g)], dim=1)
    mask = torch.cat([torch.ones(b, s), torch.zeros(b, length - s)], dim=1).long()
    return ids, mask


def test_padding_excluded_from_aux_and_context_override():
    model = _frame_llama()
    valid = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    ids_a, mask_a = _padded(valid, 9, seed=1)
    ids_b, mask_b = _padded(valid, 12, seed=2)
    model(input_ids=ids_a, attention_mask=mask_a)
    aux_a = fp.aux_loss(model)
    model(input_ids=ids_b, attention_mask=mask_b)
    aux_b = fp.aux_loss(model)
    torch.testing.assert_close(aux_a, aux_b, rtol=1e-5, atol=1e-7)
    # Without the mask the garbage counts and the loss changes.
    with fp.routing_context(attention_mask=torch.ones_like(mask_b)):
        model(input_ids=ids_b, attention_mask=mask_b)
    assert (fp.aux_loss(model) - aux_b).abs() > 1e-6
    # The override supplies the mask when the model call has none.
    with fp.routing_context(attention_mask=mask_b):
        model(input_ids=ids_b)
    torch.testing.assert_close(fp.aux_loss(model), aux_b, rtol=1e-5, atol=1e-7)


def test_aux_is_collected_per_forward_not_accumulated():
    model = _frame_llama()
    ids = torch.randint(0, VOCAB, (2, 6))
    model(input_ids=ids)
    first = fp.aux_loss(model)
    n_terms = len(fp.core.inject.require_injection(model).state.current.terms)
    model(input_ids=ids)
    assert len(fp.core.inject.require_injection(model).state.current.terms) == n_terms == 6
    torch.testing.assert_close(fp.aux_loss(model), first)
    stats = fp.aux_stats(model)
    assert set(stats) == {"balance", "z"} and all(v > 0 for v in stats.values())


def test_gradient_accumulation_matches_full_batch():
    """Two micro-batches holding the same valid tokens (different garbage padding) give the same
    routing load, so the accumulated aux gradient must equal the full-batch one exactly; it does
    only if padding is excluded from f, P and z and each loss is a mean over valid tokens."""
    valid = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    ids_a, mask_a = _padded(valid, 8, seed=1)
    ids_b, mask_b = _padded(valid, 11, seed=2)
    ids_a = torch.cat([ids_a, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask_a = torch.cat([mask_a, torch.zeros(2, 3, dtype=torch.long)], dim=1)

    acc = _frame_llama()
    for ids, mask in ((ids_a, mask_a), (ids_b, mask_b)):
        acc(input_ids=ids, attention_mask=mask)
        (fp.aux_loss(acc) / 2).backward()
    full = _frame_llama()
    full(input_ids=torch.cat([ids_a, ids_b]), attention_mask=torch.cat([mask_a, mask_b]))
    fp.aux_loss(full).backward()
    g_acc, g_full = param_grads(acc), param_grads(full)
    assert g_acc.keys() == g_full.keys() and any("router" in k for k in g_acc)
    for k in g_full:
        torch.testing.assert_close(g_acc[k], g_full[k], rtol=1e-4, atol=1e-8)


def test_routing_context_carries_task_ids():
    model = _frame_llama()
    state = fp.core.inject.require_injection(model).state
    with fp.routing_context(task_ids=torch.tensor([3, 1])):
        model(input_ids=torch.randint(0, VOCAB, (2, 5)))
        assert state.current.task_ids.tolist() == [3, 1]
    model(input_ids=torch.randint(0, VOCAB, (2, 5)))
    assert state.current.task_ids is None


def test_generate_works_with_mixtures():
    model = _frame_llama()
    ids = torch.randint(0, VOCAB, (2, 4))
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    assert out.shape == (2, 8)


@pytest.mark.parametrize("method", ["moe-lora", "frame", "hydralora", "fouriermoe", "hmora"])
def test_observers_see_every_routing_decision_with_mask_and_task_ids(method):
    """Each mixture layer hands its routing, the (T,) mask and the (T,) task ids to observers;
    the remover detaches the observer, and watching never changes the output."""
    model = fp.inject(tiny_llama(), CONFIGS[method](TARGETS["llama"]))
    state = fp.core.inject.require_injection(model).state
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    seen = []
    remove = state.add_observer(lambda *args: seen.append(args))
    with fp.routing_context(task_ids=torch.tensor([3, 1])):
        watched = model(input_ids=ids, attention_mask=mask).logits
    assert {name for name, *_ in seen} == set(fp.adapted_layers(model))
    for _, routing, token_mask, task_ids in seen:
        assert routing.probs.shape[0] == 10
        assert token_mask.tolist() == mask.reshape(-1).tolist()
        assert task_ids.tolist() == [3] * 5 + [1] * 5
    remove()
    count = len(seen)
    with fp.routing_context(task_ids=torch.tensor([3, 1])):
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert len(seen) == count and not state.observers
    torch.testing.assert_close(watched, plain, rtol=0, atol=0)
