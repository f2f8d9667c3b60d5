"""Parity of MixLoRA with a small reference written from the authors' code, identical weights.

The reference follows TUDB-Labs/MoE-PEFT (commit 40f8cb7) structure by structure:
``moe_peft/common/lora_linear.py`` ``Lora`` (fp32 LoRA added to the residual),
``moe_peft/models/modeling_llama.py`` ``LlamaMLP._mixlora_forward`` (common W_gate x and W_up x,
then per expert the tokens in its column of the one-hot expert mask),
``moe_peft/adapters/mixlora/model.py`` ``MixtralSparseMoe.forward`` (fp32 gate Linear, softmax,
top-k, renormalise, ``index_add_`` with the routing weights) and
``_mixtral_load_balancing_loss_func`` (``mean(one_hot)`` / masked means, times E and the
coefficient). Compared: the block output, the gradient of every parameter and of the input,
and the aux loss, on random inputs with padding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frame_peft as fp
from _models import tiny_llama, tiny_qwen2
from _moe_peft import moe_peft_mixtral_loss
from frame_peft.methods.mixlora import MixLoRAAdapter, MixLoRAConfig
from frame_peft.routing import RoutingState

PROJ = ("gate_proj", "up_proj", "down_proj")


class RefLora(nn.Module):
    """``Lora.forward(residual, hidden) = residual + s · B A dropout(hidden)`` in float32."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.scaling_ = alpha / r
        self.dropout_ = nn.Dropout(p=dropout)
        self.lora_a_ = nn.Linear(d_in, r, bias=False)
        self.lora_b_ = nn.Linear(r, d_out, bias=False)

    def forward(self, residual: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        lora = self.lora_b_(self.lora_a_(self.dropout_(hidden_states.to(torch.float32))))
        return residual + (lora * self.scaling_).to(residual.dtype)


def slice_tensor(data: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return data[None, index].reshape(-1, data.shape[-1]).to(dtype)


class RefMixLoRA(nn.Module):
    """``MixtralSparseMoe`` + ``LlamaMLP._mixlora_forward`` on a frozen LLaMA/Qwen2 MLP."""

    def __init__(self, mlp: nn.Module, num_experts: int, top_k: int, r: int, alpha: float):
        super().__init__()
        self.mlp = mlp  # w1_ = gate_proj, w3_ = up_proj, w2_ = down_proj
        self.experts_, self.topk_, self.dtype_ = num_experts, top_k, torch.float32
        d = mlp.gate_proj.in_features
        self.gate_ = nn.Linear(d, num_experts, bias=False, dtype=torch.float32)
        self.loras = nn.ModuleDict(
            {
                f"{p}_{e}": RefLora(*_features(getattr(mlp, p)), r, alpha, 0.05)
                for p in PROJ
                for e in range(num_experts)
            }
        )

    def _mixlora_forward(self, expert_mask, hidden_states, input_dtype):
        mlp = self.mlp
        common_w1 = mlp.gate_proj(hidden_states.to(input_dtype)).to(hidden_states.dtype)
        common_w3 = mlp.up_proj(hidden_states.to(input_dtype)).to(hidden_states.dtype)
        final_expert_states = []
        for expert_idx in range(expert_mask.shape[0]):
            _, top_x = torch.where(expert_mask[expert_idx])
            lora_data = slice_tensor(hidden_states, top_x, input_dtype)
            w1 = self.loras[f"gate_proj_{expert_idx}"](
                slice_tensor(common_w1, top_x, input_dtype), lora_data
            )
            w3 = self.loras[f"up_proj_{expert_idx}"](
                slice_tensor(common_w3, top_x, input_dtype), lora_data
            )
            act_result = mlp.act_fn(w1) * w3
            final_expert_states.append(
                self.loras[f"down_proj_{expert_idx}"](mlp.down_proj(act_result), act_result)
            )
        return final_expert_states

    def forward(self, hidden_states: torch.Tensor):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.view(-1, hidden_dim).to(self.dtype_)
        router_logits = self.gate_(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=self.dtype_)
        routing_weights, selected_experts = torch.topk(routing_weights, self.topk_, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        final_hidden_states = torch.zeros(
            (batch_size * sequence_length, hidden_dim), dtype=self.dtype_
        )
        expert_mask = F.one_hot(selected_experts, num_classes=self.experts_).permute(2, 1, 0)
        expert_states = self._mixlora_forward(expert_mask, hidden_states, input_dtype)
        for expert_idx in range(self.experts_):
            idx, top_x = torch.where(expert_mask[expert_idx])
            current = expert_states[expert_idx] * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current.to(self.dtype_))
        out = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return out.to(input_dtype), router_logits


def _features(linear: nn.Linear) -> tuple[int, int]:
    return linear.in_features, linear.out_features


def _pair(model_fn, num_experts, top_k, seed=0):
    mlp = model_fn().model.layers[0].mlp
    cfg = MixLoRAConfig(num_experts=num_experts, top_k=top_k, rank=4, dropout=0.05)
    ours = MixLoRAAdapter(mlp, PROJ, cfg.for_module("mlp"), fp.LayerContext("mlp", RoutingState()))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ours.router.weight.copy_(torch.randn(ours.router.weight.shape, generator=g))
        for p in PROJ:
            ours.B[p].copy_(torch.randn(ours.B[p].shape, generator=g) * 0.3)
    ref = RefMixLoRA(mlp, num_experts, top_k, r=4, alpha=cfg.for_module("mlp").alpha)
    with torch.no_grad():
        ref.gate_.weight.copy_(ours.router.weight)
        for p in PROJ:
            for e in range(num_experts):
                ref.loras[f"{p}_{e}"].lora_a_.weight.copy_(ours.A[p][e])
                ref.loras[f"{p}_{e}"].lora_b_.weight.copy_(ours.B[p][e])
    return mlp, ours.eval(), ref.eval()


@pytest.mark.parametrize("model_fn", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize(("num_experts", "top_k"), [(8, 2), (4, 1), (3, 3)])
def test_forward_gradients_and_aux_loss_match_the_reference(model_fn, num_experts, top_k):
    mlp, ours, ref = _pair(model_fn, num_experts, top_k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 32, generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 6:] = 0
    target = torch.randn(3, 7, 32, generator=g)

    ours.state.begin_forward(mask)
    x1 = x.clone().requires_grad_(True)
    y1 = ours(mlp, x1)
    aux1 = ours.state.aux_loss()
    x2 = x.clone().requires_grad_(True)
    y2, logits = ref(x2)
    aux2 = 0.001 * moe_peft_mixtral_loss(logits, num_experts, top_k, mask)

    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(aux1, aux2, atol=1e-9, rtol=1e-5)

    ((y1 * target).sum() + 10.0 * aux1).backward()
    ((y2 * target).sum() + 10.0 * aux2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.router.weight.grad, ref.gate_.weight.grad, atol=1e-6, rtol=1e-5)
    for p in PROJ:
        for e in range(num_experts):
            lora = ref.loras[f"{p}_{e}"]
            torch.testing.assert_close(
                ours.A[p].grad[e], lora.lora_a_.weight.grad, atol=1e-6, rtol=1e-5
            )
            torch.testing.assert_close(
                ours.B[p].grad[e], lora.lora_b_.weight.grad, atol=1e-6, rtol=1e-5
            )


def test_aux_loss_without_mask_matches_the_reference():
    mlp, ours, ref = _pair(tiny_llama, 8, 2, seed=3)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    ours(mlp, x)
    _, logits = ref(x)
    torch.testing.assert_close(
        ours.state.aux_loss(),
        0.001 * moe_peft_mixtral_loss(logits, 8, 2, None),
        atol=1e-9,
        rtol=1e-5,
    )
