"""FlyLoRA: a frozen sparse random projection A, a trainable B, and top-k rank selection.

Shapes: A (r, d_in) a frozen persistent buffer; B (d_out, r) trainable, zero at init; the
selection bias b (r,) a persistent buffer (no gradient). Each row of A has p non-zeros at random
positions, valued N(0, 1/r²), drawn from a generator seeded by the config ``seed`` and a stable
hash of the module name (modules differ; a rebuild gives the same A; A is saved in the adapter
file anyway); p follows ``nonzeros_rule`` (:func:`nonzeros_per_row`; default
``p = d_in // (r // k)``, the authors' training code). For tokens x (..., d_in)::

    y_A  = A x                                   (..., r)   no gradient to x if detach_input
    s    = y_A + b     (selection="signed")      (..., r)   or |y_A + b| (selection="abs")
    m    = top-k mask of s per token             (..., r), k ones
    Δy   = (α/r) · B (y_A ⊙ m)                   (..., d_out)

The selection is taken on the adapter input (after dropout), the same ``y_A`` the update uses.
Gradients reach B through the kept ranks only (the mask is piecewise constant); they reach x only
with ``detach_input=False`` (the authors compute ``lora_A(dropout(x))`` under ``torch.no_grad()``,
so by default the adapter path sends no gradient to x; A is frozen either way).

Load balance (not by gradient): after each forward in training mode (``self.training``, whatever
the grad mode: a training forward under ``torch.no_grad()`` moves b too; evaluation never does),
with per-rank selection counts ``c`` (r,) over the valid tokens (padding excluded when the model
call has an ``attention_mask``, through the shared routing state)::

    b ← b + u · sign(mean(c) − c)

so an over-selected rank's bias falls and an under-selected one's rises (with ``"signed"`` a
higher b makes a rank likelier to be kept; with ``"abs"`` only while ``y_A + b`` stays positive).
Activation checkpointing re-runs each checkpointed forward in training mode during backward, so
b moves twice per optimiser micro-step (once in the forward, once in the recompute, which also
selects with the already moved b); the authors trained with the same behaviour (Hugging Face
``gradient_checkpointing=True``, ``use_reentrant=False``, and no guard at all on the update).
Data-parallel replicas update their own b (the training loop broadcasts rank 0's).

A and b stay float32 when the model is cast to bf16/fp16 (a 1e-3 step is lost in bf16 once
|b| > 0.25); A is cast to the input dtype for the matmul. With k = r the mask is all ones and
FlyLoRA is a LoRA with this fixed A: ``ΔW = (α/r) B A``, mergeable; otherwise it is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.adapter import Adapter, LayerContext, NotMergeableError
from ...core.seeds import module_seed
from .config import FlyLoRAConfig


def nonzeros_per_row(in_features: int, rank: int, top_k: int, rule: str) -> int:
    """p, the non-zeros per row of A, clamped to [1, d_in].

    ``"integer_ratio"``: ``d_in // (r // k)`` (authors' PEFT fork, ``init_lora_weights="sparse"``);
    ``"floor"``: ``int(d_in · (k / r))`` (authors' ``flylora.py``); ``"round"``:
    ``round(d_in · k / r)`` (this library's earlier rule). All agree when k divides r and r/k
    divides d_in."""
    if rule == "integer_ratio":
        p = in_features // (rank // top_k)
    elif rule == "floor":
        p = int(in_features * (top_k / rank))
    elif rule == "round":
        p = round(in_features * top_k / rank)
    else:
        raise ValueError(f"unknown nonzeros_rule {rule!r}")
    return min(in_features, max(1, p))


def sparse_projection(
    rank: int, in_features: int, nonzeros: int, generator: torch.Generator
) -> torch.Tensor:
    """(rank, in_features) float32 with exactly ``nonzeros`` N(0, 1/rank²) entries per row."""
    positions = torch.rand(rank, in_features, generator=generator).argsort(dim=1)[:, :nonzeros]
    values = torch.randn(rank, nonzeros, generator=generator) / rank
    return torch.zeros(rank, in_features).scatter_(1, positions, values)


class FlyLoRAAdapter(Adapter):
    # The frozen A and the bias b stay float32: in bf16 a 1e-3 bias step is lost past 0.25.
    fp32_buffers = ("A", "rank_bias")

    def __init__(
        self, in_features: int, out_features: int, config: FlyLoRAConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        r, k = config.rank, config.top_k
        self.rank, self.top_k = r, k
        self.bias_update_rate = float(config.bias_update_rate)
        self.selection = config.selection
        self.detach_input = bool(config.detach_input)
        self.nonzeros = nonzeros_per_row(in_features, r, k, config.nonzeros_rule)
        g = torch.Generator().manual_seed(module_seed(config.seed, context.name))
        self.register_buffer("A", sparse_projection(r, in_features, self.nonzeros, g))
        self.register_buffer("rank_bias", torch.zeros(r))
        self.B = nn.Parameter(torch.zeros(out_features, r))

    def selection_mask(self, y: torch.Tensor) -> torch.Tensor:
        """(T, r) -> (T, r) 0/1 mask (y's dtype) of the k largest scores ``y + b`` (or
        ``|y + b|`` with ``selection="abs"``) per token."""
        score = y.detach().float() + self.rank_bias
        if self.selection == "abs":
            score = score.abs()
        idx = score.topk(self.top_k, dim=-1).indices
        return torch.zeros_like(y).scatter_(-1, idx, 1.0)

    @torch.no_grad()
    def update_bias(self, mask: torch.Tensor, lead_shape: torch.Size) -> None:
        """``b ← b + u · sign(mean(c) − c)``, c the per-rank counts of (T, r) ``mask``."""
        valid = self.state.token_mask(lead_shape)
        m = mask.float()
        if valid is not None:
            m = m * valid.to(device=m.device, dtype=m.dtype).reshape(-1, 1)
        counts = m.sum(dim=0)
        self.rank_bias.add_(self.bias_update_rate * torch.sign(counts.mean() - counts))

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) -> Δy (..., d_out); updates b after a forward in training mode (k < r)."""
        y = F.linear(x.detach() if self.detach_input else x, self.A.to(x.dtype))  # (..., r)
        if self.top_k < self.rank:
            lead = x.shape[:-1]
            mask = self.selection_mask(y.reshape(-1, self.rank))
            if self.training:  # not tied to grad mode: no-grad training forwards balance too
                self.update_bias(mask, lead)
            y = y * mask.reshape(y.shape)
        return self.scale * F.linear(y, self.B.to(x.dtype))

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The update as one expert (with every rank kept): (1, r, d_in), (1, d_out, r)."""
        return self.A.unsqueeze(0), self.B.unsqueeze(0)

    def delta_weight(self) -> torch.Tensor:
        if self.top_k != self.rank:
            raise NotMergeableError(
                f"{self.name}: FlyLoRA keeps {self.top_k} of {self.rank} ranks per token, so "
                "it has no single ΔW to merge; only top_k == rank merges"
            )
        return self.scale * (self.B @ self.A)

    def active_parameters(self) -> int:
        """``k · d_out``: the k columns of B one token uses.

        The frozen A is a buffer, not a parameter, and is not counted (it holds r·p fixed random
        non-zeros, of which a token's k kept rows touch k·p); there is no router.
        """
        return self.top_k * self.out_features
