"""HMoRA against a plain-PyTorch reference written from the authors' code.

Reference semantics: github.com/LiaoMengqi/HMoRA at 5215d21, ``hmora/model.py`` (``TaskEncoder``
with ``PositionalEncoding``, ``TaskRouter``, ``TokenRouter`` with its top-k and
``divergence_loss``, ``MoRa`` with ``use_hydra_lora``, ``LoRA``, ``RouterManager``'s λ-weighted
sums) and ``train.py`` (the prompt alone, left-padded, embedded and encoded; the task-router loss
λ·Σ GJS). Three layers of q/k/v sharing one router each (token-only, mixed, task-only at
σ(β) = 0.12, 0.5, 0.88) plus a plain-LoRA o_proj, identical weights, right-padded batch with
prompts of different lengths: outputs, aux loss and every parameter's gradient must agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frame_peft.core.adapter import build_adapter
from frame_peft.methods.hmora import HMoRAAdapter, HMoRAConfig
from frame_peft.routing import RoutingState

D, E, K, R, ALPHA, V = 32, 4, 2, 3, 8.0, 50
B, S = 3, 9
LAYERS = 3


# --- the reference, following hmora/model.py ----------------------------------------------
class RefPositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 5000) -> None:
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x):
        return x + self.pe[:, -x.size(1) :, :]


class RefTaskEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_encoder = RefPositionalEncoding(D)
        layer = nn.TransformerEncoderLayer(D, nhead=16, dim_feedforward=2 * D, dropout=0.0)
        self.transformer_encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.task_embedding = nn.Embedding(1, D)

    def forward(self, src, src_key_padding_mask):
        task = self.task_embedding(torch.tensor([0])).expand(src.shape[0], -1, -1)
        src = torch.cat([self.pos_encoder(src), task], dim=1).transpose(0, 1)
        pad = torch.cat([src_key_padding_mask, torch.ones(src.shape[1], 1).long()], dim=1)
        return self.transformer_encoder(src, src_key_padding_mask=pad == 0)[-1]


def ref_gjs(weights, mask, gamma_balance, gamma_certain):
    """divergence_loss of TokenRouter (mask given) / TaskRouter (mask None), as written there."""
    if mask is None:
        max_entropy = torch.log(torch.tensor(float(E)))
        hm_max, hp_min = gamma_balance * max_entropy, gamma_certain * max_entropy
        m = weights.mean(0)
        hm = torch.clamp(-(m * torch.log(m + 1e-9)).sum(-1), max=hm_max)
        hp = torch.clamp(-(weights * torch.log(weights + 1e-9)).sum(-1), min=hp_min).mean(-1)
        return torch.relu(hm_max - hp_min - (hm - hp)) / max_entropy
    mask = mask.float().unsqueeze(-1)
    w = weights * mask
    max_entropy = torch.log(torch.tensor(float(E)))
    hm_max, hp_min = gamma_balance * max_entropy, gamma_certain * max_entropy
    n = mask.sum()
    w = w * mask
    m = w.view(-1, E).sum(0) / n
    hm = torch.clamp(-(m * torch.log(m + 1e-9)).sum(-1), max=hm_max)
    hp = torch.clamp(-(w * torch.log(w + 1e-9)).sum(-1), min=hp_min) * mask.squeeze(-1)
    hp = hp.sum() / n
    return torch.relu(hm_max - hp_min - (hm - hp)) / max_entropy


class RefTokenRouter(nn.Module):
    def __init__(self, alpha: float, low: float = 0.2, up: float = 0.8) -> None:
        super().__init__()
        share = torch.sigmoid(torch.tensor(alpha))
        self.task_only = share > up
        self.token_only = share < low
        self.alpha = (
            None if (self.task_only or self.token_only) else nn.Parameter(torch.tensor(alpha))
        )
        self.task_router = None if self.token_only else nn.Linear(D, E)
        self.mlp = None if self.task_only else nn.Linear(D, E)

    def forward(self, h, task_presentation):
        self.task_weight = None
        if self.task_router is not None:
            self.task_weight = F.softmax(self.task_router(task_presentation), -1)
        if self.task_only:
            w = self.task_weight.unsqueeze(-2).expand((*h.shape[:-1], E))
            self.token_weight = None
        else:
            w = self.token_weight = F.softmax(self.mlp(h), -1)
            if self.task_router is not None:
                a = torch.sigmoid(self.alpha)
                w = (1 - a) * w + a * self.task_weight.unsqueeze(-2)
        top_v, top_i = torch.topk(w, K, dim=-1)
        gate = torch.full_like(w, torch.finfo(w.dtype).min).scatter(-1, top_i, top_v)
        return torch.softmax(gate, -1)


def ref_mora(x, gate, a, b):  # MoRa with use_hydra_lora: a (r, d_in), b (d_out, E·r)
    h = F.linear(x, a)
    h = h.unsqueeze(-2).expand((*h.shape[:-1], E, R))
    h = (h * gate.unsqueeze(-1)).reshape((*h.shape[:-2], -1))
    return F.linear(h, b) * (ALPHA / math.sqrt(R))


# --- the test ---------------------------------------------------------------------------------
def _setup(seed: int = 0):
    torch.manual_seed(seed)
    embedding = nn.Embedding(V, D)
    state = RoutingState(embedding)
    cfg = HMoRAConfig(
        target_modules="all-linear", num_experts=E, top_k=K, rank=R, alpha=ALPHA, dropout=0.0,
        router_dropout=0.0, task_encoder_dropout=0.0,
    )  # fmt: skip
    ours = {}
    for layer in range(LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}"
            if proj == "o_proj" and layer != 1:
                continue
            ours[name] = build_adapter(cfg, D, D, name, state, layer, LAYERS)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move everything away from its initialisation (B is zero there)
        for ad in ours.values():
            for p in ad.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return state, embedding, ours


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 6:] = 0  # right padding
    mask[2, 8:] = 0
    prompt_len = torch.tensor([4, 6, 2])
    labels = ids.clone()
    labels[torch.arange(S) < prompt_len[:, None]] = -100
    labels[mask == 0] = -100
    xs = [torch.randn(B, S, D, generator=g) for _ in range(LAYERS)]
    return ids, mask, labels, prompt_len, xs


def _reference(state, embedding, ours, ids, mask, prompt_len, xs):
    enc = RefTaskEncoder()
    ours_enc = ours["model.layers.0.self_attn.q_proj"].task_encoder
    enc.transformer_encoder.load_state_dict(ours_enc.encoder.state_dict())
    with torch.no_grad():
        enc.task_embedding.weight.copy_(ours_enc.task_token)
    # train.py: the prompt alone, left-padded (setup.py sets padding_side='left'), embedded
    p = int(prompt_len.max())
    src_ids = torch.zeros(B, p, dtype=torch.long)
    src_mask = torch.zeros(B, p, dtype=torch.long)
    for i in range(B):
        n = int(prompt_len[i])
        src_ids[i, p - n :] = ids[i, :n]
        src_mask[i, p - n :] = 1
    task = enc(embedding(src_ids), src_mask)
    params, outs, token_losses, task_losses = {}, {}, [], []
    for layer in range(LAYERS):
        owner = ours[f"model.layers.{layer}.self_attn.q_proj"]
        beta = -2.0 + 4.0 * layer / (LAYERS - 1)
        router = RefTokenRouter(beta)
        with torch.no_grad():
            if router.mlp is not None:
                router.mlp.load_state_dict(owner.router.token.state_dict())
            if router.task_router is not None:
                router.task_router.load_state_dict(owner.router.task.state_dict())
            if router.alpha is not None:
                router.alpha.copy_(owner.router.beta)
        gate = router(xs[layer], task)
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}"
            a = ours[name].A.detach().clone().requires_grad_(True)
            b = ours[name].B.detach().clone().requires_grad_(True)
            params[f"{name}.A"], params[f"{name}.B"] = a, b
            outs[name] = ref_mora(xs[layer], gate, a, b)
        if router.token_weight is not None:
            token_losses.append(ref_gjs(router.token_weight, mask, 0.98, 0.5))
        else:
            token_losses.append(torch.zeros(()))
        if router.task_router is not None:
            task_losses.append(ref_gjs(router.task_weight, None, 0.98, 0.5))
        for key, value in router.named_parameters():
            params[f"router{layer}.{key}"] = value
    name = "model.layers.1.self_attn.o_proj"  # LoRA: (x A^T) B^T · α/√r
    a = ours[name].A.detach().clone().requires_grad_(True)
    b = ours[name].B.detach().clone().requires_grad_(True)
    params[f"{name}.A"], params[f"{name}.B"] = a, b
    outs[name] = F.linear(F.linear(xs[1], a), b) * (ALPHA / math.sqrt(R))
    aux = 0.005 * torch.stack(token_losses).sum() + 0.005 * torch.stack(task_losses).sum()
    for key, value in enc.named_parameters():
        params[f"encoder.{key}"] = value
    return outs, aux, params


def _ours(state, ours, ids, mask, labels, xs):
    state.begin_forward(mask, {"input_ids": ids, "inputs_embeds": None, "labels": labels})
    HMoRAAdapter.prepare_forward(list(ours.values()), state.current.scratch)
    outs = {}
    for name, ad in ours.items():
        layer = int(name.split(".")[2])
        outs[name] = ad(xs[layer], xs[layer])
    return outs, state.aux_loss()


def test_forward_aux_and_gradients_match_the_authors_semantics():
    state, embedding, ours = _setup()
    ids, mask, labels, prompt_len, xs = _batch()
    ref_outs, ref_aux, ref_params = _reference(state, embedding, ours, ids, mask, prompt_len, xs)
    outs, aux = _ours(state, ours, ids, mask, labels, xs)
    assert set(state.shared) >= {"hmora.task_context"}
    assert {k for k in outs} == {k for k in ref_outs}
    for name in outs:
        torch.testing.assert_close(outs[name], ref_outs[name], rtol=1e-5, atol=1e-5)
    stats = state.aux_stats()
    assert stats["gjs_token"] > 0 and stats["gjs_task"] > 0  # both losses active here
    torch.testing.assert_close(aux, ref_aux, rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(9)
    weights = {n: torch.randn(o.shape, generator=g) for n, o in outs.items()}
    (sum((outs[n] * weights[n]).sum() for n in outs) + 10 * aux).backward()
    (sum((ref_outs[n] * weights[n]).sum() for n in ref_outs) + 10 * ref_aux).backward()
    checked = 0
    for name, ad in ours.items():
        layer = name.split(".")[2]
        for key, p in ad.named_parameters():
            if key.startswith("task_encoder.encoder."):
                ref = ref_params[
                    "encoder.transformer_encoder." + key[len("task_encoder.encoder.") :]
                ]
            elif key == "task_encoder.task_token":
                ref = ref_params["encoder.task_embedding.weight"]
            elif key.startswith("router."):
                sub = {"router.token": "mlp", "router.task": "task_router", "router.beta": "alpha"}
                head, _, leaf = key.rpartition(".")
                mapped = sub[key] if key in sub else f"{sub[head]}.{leaf}"
                ref = ref_params[f"router{layer}.{mapped}"]
            else:
                ref = ref_params[f"{name}.{key}"]
            assert p.grad is not None and ref.grad is not None, (name, key)
            assert p.grad.abs().max() > 0, (name, key)
            scale = ref.grad.abs().max()
            err = (p.grad - ref.grad).abs().max()
            assert err <= 1e-4 * scale + 1e-7, (name, key, float(err), float(scale))
            checked += 1
    assert checked == sum(len(list(ad.parameters())) for ad in ours.values())


def test_padding_and_answer_tokens_never_reach_the_task_representation():
    """Tokens after the prompt (the answer) and padded positions leave z, and so the outputs of
    the prompt positions' routing, unchanged; a prompt token changes them."""
    state, _, ours = _setup()
    ids, mask, labels, _, xs = _batch()
    ad = ours["model.layers.2.self_attn.q_proj"]  # task-only: its gates are z's alone
    with torch.no_grad():
        base = _ours(state, ours, ids, mask, labels, xs)[0]
        changed = ids.clone()
        changed[1, 7] = (changed[1, 7] + 1) % V  # an answer token of row 1
        changed[0, 7] = (changed[0, 7] + 3) % V  # a padded position of row 0
        same = _ours(state, ours, changed, mask, labels, xs)[0]
        changed[2, 0] = (changed[2, 0] + 1) % V  # a prompt token of row 2
        moved = _ours(state, ours, changed, mask, labels, xs)[0]
    name = ad.name
    torch.testing.assert_close(same[name], base[name], rtol=0, atol=0)
    assert torch.equal(moved[name][:2], base[name][:2])
    assert (moved[name][2] - base[name][2]).abs().max() > 1e-5


@pytest.mark.parametrize("gates", ["softmax", "renormalise"])
def test_top_k_gate_modes(gates):
    """softmax: softmax over the kept mixed weights w (authors); renormalise: w_k / Σ w_k."""
    from frame_peft.methods.hmora.layer import softmax_top_k

    w = torch.softmax(torch.randn(6, E), -1)
    idx, g = softmax_top_k(w, K)
    kept = w.gather(-1, idx)
    torch.testing.assert_close(g.gather(-1, idx), torch.softmax(kept, -1))
    assert torch.equal((g > 0).sum(-1), torch.full((6,), K))
    cfg = HMoRAConfig(target_modules=["x"], num_experts=E, top_k=K, top_k_gates=gates)
    ad = build_adapter(cfg, D, D, "x", RoutingState(), 1, 3)
    ad.eval()
    r = ad.route(torch.randn(2, 4, D))
    kept = r.probs.gather(-1, r.indices)
    want = torch.softmax(kept, -1) if gates == "softmax" else kept / kept.sum(-1, keepdim=True)
    torch.testing.assert_close(r.gates.gather(-1, r.indices), want)
