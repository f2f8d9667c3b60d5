"""Auxiliary-loss conventions: MoE-PEFT's Mixtral-style load-balance loss is exactly k times our
Switch loss on the same routing (see :mod:`frame_peft.routing.losses`).

The reference follows ``_mixtral_load_balancing_loss_func`` of TUDB-Labs/MoE-PEFT (commit
40f8cb7, ``moe_peft/adapters/mixlora/model.py``): softmax, top-k, one-hot (T, k, E), token shares
averaged over tokens per choice position, the attention-mask branch for padding, ``× E``.
"""

from __future__ import annotations

import pytest
import torch

from _moe_peft import moe_peft_mixtral_loss
from frame_peft.routing import select_experts, switch_loss


@pytest.mark.parametrize("num_experts", [4, 8])
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_mixtral_loss_is_k_times_ours(num_experts, top_k, padded):
    g = torch.Generator().manual_seed(num_experts * 10 + top_k)
    b, s = 3, 11
    logits = torch.randn(b * s, num_experts, generator=g, dtype=torch.float64) * 2.0
    mask = None
    if padded:
        mask = torch.ones(b, s, dtype=torch.float64)
        mask[0, 7:] = 0
        mask[2, 3:] = 0
    ours = switch_loss(select_experts(logits, top_k), None if mask is None else mask.reshape(-1))
    theirs = moe_peft_mixtral_loss(logits, num_experts, top_k, mask)
    torch.testing.assert_close(theirs, top_k * ours.double(), rtol=1e-6, atol=0)
    if top_k > 1:
        assert not torch.isclose(theirs, ours.double(), rtol=1e-3)  # the factor is real


def test_gradients_scale_by_k_too():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 8, generator=g, dtype=torch.float64)
    la, lb = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    switch_loss(select_experts(la, 2), None).backward()
    moe_peft_mixtral_loss(lb, 8, 2).backward()
    torch.testing.assert_close(lb.grad, 2 * la.grad.double(), rtol=1e-5, atol=1e-7)


def test_balance_values_one_and_k():
    """Perfect balance: ours 1, Mixtral's k (uniform probabilities, each expert chosen equally)."""
    e, k = 4, 2
    # 4 tokens, every expert chosen twice: pairs (0,1), (2,3), (0,1), (2,3); near-uniform probs
    logits = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]] * 2, dtype=torch.float64) * 1e-6
    ours = switch_loss(select_experts(logits, k), None)
    theirs = moe_peft_mixtral_loss(logits, e, k)
    torch.testing.assert_close(ours.double(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(theirs, torch.tensor(float(k), dtype=torch.float64))
