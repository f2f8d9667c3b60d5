"""FlyLoRA against small references written from the authors' code (GitHub gfyddha/FlyLoRA,
commit 91d9e36), given identical weights: forward, gradients of every parameter, the selection
bias after several optimiser steps, and the number of non-zeros per row of A.

- ``AuthorsTrainingLinear`` follows ``peft/src/peft/tuners/lora/layer.py`` (``Linear.forward``,
  the ``# modified`` branch) and ``reset_lora_parameters`` (``init_lora_weights="sparse"``): the
  code behind the paper's numbers (``scripts/run_mmlu.sh``).
- ``AuthorsMinimalLinear`` follows ``flylora.py`` (the README's "minimal implementation"): top-k
  of ``|y + d|``; its bias rule (counts against the expected frequency k/r, applied by a call to
  ``update_bias`` the README leaves to the user) is not part of this library, so only its forward
  and gradients are compared, at a fixed bias.

FlyLoRA has no auxiliary loss in either (the bias moves by a sign rule, not by gradient); the
adapter records none.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frame_peft as fp
from frame_peft.core.adapter import build_adapter
from frame_peft.routing import RoutingState

D_IN, D_OUT, R, K, U = 24, 10, 8, 2, 1e-3


class AuthorsTrainingLinear(nn.Module):
    """The adapter path of the authors' PEFT fork: returns only the LoRA term (base excluded)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, top_k: int, bias_u: float, scaling):
        super().__init__()
        r = a.shape[0]
        self.lora_A = nn.Linear(a.shape[1], r, bias=False)
        self.lora_B = nn.Linear(r, b.shape[0], bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.copy_(b)
        self.lora_A.weight.requires_grad_(False)  # finetune.py freezes lora_A and the bias
        self.lora_topk_bias = nn.Parameter(torch.zeros(r), requires_grad=False)
        self.r, self.top_k, self.bias_u, self.scaling = r, top_k, bias_u, scaling

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            activations = self.lora_A(x)
        _, selected = torch.topk(activations + self.lora_topk_bias.unsqueeze(0), self.top_k, -1)
        mask = torch.zeros_like(activations)
        mask.scatter_(-1, selected, 1.0)
        result = self.lora_B(activations * mask) * self.scaling
        # The authors count every token; ``valid`` (our padding exclusion) weights the counts.
        weights = None
        if valid is not None:
            weights = valid.reshape(*valid.shape, 1).expand(selected.shape).flatten().float()
        ci = torch.bincount(selected.flatten(), weights=weights, minlength=self.r).float()
        self.lora_topk_bias.data = self.lora_topk_bias.data + self.bias_u * (ci.mean() - ci).sign()
        return result


def authors_sparse_nonzeros(n: int, r: int, k: int) -> int:
    """``p = weight.size(1) // (r // top_k)`` of the fork's ``"sparse"`` initialisation."""
    return n // (r // k)


class AuthorsMinimalLinear(nn.Module):
    """``flylora.py``'s ``FlyLoRALinear.forward`` (LoRA term only), with given A, B, d."""

    def __init__(self, a, b, d, k, alpha):
        super().__init__()
        self.register_buffer("A", a.clone())
        self.B = nn.Parameter(b.clone())
        self.d = nn.Parameter(d.clone())
        self.k, self.r, self.alpha = k, a.shape[0], alpha

    def forward(self, x):
        y = F.linear(x, self.A)
        _, indices = torch.topk((y + self.d).abs(), self.k, dim=-1)
        mask = torch.zeros_like(y).scatter_(-1, indices, 1.0)
        return F.linear(y * mask, self.B) * (self.alpha / self.r)


def ours(**kw) -> fp.FlyLoRAConfig:
    return fp.FlyLoRAConfig(rank=R, top_k=K, dropout=0.0, bias_update_rate=U, **kw)


def pair(seed: int = 0, **kw):
    adapter = build_adapter(ours(**kw), D_IN, D_OUT, "layers.0.q_proj", RoutingState())
    with torch.no_grad():
        adapter.B.copy_(torch.randn(D_OUT, R, generator=torch.Generator().manual_seed(seed)))
    ref = AuthorsTrainingLinear(adapter.A, adapter.B.detach(), K, U, adapter.scale)
    return adapter, ref


@pytest.mark.parametrize(("n", "r", "k"), [(24, 8, 2), (10, 4, 3), (30, 32, 8), (7, 8, 8)])
def test_nonzeros_per_row_match_the_training_code(n, r, k):
    a = build_adapter(fp.FlyLoRAConfig(rank=r, top_k=k), n, 5, "m")
    p = max(1, authors_sparse_nonzeros(n, r, k))
    assert a.nonzeros == p and ((a.A != 0).sum(dim=1) == p).all()


def test_training_code_parity_over_steps_with_padding():
    """Forward, gradients (B; none to x or A), and b after 4 SGD steps, padding excluded."""
    adapter, ref = pair()
    adapter.train()
    opt_a = torch.optim.SGD([adapter.B], lr=0.5)
    opt_r = torch.optim.SGD([ref.lora_B.weight], lr=0.5)
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    for step in range(4):
        x = torch.randn(3, 5, D_IN, generator=g)
        target = torch.randn(3, 5, D_OUT, generator=g)
        valid = mask if step % 2 else None  # with and without padding
        adapter.state.begin_forward(valid)
        xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_a, out_r = adapter(xa, xa), ref(xr, valid)
        torch.testing.assert_close(out_a, out_r, rtol=1e-6, atol=1e-6)
        assert out_a.abs().max() > 0
        for opt, out, xi in ((opt_a, out_a, xa), (opt_r, out_r, xr)):
            opt.zero_grad()
            (out - target).square().sum().backward()
            assert xi.grad is None  # A x computed without gradient: none reaches x
        torch.testing.assert_close(adapter.B.grad, ref.lora_B.weight.grad, rtol=1e-6, atol=1e-6)
        assert not adapter.A.requires_grad and adapter.A.grad is None  # A is frozen
        opt_a.step()
        opt_r.step()
        torch.testing.assert_close(adapter.rank_bias, ref.lora_topk_bias.data, rtol=0, atol=0)
        assert adapter.state.aux_loss() is None  # FlyLoRA records no auxiliary loss
    assert adapter.rank_bias.abs().sum() > 0


def test_minimal_flylora_py_parity_with_abs_selection():
    """``selection="abs", nonzeros_rule="floor", detach_input=False`` is ``flylora.py``'s
    forward: same output and gradients of B and of x, at the same bias."""
    adapter = build_adapter(
        ours(selection="abs", nonzeros_rule="floor", detach_input=False), D_IN, D_OUT, "m"
    )
    assert adapter.nonzeros == max(1, int(D_IN * (K / R)))
    g = torch.Generator().manual_seed(3)
    d = torch.randn(R, generator=g) * 0.05
    with torch.no_grad():
        adapter.B.copy_(torch.randn(D_OUT, R, generator=g))
        adapter.rank_bias.copy_(d)
    ref = AuthorsMinimalLinear(adapter.A, adapter.B.detach(), d, K, adapter.scale * R)
    adapter.eval()  # a fixed bias: the minimal file's bias rule is not ours
    x = torch.randn(2, 6, D_IN, generator=g)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_r = adapter(xa, xa), ref(xr)
    torch.testing.assert_close(out_a, out_r, rtol=1e-6, atol=1e-6)
    w = torch.randn(out_a.shape, generator=g)
    (out_a * w).sum().backward()
    (out_r * w).sum().backward()
    torch.testing.assert_close(adapter.B.grad, ref.B.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xa.grad, xr.grad, rtol=1e-6, atol=1e-6)
    assert xa.grad.abs().sum() > 0


def test_signed_default_differs_from_abs_on_the_same_weights():
    """The two selections are not the same function (so the parity above is not vacuous)."""
    signed, _ = pair()
    absolute = build_adapter(ours(selection="abs"), D_IN, D_OUT, "layers.0.q_proj")
    with torch.no_grad():
        absolute.B.copy_(signed.B)
    signed.eval()
    absolute.eval()
    x = torch.randn(4, 7, D_IN, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(signed(x, x), absolute(x, x))
