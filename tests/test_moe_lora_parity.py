"""MoE-LoRA against MoLA's released layer (GCYZSL/MoLA @ 01785c8, ``src/mola_lora_hacked.py``
``Linear_MoE.forward`` and ``load_balancing_loss_func`` in ``src/mola_modeling_llama_hacked.py``).

The reference below is written from that code's semantics (per-expert loop over the tokens that
picked the expert, ``index_add_``), given our weights: forward, gradients of every parameter and
of the input, and the balance loss of one module (MoLA pools a layer's modules; with one module
the two are the same quantity). MoLA's router is an ``nn.Linear`` without bias, initialised
Kaiming-uniform: ``router_init="kaiming_uniform"`` here; our default N(0, 0.02) is FRAME's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import frame_peft as fp


def mola_forward(x, router_w, a, b, scaling, top_k):
    """``Linear_MoE.forward`` without the frozen base: x (B, S, d) -> (B, S, d_out), logits."""
    batch, seq, hidden = x.shape
    x = x.view(-1, hidden)
    router_logits = x @ router_w.T
    routing_weights_before = F.softmax(router_logits, dim=1, dtype=torch.float)
    routing_weights, selected = torch.topk(routing_weights_before, top_k, dim=-1)
    routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
    routing_weights = routing_weights.to(x.dtype)
    num_experts = router_w.shape[0]
    expert_mask = F.one_hot(selected, num_classes=num_experts).permute(2, 1, 0)
    out = torch.zeros(batch * seq, b.shape[1], dtype=x.dtype)
    for e in range(num_experts):
        idx, top_x = torch.where(expert_mask[e])
        if top_x.shape[0] == 0:
            continue
        current = x[top_x].reshape(-1, hidden)
        expert_out = (current @ a[e].T) @ b[e].T * scaling
        out = out.index_add(0, top_x, expert_out * routing_weights[top_x, idx, None])
    return out.reshape(batch, seq, -1), router_logits


def mola_balance_loss(router_logits, num_experts, top_k):
    """One layer of MoLA's ``load_balancing_loss_func`` (slot share × mean probability × E)."""
    routing_weights = F.softmax(router_logits, dim=-1)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected.reshape(-1), num_experts)
    counts = expert_mask.sum(dim=-2)
    tokens_per_expert = counts / counts.sum()
    return (tokens_per_expert * routing_weights.mean(dim=0)).sum() * num_experts


@pytest.mark.parametrize(("num_experts", "top_k"), [(8, 2), (4, 1), (6, 3)])
def test_moe_lora_equals_molas_layer(num_experts, top_k):
    d_in, d_out, rank, alpha = 24, 20, 4, 16.0
    config = fp.MoELoRAConfig(
        target_modules=["m"], num_experts=num_experts, top_k=top_k, rank=rank, alpha=alpha,
        dropout=0.0, aux_loss_coef=0.001, router_init="kaiming_uniform",
    )  # fmt: skip
    torch.manual_seed(0)
    ours = fp.build_adapter(config, d_in, d_out, "m")
    with torch.no_grad():
        ours.B.normal_(0.0, 0.5)  # B = 0 at init would make every output and A-gradient zero
    ref = {n: p.detach().clone().requires_grad_(True) for n, p in ours.named_parameters()}
    x = torch.randn(3, 7, d_in, generator=torch.Generator().manual_seed(1))
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    out = ours(x_ours, x_ours)
    want, logits = mola_forward(
        x_ref, ref["router.weight"], ref["A"], ref["B"], alpha / rank, top_k
    )
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    aux = ours.state.aux_loss()
    their_aux = 0.001 * mola_balance_loss(logits, num_experts, top_k)
    torch.testing.assert_close(aux, their_aux, rtol=1e-5, atol=1e-9)

    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * probe).sum().backward(retain_graph=True)
    (want * probe).sum().backward(retain_graph=True)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    # float32 rounding relative to the largest gradient (with k = 1 the gate is 1 and the
    # router's output gradient is rounding noise around 0)
    scale = max(ref[n].grad.abs().max().item() for n in ref)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    assert ours.A.grad.abs().max() > 0 and ours.B.grad.abs().max() > 0
    # the balance loss's own gradient (the router's only one with k = 1)
    ours.router.weight.grad, ref["router.weight"].grad = None, None
    aux.backward()
    their_aux.backward()
    mine, theirs = ours.router.weight.grad, ref["router.weight"].grad
    assert theirs.abs().max() > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6 * theirs.abs().max().item())


def test_kaiming_router_init_is_mola_and_hydralora_style():
    d_in = 64
    config = fp.MoELoRAConfig(target_modules=["m"], router_init="kaiming_uniform")
    w = fp.build_adapter(config, d_in, 16, "m").router.weight
    bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default: U(−1/√d_in, 1/√d_in)
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    normal = fp.build_adapter(fp.MoELoRAConfig(target_modules=["m"]), d_in, 16, "m")
    assert normal.router.weight.std().item() == pytest.approx(0.02, rel=0.2)
    with pytest.raises(ValueError, match="router_init must be one of"):
        fp.MoELoRAConfig(router_init="xavier")
