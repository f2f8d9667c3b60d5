r"""Routing by band: which frequency bands each expert covers, and which tokens' bands it gets.

Two views of a routed model (any router; the question is FourierMoE's, whose experts own rings of
the frequency plane and whose router reads the tokens' band energies):

- **Coverage** (:func:`expert_band_coverage`): per module, the band profile
  (:func:`.spectral.band_profile`, FourierMoE's rings) of every expert's own update ΔW_e, an
  E × B matrix. For FourierMoE expert e owns ring e of E by construction, so with B = E the
  matrix is diagonal; for low-rank experts it says where their updates put energy.
- **Decisions** (:class:`BandRoutingRecorder`): for every valid token at a routed module, the
  band energies of its (clean) input in the router's own 1-D bands
  (:func:`frame_peft.methods.fouriermoe.layer.band_energies`, B bands of equal count over the rfft
  bins; Σ_b E_b = ‖x‖²), normalised to a share ``s_t``; its **dominant band** ``argmax_b s_t``;
  and the experts the router sent it to (its top-k slots). Kept per module: ``band_expert[b][e]``
  = routed slots of tokens with dominant band b that went to e, normalised per row
  (P(expert | dominant band)); ``expert_band[e]`` = the mean share profile of the tokens routed to
  e; ``band_tokens[b]``; and per task the mean share profile of its tokens. Nothing per token is
  stored.

If routing ignored the bands, the rows of ``band_expert`` would equal the overall load and every
``expert_band`` row would equal the overall mean profile; ``mutual_information`` (nats, between
dominant band and expert slot) summarises the departure (0 = independent; with N routed slots
the plug-in estimate of independent variables is still about (B−1)(E−1)/(2N),
``mutual_information_bias``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.inject import require_injection
from ..methods.fouriermoe.layer import band_energies
from .spectral import band_profile

__all__ = ["BandRoutingRecorder", "expert_band_coverage"]


def expert_band_coverage(model: nn.Module, num_bands: int | None = None) -> dict[str, Any]:
    """``{"modules": {name: {"matrix": E × B profiles (None rows for zero experts)}},
    "skipped": {name: why}}`` for every routed module with per-expert updates. ``num_bands``
    defaults to the module's E."""
    modules, skipped = {}, {}
    for name, layer in require_injection(model).layers.items():
        adapter = layer.adapter
        if not getattr(adapter, "has_router", False):
            continue
        try:
            with torch.no_grad():
                deltas = adapter.expert_deltas()
        except (NotImplementedError, AttributeError) as err:
            skipped[name] = f"no per-expert update ({err})"
            continue
        b = num_bands or deltas.shape[0]
        modules[name] = {"matrix": [band_profile(d, b)["bands"] for d in deltas], "bands": b}
    return {"modules": modules, "skipped": skipped}


class BandRoutingRecorder:
    """Record tokens' band energies against routing decisions while open (module docstring).

    Args:
        model: a model with routed adapters (``fp.inject``).
        num_bands: bands of the token spectra; default: each module's E (FourierMoE's router).
        task_names: names of task ids 0, 1, … for the per-task profiles.
    """

    def __init__(
        self,
        model: nn.Module,
        num_bands: int | None = None,
        task_names: Sequence[str] | None = None,
    ) -> None:
        inj = require_injection(model)
        self.state = inj.state
        self.layers = {n: la for n, la in inj.layers.items() if la.adapter.has_router}
        if not self.layers:
            raise ValueError("the model has no routed adapter: nothing to relate bands to")
        self.num_bands = num_bands
        self.task_names = list(task_names) if task_names is not None else None
        self._pending: dict[str, torch.Tensor] = {}
        self._sums: dict[str, dict[str, Any]] = {}
        self._handles: list[Any] = []
        self._remove = None

    def __enter__(self) -> BandRoutingRecorder:
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._pre_hook(name)))
        self._remove = self.state.add_observer(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._remove is not None:
            self._remove()
            self._remove = None
        self._pending.clear()

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            b = self.num_bands or self.layers[name].adapter.num_experts
            with torch.no_grad():
                energy = band_energies(x.reshape(-1, x.shape[-1]).double(), b)
                total = energy.sum(-1, keepdim=True)
                self._pending[name] = energy / total.clamp_min(1e-300)

        return hook

    def _observe(self, module: str, routing: Any, mask: Any, task_ids: Any) -> None:
        share = self._pending.pop(module, None)
        if share is None or share.shape[0] != routing.indices.shape[0]:
            return
        with torch.no_grad():
            idx = routing.indices.detach().cpu()
            e, b = routing.probs.shape[-1], share.shape[-1]
            keep = torch.ones(idx.shape[0], dtype=torch.bool)
            if mask is not None:
                keep = mask.detach().cpu().reshape(-1) > 0
            share, idx = share.cpu()[keep], idx[keep]
            s = self._sums.setdefault(module, {
                "band_expert": torch.zeros(b, e, dtype=torch.float64),
                "expert_band": torch.zeros(e, b, dtype=torch.float64),
                "expert_slots": torch.zeros(e, dtype=torch.float64),
                "band_tokens": torch.zeros(b, dtype=torch.float64),
                "share": torch.zeros(b, dtype=torch.float64), "tokens": 0, "tasks": {},
            })  # fmt: skip
            dom = share.argmax(-1)
            k = idx.shape[-1]
            s["band_expert"].index_put_((dom.repeat_interleave(k), idx.reshape(-1)),
                                        torch.ones(idx.numel(), dtype=torch.float64),
                                        accumulate=True)  # fmt: skip
            for j in range(k):
                s["expert_band"].index_add_(0, idx[:, j], share)
                s["expert_slots"].index_add_(
                    0, idx[:, j], torch.ones(len(idx), dtype=torch.float64)
                )
            s["band_tokens"] += torch.bincount(dom, minlength=b).double()
            s["share"] += share.sum(0)
            s["tokens"] += int(share.shape[0])
            if task_ids is not None:
                ids = task_ids.detach().cpu().reshape(-1)[keep]
                for t in ids.unique().tolist():
                    row = s["tasks"].setdefault(int(t), [torch.zeros(b, dtype=torch.float64), 0])
                    row[0] += share[ids == t].sum(0)
                    row[1] += int((ids == t).sum())

    def _task(self, t: int) -> str:
        names = self.task_names
        return names[t] if names is not None and 0 <= t < len(names) else f"task{t}"

    def statistics(self) -> dict[str, Any]:
        """Per module: ``band_expert`` (B × E, rows P(expert | dominant band); None rows for a band
        no token had), ``expert_band`` (E × B, mean share of the tokens routed to e), ``load``,
        ``mean_share``, ``band_tokens``, ``tokens``, ``mutual_information`` (nats) and
        ``task_share`` ({task: mean share profile})."""
        out = {}
        for name, s in self._sums.items():
            be, slots = s["band_expert"], s["expert_slots"]
            total = float(be.sum())
            rows = [None if float(r.sum()) == 0 else (r / r.sum()).tolist() for r in be]
            eb = [None if float(n) == 0 else (r / n).tolist()
                  for r, n in zip(s["expert_band"], slots, strict=True)]  # fmt: skip
            joint = be / max(total, 1e-300)
            pb, pe = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
            live = joint > 0
            mi = float((joint[live] * (joint[live] / (pb @ pe)[live]).log()).sum())
            out[name] = {
                "band_expert": rows,
                "expert_band": eb,
                "load": (slots / slots.sum().clamp_min(1e-300)).tolist(),
                "mean_share": (s["share"] / max(s["tokens"], 1)).tolist(),
                "band_tokens": s["band_tokens"].tolist(),
                "tokens": s["tokens"],
                "mutual_information": mi,
                # what independent band and expert would still show with this many slots
                # (Miller–Madow: the plug-in estimate is biased upward by (B−1)(E−1)/(2N))
                "mutual_information_bias": (be.shape[0] - 1)
                * (be.shape[1] - 1)
                / (2 * max(total, 1.0)),
                "task_share": {
                    self._task(t): (v / max(n, 1)).tolist()
                    for t, (v, n) in sorted(s["tasks"].items())
                },
            }
        return out
