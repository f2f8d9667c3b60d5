"""Routing statistics of a mixture model, accumulated over every forward inside a ``with`` block.

:class:`RoutingRecorder` registers an observer on the model's
:class:`~frame_peft.routing.RoutingState`; each mixture layer (MoE-LoRA, FRAME, HydraLoRA,
FourierMoE, HMoRA) hands it each forward's :class:`~frame_peft.routing.Routing`, token mask and
token task ids. Per module it keeps running sums only (O(E · num_tasks) numbers, no tokens), over
the valid tokens (mask 1; all tokens without a mask), n of them in total:

- ``load`` (E,): share of routed slots per expert, ``f`` of
  :func:`~frame_peft.routing.load_and_importance` (a token fills k slots; a dense router counts
  its most probable expert), pooled over forwards as ``Σ f·n / Σ n``. Balanced: 1/E each.
- ``importance`` (E,): mean router probability ``P``.
- ``entropy``: mean over tokens of ``H(p_t) / log E`` (1 = uniform router, 0 = one-hot).
- ``load_entropy``: ``H(load) / log E`` (1 = perfectly balanced load).
- ``top1_prob``: mean over tokens of ``max_e p_{t,e}``.
- per task id (``fp.routing_context(task_ids=...)``): its load vector and token count. Tokens
  without task ids count toward the totals only.

The observer runs under ``torch.no_grad()`` on detached tensors, so it never changes outputs or
gradients, and is removed when the block exits, also on an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.inject import require_injection
from ..routing import Routing, load_and_importance
from .modules import module_info


@dataclass
class _Tally:
    """Running sums of one module (tensors on the routing's device, float64)."""

    num_experts: int
    top_k: int
    tokens: torch.Tensor
    load: torch.Tensor
    importance: torch.Tensor
    entropy: torch.Tensor
    top1: torch.Tensor
    task_load: dict[int, torch.Tensor] = field(default_factory=dict)
    task_tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def empty(cls, num_experts: int, top_k: int, device: torch.device) -> _Tally:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(num_experts, top_k, z(), z(num_experts), z(num_experts), z(), z())


def _normalised_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(p) / log E`` along the last axis (0 for E = 1)."""
    num_experts = p.shape[-1]
    if num_experts < 2:
        return torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
    h = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return h / math.log(num_experts)


class RoutingRecorder:
    """Accumulate routing statistics of ``model`` over the forwards inside ``with recorder:``.

    Args:
        model: a model with frame-peft mixture adapters (``fp.inject``).
        task_names: names of task ids 0, 1, …; ids beyond the list (or all ids, without a list)
            are named ``"task<i>"``.

    ``statistics()`` may be called inside or after the block; a recorder can be entered again
    to keep accumulating.
    """

    def __init__(self, model: nn.Module, task_names: Sequence[str] | None = None) -> None:
        self.state = require_injection(model).state
        self.task_names = list(task_names) if task_names is not None else None
        self.tallies: dict[str, _Tally] = {}
        self._remove = None

    def __enter__(self) -> RoutingRecorder:
        if self._remove is not None:
            raise RuntimeError("this RoutingRecorder is already recording")
        self._remove = self.state.add_observer(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def _observe(
        self,
        module: str,
        routing: Routing,
        mask: torch.Tensor | None,
        task_ids: torch.Tensor | None,
    ) -> None:
        with torch.no_grad():
            probs = routing.probs.detach().double()
            routing = Routing(routing.logits.detach(), probs, routing.indices.detach(), probs)
            num_experts = probs.shape[-1]
            tally = self.tallies.get(module)
            if tally is None:
                tally = _Tally.empty(num_experts, routing.indices.shape[-1], probs.device)
                self.tallies[module] = tally
            m = (torch.ones(probs.shape[0], device=probs.device) if mask is None
                 else mask.to(device=probs.device).reshape(-1)).double()  # fmt: skip
            n = m.sum()
            f, p = load_and_importance(routing, m)  # means over max(n, 1) tokens
            # Out-of-place sums: a tally first made under torch.inference_mode() stays usable.
            tally.tokens = tally.tokens + n
            tally.load = tally.load + f.double() * n
            tally.importance = tally.importance + p.double() * n
            tally.entropy = tally.entropy + (_normalised_entropy(probs) * m).sum()
            tally.top1 = tally.top1 + (probs.max(dim=-1).values * m).sum()
            if task_ids is None:
                return
            ids = task_ids.to(probs.device).reshape(-1)
            for t in torch.unique(ids[m > 0]).tolist():
                m_t = m * (ids == t)
                n_t = m_t.sum()
                f_t, _ = load_and_importance(routing, m_t)
                zero = torch.zeros_like(tally.load)
                tally.task_load[t] = tally.task_load.get(t, zero) + f_t.double() * n_t
                tally.task_tokens[t] = tally.task_tokens.get(t, zero[0]) + n_t

    def task_name(self, task_id: int) -> str:
        names = self.task_names
        return (
            names[task_id] if names is not None and 0 <= task_id < len(names) else f"task{task_id}"
        )

    def statistics(
        self, dead_share: float = 0.1, dominant_share: float | None = None
    ) -> dict[str, Any]:
        """The accumulated statistics as plain Python numbers.

        Returns::

            {"tasks": [name per task],
             "modules": {name: {"layer", "kind", "num_experts", "top_k", "num_tokens",
                                "load": [E], "importance": [E], "entropy", "load_entropy",
                                "top1_prob", "per_task_load": {task: [E]},
                                "per_task_tokens": {task: n}}},
             "by_layer_task": {str(layer): {"tasks": [...], "load": [[E] per task],
                                            "modules": [names averaged]}},
             "warnings": [str]}

        ``tasks`` lists the named tasks (``task_names``) and every other task id seen, by id;
        a task a module never saw has load zeros and 0 tokens. ``top_k`` is the k of the
        router (E for a dense one, whose ``load`` counts each token's most probable expert).
        ``by_layer_task`` is the unweighted mean over a layer's modules (those with the layer's
        most common E; modules without a layer index are left out), a task × expert heatmap
        over the tasks that layer saw (a training-only task with no held-out tokens has no row).

        ``warnings`` has one line per module with a collapsed router: a dead expert (``load <
        dead_share / E``) or a dominant one (``load > dominant_share``; None means ``0.9 / k``
        with k the slots per token, i.e. an expert chosen by 90% of the tokens).
        """
        if not 0.0 <= dead_share < 1.0:
            raise ValueError(f"dead_share must be in [0, 1), got {dead_share!r}")
        if dominant_share is not None and not 0.0 < dominant_share <= 1.0:
            raise ValueError(f"dominant_share must be None or in (0, 1], got {dominant_share!r}")
        ids = sorted({t for tally in self.tallies.values() for t in tally.task_load})
        if self.task_names is not None:
            ids = sorted(set(ids) | set(range(len(self.task_names))))
        tasks = [self.task_name(t) for t in ids]
        modules: dict[str, dict[str, Any]] = {}
        warnings = []
        for name, tally in self.tallies.items():
            info = module_info(name)
            n = float(tally.tokens)
            denom = max(n, 1.0)
            load = (tally.load / denom).cpu()
            zeros = [0.0] * tally.num_experts
            modules[name] = {
                "layer": info.layer,
                "kind": info.kind,
                "num_experts": tally.num_experts,
                "top_k": tally.top_k,
                "num_tokens": round(n),
                "load": load.tolist(),
                "importance": (tally.importance / denom).cpu().tolist(),
                "entropy": float(tally.entropy) / denom,
                "load_entropy": float(_normalised_entropy(load)) if n > 0 else 0.0,
                "top1_prob": float(tally.top1) / denom,
                "per_task_load": {
                    self.task_name(t): (
                        (tally.task_load[t] / max(float(tally.task_tokens[t]), 1.0)).cpu().tolist()
                        if t in tally.task_load
                        else zeros
                    )
                    for t in ids
                },
                "per_task_tokens": {
                    self.task_name(t): round(float(tally.task_tokens.get(t, 0.0))) for t in ids
                },
            }
            if n > 0:
                line = _collapse_warning(name, modules[name]["load"], tally, dead_share,
                                         dominant_share)  # fmt: skip
                if line:
                    warnings.append(line)
        return {
            "tasks": tasks,
            "modules": modules,
            "by_layer_task": _by_layer_task(modules, tasks),
            "warnings": warnings,
        }


def _slots_per_token(tally: _Tally) -> int:
    """k of the load vector: a dense router's load counts one (the argmax) expert per token."""
    dense = tally.top_k >= tally.num_experts and tally.num_experts > 1
    return 1 if dense else tally.top_k


def _collapse_warning(
    name: str, load: list[float], tally: _Tally, dead_share: float, dominant_share: float | None
) -> str | None:
    num_experts = len(load)
    dead_below = dead_share / num_experts
    dominant_above = 0.9 / _slots_per_token(tally) if dominant_share is None else dominant_share
    dead = [e for e, v in enumerate(load) if v < dead_below]
    dominant = [e for e, v in enumerate(load) if v > dominant_above]
    parts = []
    if dead:
        parts.append(f"dead expert(s) {dead} (load < {dead_below:.3g})")
    if dominant:
        shares = ", ".join(f"{load[e]:.3g}" for e in dominant)
        parts.append(f"dominant expert(s) {dominant} (load {shares} > {dominant_above:.3g})")
    if not parts:
        return None
    return f"{name}: routing collapse: " + "; ".join(parts)


def _by_layer_task(modules: dict[str, dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    by_layer: dict[int, list[str]] = {}
    for name, m in modules.items():
        if m["layer"] is not None:
            by_layer.setdefault(m["layer"], []).append(name)
    out = {}
    for layer in sorted(by_layer):
        names = sorted(by_layer[layer])
        sizes = [modules[n]["num_experts"] for n in names]
        common = max(set(sizes), key=lambda e: (sizes.count(e), e))
        names = [n for n in names if modules[n]["num_experts"] == common]
        seen = [t for t in tasks if any(modules[n]["per_task_tokens"][t] for n in names)]
        load = [
            [sum(modules[n]["per_task_load"][task][e] for n in names) / len(names)
             for e in range(common)]
            for task in seen
        ]  # fmt: skip
        out[str(layer)] = {"tasks": seen, "load": load, "modules": names}
    return out
