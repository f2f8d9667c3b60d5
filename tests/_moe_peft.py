"""MoE-PEFT's Mixtral load-balance loss, written from its ``_mixtral_load_balancing_loss_func``
(TUDB-Labs/MoE-PEFT @ 40f8cb7), for the parity and loss-convention tests."""

from __future__ import annotations

import torch


def moe_peft_mixtral_loss(gate_logits, num_experts, top_k, attention_mask=None):
    """MoE-PEFT's formula for one layer's (B·S, E) logits (``num_hidden_layers`` = 1)."""
    routing_weights = torch.nn.functional.softmax(gate_logits, dim=-1)
    _, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = torch.nn.functional.one_hot(selected_experts, num_experts)
    if attention_mask is None:
        tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
        router_prob_per_expert = torch.mean(routing_weights, dim=0)
    else:
        batch_size, sequence_length = attention_mask.shape
        layers = routing_weights.shape[0] // (batch_size * sequence_length)
        expert_attention_mask = (
            attention_mask[None, :, :, None, None]
            .expand((layers, batch_size, sequence_length, top_k, num_experts))
            .reshape(-1, top_k, num_experts)
        )
        tokens_per_expert = torch.sum(
            expert_mask.float() * expert_attention_mask, dim=0
        ) / torch.sum(expert_attention_mask, dim=0)
        router_per_expert_attention_mask = (
            attention_mask[None, :, :, None]
            .expand((layers, batch_size, sequence_length, num_experts))
            .reshape(-1, num_experts)
        )
        router_prob_per_expert = torch.sum(
            routing_weights * router_per_expert_attention_mask, dim=0
        ) / torch.sum(router_per_expert_attention_mask, dim=0)
    overall_loss = torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))
    return overall_loss * num_experts
