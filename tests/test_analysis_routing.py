"""RoutingRecorder: routing statistics over forwards, with hand-set routers as known answers."""

from __future__ import annotations

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS
from _models import TARGETS, VOCAB, mlp, param_grads, tiny_llama
from frame_peft.analysis.routing import RoutingRecorder


def mlp_mixture(top_k: int = 2, cls=fp.MoELoRAConfig, **kw) -> torch.nn.Module:
    """MLP (16 -> 32 -> 16) with E = 4 experts on its first Linear, router rows set by hand to
    logits ``(−4, −2, 2, 4)·Σx``: positive tokens rank experts 3 > 2 > 1 > 0, negative ones
    0 > 1 > 2 > 3, with margins of 2|Σx| > 16 (one-hot probabilities up to e^-16)."""
    extra = {"top_k": top_k} if cls is not fp.HydraLoRAConfig else {}
    model = fp.inject(mlp(), cls(target_modules=["0"], num_experts=4, rank=2, dropout=0.0,
                                 **extra, **kw))  # fmt: skip
    router = fp.adapted_layers(model)["0"].adapter.router
    with torch.no_grad():
        router.weight.copy_(torch.tensor([-4.0, -2.0, 2.0, 4.0])[:, None].expand(4, 16))
    return model


def signed_inputs(signs: list[list[int]]) -> torch.Tensor:
    """(B, S, 16) inputs with entries in [0.5, 1.5] times the sign of each token."""
    g = torch.Generator().manual_seed(0)
    s = torch.tensor(signs, dtype=torch.float32)
    return (torch.rand(*s.shape, 16, generator=g) + 0.5) * s[..., None]


def test_all_tokens_to_one_expert_is_a_collapse():
    for top_k, share, dominant in ((1, 1.0, "[3]"), (2, 0.5, "[2, 3]")):
        model = mlp_mixture(top_k)
        with RoutingRecorder(model) as rec:
            model(signed_inputs([[1] * 5, [1] * 5]))
        stats = rec.statistics()
        m = stats["modules"]["0"]
        assert (m["num_tokens"], m["num_experts"], m["top_k"]) == (10, 4, top_k)
        assert m["load"][3] == pytest.approx(share) and sum(m["load"]) == pytest.approx(1.0)
        assert m["importance"][3] == pytest.approx(1.0, abs=1e-6)
        assert m["entropy"] < 1e-5 and m["top1_prob"] == pytest.approx(1.0, abs=1e-6)
        assert m["load_entropy"] == pytest.approx(0.0 if top_k == 1 else 0.5, abs=1e-6)
        (line,) = stats["warnings"]
        dead = "[0, 1, 2]" if top_k == 1 else "[0, 1]"
        assert line.startswith(f"0: routing collapse: dead expert(s) {dead} (load < 0.025)")
        assert f"dominant expert(s) {dominant}" in line
        (line,) = rec.statistics(dead_share=0.0, dominant_share=share)["warnings"] or [None]
        assert line is None  # nothing below 0 and nothing above the largest load
        assert stats["tasks"] == [] and stats["by_layer_task"]["0"]["load"] == []


def test_dense_router_load_counts_the_most_probable_expert():
    model = mlp_mixture(cls=fp.HydraLoRAConfig)
    with RoutingRecorder(model) as rec:
        model(signed_inputs([[1, 1, -1, 1]]))
    m = rec.statistics()["modules"]["0"]
    assert m["top_k"] == 4
    assert m["load"] == pytest.approx([0.25, 0.0, 0.0, 0.75])


def test_uniform_router_has_entropy_one():
    model = fp.inject(tiny_llama(), CONFIGS["moe-lora"](TARGETS["llama"]))
    with torch.no_grad():
        for layer in fp.adapted_layers(model).values():
            layer.adapter.router.weight.zero_()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    with RoutingRecorder(model) as rec:
        model(input_ids=ids)
    stats = rec.statistics()
    assert len(stats["modules"]) == 6  # (tied probabilities: top-k picks the same two experts)
    for m in stats["modules"].values():
        assert m["entropy"] == pytest.approx(1.0)
        assert m["importance"] == pytest.approx([0.25] * 4)
        assert m["top1_prob"] == pytest.approx(0.25)


def test_masked_tokens_are_excluded_and_forwards_accumulate():
    model = mlp_mixture(top_k=1)
    x = signed_inputs([[1, 1, 1, -1, -1], [-1, 1, -1, -1, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])  # valid: 4 positive, 2 negative
    with RoutingRecorder(model) as rec:
        with fp.routing_context(attention_mask=mask):
            model(x)
        m = rec.statistics()["modules"]["0"]
        assert m["num_tokens"] == 6
        assert m["load"] == pytest.approx([2 / 6, 0.0, 0.0, 4 / 6])
        model(x)  # no mask: all 10 tokens count (5 positive, 5 negative)
    m = rec.statistics()["modules"]["0"]
    assert m["num_tokens"] == 16
    assert m["load"] == pytest.approx([7 / 16, 0.0, 0.0, 9 / 16])
    assert m["importance"] == pytest.approx([7 / 16, 0.0, 0.0, 9 / 16], abs=1e-6)


def test_per_task_loads():
    model = mlp_mixture(top_k=1)
    x = signed_inputs([[1, 1, 1, 1], [-1, -1, -1, 1], [1, 1, -1, -1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    with RoutingRecorder(model, task_names=["math", "code", "chat"]) as rec:
        with fp.routing_context(attention_mask=mask, task_ids=torch.tensor([0, 1, 3])):
            model(x)
        model(x)  # no task ids: totals only
    stats = rec.statistics()
    assert stats["tasks"] == ["math", "code", "chat", "task3"]
    m = stats["modules"]["0"]
    assert m["per_task_tokens"] == {"math": 4, "code": 3, "chat": 0, "task3": 4}
    assert m["per_task_load"]["math"] == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert m["per_task_load"]["code"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert m["per_task_load"]["chat"] == [0.0] * 4
    assert m["per_task_load"]["task3"] == pytest.approx([0.5, 0.0, 0.0, 0.5])
    assert m["num_tokens"] == 11 + 12
    heat = stats["by_layer_task"]["0"]
    # the heatmap has rows only for tasks the layer saw: "chat" had no tokens
    assert heat["tasks"] == ["math", "code", "task3"] and heat["modules"] == ["0"]
    assert heat["load"] == [m["per_task_load"][t] for t in heat["tasks"]]


@pytest.mark.parametrize("method", ["moe-lora", "frame", "hydralora", "fouriermoe", "hmora"])
def test_every_mixture_method_is_recorded_without_changing_outputs_or_gradients(method):
    model = fp.inject(tiny_llama(), CONFIGS[method](TARGETS["llama"]))
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    def run():
        model.zero_grad()
        with fp.routing_context(task_ids=torch.tensor([0, 1])):
            out = model(input_ids=ids, attention_mask=mask).logits
        (out.square().mean() + fp.aux_loss(model)).backward()
        return out.detach(), param_grads(model)

    plain, plain_grads = run()
    with RoutingRecorder(model, ["a", "b"]) as rec:
        watched, watched_grads = run()
    torch.testing.assert_close(watched, plain, rtol=0, atol=0)
    assert watched_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(watched_grads[name], grad, rtol=0, atol=0)
    stats = rec.statistics()
    assert set(stats["modules"]) == set(fp.adapted_layers(model))
    for m in stats["modules"].values():
        assert m["num_tokens"] == 8 and m["per_task_tokens"] == {"a": 3, "b": 5}
        assert sum(m["load"]) == pytest.approx(1.0) and sum(m["importance"]) == pytest.approx(1.0)
        assert 0.0 <= m["entropy"] <= 1.0 and 0.0 < m["top1_prob"] <= 1.0
        for task in ("a", "b"):
            assert sum(m["per_task_load"][task]) == pytest.approx(1.0)
    assert sorted(stats["by_layer_task"]) == ["0", "1"]


def test_recorder_removes_itself_also_after_an_exception():
    model = mlp_mixture()
    state = fp.core.inject.require_injection(model).state
    x = signed_inputs([[1, -1, 1]])
    with pytest.raises(RuntimeError, match="boom"), RoutingRecorder(model) as rec:
        model(x)
        assert len(state.observers) == 1
        raise RuntimeError("boom")
    assert state.observers == []
    model(x)  # not recorded any more
    assert rec.statistics()["modules"]["0"]["num_tokens"] == 3
    with rec:  # a recorder can resume
        model(x)
        with pytest.raises(RuntimeError, match="already recording"):
            rec.__enter__()
    assert state.observers == [] and rec.statistics()["modules"]["0"]["num_tokens"] == 6
    with pytest.raises(ValueError, match="dead_share must be in"):
        rec.statistics(dead_share=1.5)
    with pytest.raises(ValueError, match="no frame-peft adapters"):
        RoutingRecorder(mlp())
