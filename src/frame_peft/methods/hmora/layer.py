"""HMoRA: hierarchical token + task routing over a mixture of low-rank experts.

For a routed module with adapter input x_t (T, d_in), clean input h_t, and the router of its
group (:mod:`.router`; q/k/v and gate/up of one block share the first member's router)::

    w_t  = (1 − σ(β)) p_t + σ(β) q_{b(t)}                 (T, E)  mix of token and task routing
    g_t  = softmax_{e ∈ top-k(w_t)}(w_t,e)  (0 elsewhere)  (T, E)  "softmax" gates (authors)
         | w_t,e / Σ_{top-k} w_t,e                                  "renormalise" gates
         | w_t                                                      dense (top_k None)
    Δy_t = s · B((A x_t)^{×E} ⊙ expand(g_t)),  s = α/√r     shared A (r, d_in), B (d_out, E·r)
    Δy_t = s · B((A x_t) ⊙ expand(g_t))                     A (E·r, d_in) without ``shared_a``

``expand`` repeats each gate r times, ``^{×E}`` tiles the r features E times. Modules named in
``lora_modules`` are a plain LoRA ``Δy = s · B A x`` (A (r, d_in), B (d_out, r)), no router.

The task representation q's input z comes from the model-level Transformer task encoder
(:mod:`.task_encoder`, one z per sequence, shared by all layers), from the per-router prefix mean
(``task_encoder="prefix_mean"``), or from a learned embedding of the task id (``num_tasks``).
Aux losses (:mod:`.losses`): GJS on each router's token distribution p (valid tokens) and on its
task distribution q (sequences), or the entropy loss of w; ``aux_reduction="sum"`` sums the
routers' terms as the authors do (a router shared by a group records once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..._checks import check_all
from ...core.adapter import LayerContext
from ...core.mixture import LowRankMixture, init_lora_factors, shared_a_mixture
from ...routing import Routing, top_k_gates
from .config import GATE_UP_NAMES, QKV_NAMES, HMoRAConfig, initial_beta
from .losses import entropy_loss, gjs_loss
from .router import HMoRARouter, routing_mode
from .task_encoder import TaskContext, TaskEncoder, mark_prepared

_EPS = 1e-12
_TASK_KEY = "hmora.task_context"


def _sequence_shape(lead: torch.Size) -> tuple[int, int]:
    """(B, S) of a layer input of leading shape ``lead``: the last axis is the sequence."""
    if len(lead) == 0:
        return 1, 1
    if len(lead) == 1:
        return int(lead[0]), 1  # (B, d) inputs: each row is its own one-token sequence
    return math.prod(lead[:-1]), int(lead[-1])


def softmax_top_k(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Authors' top-k: ``(indices (T, k), gates (T, E))``, gates = softmax of w over its k
    largest entries per row, the others masked to −∞ (so exactly 0)."""
    top, indices = w.topk(k, dim=-1)
    masked = torch.full_like(w, float("-inf")).scatter(-1, indices, top)
    return indices, torch.softmax(masked, dim=-1)


def _group_key(name: str, config: HMoRAConfig) -> str | None:
    parent, _, leaf = name.rpartition(".")
    if config.share_router_qkv and leaf in QKV_NAMES:
        return f"hmora.router:{parent}:qkv"
    if config.share_router_gate_up and leaf in GATE_UP_NAMES:
        return f"hmora.router:{parent}:gate_up"
    return None


def _input_key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), x._version, x.device, x.dtype)


class HMoRAAdapter(LowRankMixture):
    """One HMoRA module: routed experts, or a plain LoRA (see the module docstring)."""

    def __init__(
        self, in_features: int, out_features: int, config: HMoRAConfig, context: LayerContext
    ) -> None:
        self.plain = config.is_lora_module(context.name)
        super().__init__(in_features, out_features, config, context)
        self.scale = float(config.alpha) / math.sqrt(self.rank)
        self.shared_a = bool(config.shared_a) and not self.plain
        self.task_routing = bool(config.task_routing)
        state = self.state
        state.aux_reduction = config.aux_reduction
        self._task: TaskContext | None = None
        if (
            self.task_routing
            and config.task_encoder == "transformer"
            and _TASK_KEY not in state.shared
            and routing_mode(config, float(config.beta_max)) != "token"
        ):  # the first adapter built owns the model-level encoder
            dim = state.embedding_dim() or in_features
            self.task_encoder = TaskEncoder(
                dim, config.task_encoder_layers, config.task_encoder_heads,
                config.task_encoder_dropout,
            )  # fmt: skip
            _init_task_token(self.task_encoder, state, config.task_token_id)
            state.shared[_TASK_KEY] = TaskContext(self.task_encoder)
        self._follows: str | None = None
        self._last: dict[str, Any] = {}
        if self.plain:
            self.num_experts, self.top_k = 1, None
            self.has_router = False
        else:
            key = _group_key(self.name, config)
            owner = state.shared.get(key) if key else None
            if owner is not None:  # reuse the routing of the group's first module
                self._follows = key
                self.__dict__["_shared_router"] = owner
            else:
                beta = initial_beta(config, context.layer_index, context.num_layers)
                mode = routing_mode(config, beta)
                ctx = state.shared.get(_TASK_KEY)
                task_in = ctx.encoder.dim if ctx is not None else in_features
                if config.task_encoder == "prefix_mean":
                    task_in = config.task_dim
                self.router = HMoRARouter(in_features, task_in, config, mode, beta)
                if key:
                    state.shared[key] = self.router
            self._group = key
        self.fp32_parameters = tuple(n for n, _ in self.named_parameters() if n not in ("A", "B"))

    # Parameters --------------------------------------------------------------------------------
    def make_factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """A (r, d_in) shared or plain, else (E·r, d_in); B (d_out, E·r), or (d_out, r) plain."""
        e, r, d_in = self.num_experts, self.rank, self.in_features
        experts = 1 if (self.plain or self.config.shared_a) else e
        a = nn.Parameter(torch.empty(experts * r, d_in))
        b = nn.Parameter(torch.empty(self.out_features, (1 if self.plain else e) * r))
        init_lora_factors(a.data.view(experts, r, d_in), b.data)
        return a, b

    def make_router(self, in_features: int | None = None) -> None:
        return None  # built in __init__ (mode, group sharing)

    @property
    def routing_module(self) -> HMoRARouter | None:
        """This module's router, or the group router it shares (None for plain LoRA)."""
        return self.__dict__.get("_shared_router") or self._modules.get("router")

    @classmethod
    def prepare_forward(cls, adapters: Sequence[HMoRAAdapter], scratch: dict[str, Any]) -> None:
        mark_prepared(scratch)  # a gradient forward without checkpointing: z may be shared

    # Routing ---------------------------------------------------------------------------------
    def _task_ids(self, num_seqs: int, device: torch.device) -> torch.Tensor | None:
        ids = self.state.current.task_ids
        router = self.routing_module
        if ids is None or not hasattr(router, "task_embedding"):
            return None  # without num_tasks, ids are ignored (as other methods do): encoder
        num_tasks = router.task_embedding.num_embeddings
        ids = torch.as_tensor(ids, device=device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1:
            raise ValueError(
                f"{self.name}: task_ids must be a 1-D integer tensor (one id per sequence), "
                f"got dtype {ids.dtype} and shape {tuple(ids.shape)}"
            )
        if ids.shape[0] != num_seqs:
            raise ValueError(
                f"{self.name}: got {ids.shape[0]} task ids for a batch of {num_seqs} sequences"
            )
        bad = (ids < 0) | (ids >= num_tasks)
        check_all(
            ~bad,
            lambda: (
                f"{self.name}: task ids {ids[bad].tolist()} are out of range for "
                f"num_tasks={num_tasks} (valid ids: 0..{num_tasks - 1})"
            ),
        )
        return ids

    def _task_probs(
        self, router: HMoRARouter, route_x: torch.Tensor, lead: torch.Size, mask
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(q per token (T, E), q for the loss, per_sequence)``."""
        b, s = _sequence_shape(lead)
        ids = self._task_ids(b, route_x.device)
        if ids is not None:
            router.forget_prefix()  # the pool was not tracked: a later id-less decode step raises
            z = router.task_embedding.weight.float()[ids]
        elif router.prefix_mean:
            z = router.prefix_representation(route_x, b, s, lead, mask, self.state, self.name)
            q = router.task_probs(z)
            return q, q, False
        else:
            ctx = self.state.shared.get(_TASK_KEY)
            if ctx is None:
                raise RuntimeError(f"{self.name}: no HMoRA task encoder was built")
            z = ctx.representation(self.state, route_x, lead, self.name)
        q = router.task_probs(z)
        return q.repeat_interleave(s, dim=0), q, True

    def routing_weights(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``w`` (T, E) float32 for route_x (T, d_in) of a layer input with leading shape lead."""
        return self._route(route_x, lead, mask)[1]

    def _route(self, route_x, lead, mask) -> tuple[torch.Tensor | None, torch.Tensor]:
        router = self.routing_module
        logits = p = q_tok = None
        self._last = {}
        if router.token is not None:
            logits = router.token_logits(route_x)
            p = torch.softmax(logits, dim=-1)
            self._last["token"] = p
        if router.task is not None:
            q_tok, q_loss, per_seq = self._task_probs(router, route_x, lead, mask)
            self._last["task"] = (q_loss, per_seq)
        return logits, router.mix(p, q_tok)

    def routing(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> Routing:
        """Gates from the mix ``w`` (T, E): top-k softmax / renormalised, or dense."""
        rec = self.state.current
        group = self._follows or self._group
        if group and rec.from_model:
            shared = rec.scratch.get(group)
            if self._follows and shared is not None and shared[0] == _input_key(route_x):
                self._last = {"reused": True}
                return shared[1]
        logits, w = self._route(route_x, lead, mask)
        if self.top_k is None or self.top_k >= self.num_experts:
            indices, gates = top_k_gates(w, None)
        elif self.config.top_k_gates == "softmax":
            indices, gates = softmax_top_k(w, self.top_k)
        else:
            indices, gates = top_k_gates(w, self.top_k)
        if logits is None:
            logits = w.clamp_min(_EPS).log()
        routing = Routing(logits, w, indices, gates)
        if group and rec.from_model and not self._follows:
            rec.scratch[group] = (_input_key(route_x), routing)
        return routing

    def aux_losses(self, routing: Routing, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """GJS ``{"gjs_token", "gjs_task"}`` or ``{"entropy"}``, each times λ; nothing when off or
        when the routing was reused from the group's router (it recorded it already)."""
        last, cfg = self._last, self.config
        if self.aux_kind == "none" or self.aux_coef <= 0 or last.get("reused"):
            return {}
        c = self.aux_coef
        if self.aux_kind == "entropy":
            return {"entropy": c * entropy_loss(routing.probs, mask)[0]}
        out = {}
        if "token" in last:
            gb, gc = cfg.gamma_balance_token, cfg.gamma_certain_token
            out["gjs_token"] = c * gjs_loss(last["token"], mask, gb, gc)
        if "task" in last:
            q, per_seq = last["task"]
            gb, gc = cfg.gamma_balance_task, cfg.gamma_certain_task
            out["gjs_task"] = c * gjs_loss(q, None if per_seq else mask, gb, gc)
        return out

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the last forward's routing tensors (``_last``: graph-attached
        values the aux loss reads right after that forward), as the routing state drops its
        record; nothing later reads them before the next forward refills them."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        return {**state, "_last": {}}

    # Update ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xf = x.reshape(-1, self.in_features)
        if self.plain:
            out = self.scale * ((xf @ self.A.to(x.dtype).T) @ self.B.to(x.dtype).T)
        else:
            out = self.mix(xf, self.route(route_x).gates)
        return out.reshape(*lead, self.out_features)

    def mix(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``s · B((A x)(×E) ⊙ expand(g))`` for x (T, d_in), gates (T, E) -> (T, d_out)."""
        if not self.shared_a:
            return super().mix(x, gates)
        return self.scale * shared_a_mixture(x, self.A.to(x.dtype), self.B.to(x.dtype), gates)

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-expert views ``(A, B)``: (E, r, d_in) (shared A repeated) and (E, d_out, r)."""
        e, r = self.num_experts, self.rank
        a = self.A.view(-1, r, self.in_features).expand(e, r, self.in_features)
        b = self.B.view(self.out_features, e, r).permute(1, 0, 2)
        return a, b

    def active_parameters(self) -> int:
        if self.plain:
            return self.A.numel() + self.B.numel()
        k = self.num_experts if self.top_k is None else min(self.top_k, self.num_experts)
        a_rows = self.rank if self.shared_a else k * self.rank
        experts = a_rows * self.in_features + k * self.rank * self.out_features
        routing = sum(p.numel() for n, p in self.named_parameters() if n not in ("A", "B"))
        emb = getattr(self._modules.get("router"), "task_embedding", None)
        if emb is not None:  # a token uses one embedding row, not the table
            routing -= emb.weight.numel() - emb.weight.shape[1]
        return experts + routing


def _init_task_token(encoder: TaskEncoder, state, token_id: int | None) -> None:
    """The task token: the input embedding of ``token_id`` (authors: ``"?"``), else N(0, σ²) with
    σ the embedding matrix's standard deviation (1 without model embeddings)."""
    weight = getattr(state.input_embedding, "weight", None)
    if weight is not None and (weight.is_meta or encoder.task_token.is_meta):
        weight = None  # shapes only (parameter counting on the meta device)
    with torch.no_grad():
        if token_id is not None and weight is not None:
            if token_id >= weight.shape[0]:
                raise ValueError(
                    f"task_token_id {token_id} is out of range for an embedding of "
                    f"{weight.shape[0]} tokens"
                )
            encoder.task_token.copy_(weight[token_id].float())
        else:
            std = float(weight.float().std()) if weight is not None else 1.0
            encoder.task_token.normal_(0.0, std)
