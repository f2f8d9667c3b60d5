"""The order scan's statistics pass: inputs, gates and output gradients of every FRAME module.

For each FRAME module and each recorded token n :class:`TokenRecorder` keeps::

    x_n  (d_in,)   the module's (clean) input
    g_n  (E,)      the router's renormalised top-k gates for x_n (the current router, eval mode)
    δ_n  (d_out,)  −∂L/∂y_n, the negative gradient of the caller's loss at the module output

Two modes:

- ``"zero"`` (the first scan): the adapters are **disabled** (every expert's update is zero, as
  with ``B = 0``), so δ is the gradient a fresh expert starts from.
- ``"current"`` (rescans): the adapters are on, so δ is what is left for the experts to do. The
  scan then adds each expert's own contribution back (:mod:`.scan`), which needs δ in output units:
  ``λ δ`` is a Newton step with the loss's curvature along the adapters' own update taken as a
  scalar. With ``c`` every FRAME module's adapter output and the adapters scaled by (1 + ε),
  ``L(ε) ≈ L₀ + g₁ ε + ½ h ε²`` with ``g₁ = −Σ⟨δ, c⟩`` and ``h = 2 (L(−1) − L₀ + g₁)`` (one more
  forward with the adapters off gives L(−1)), so ``λ = Σ‖c‖² / h``. For a squared-error loss this
  is exact (δ·λ is the residual).

Padding tokens (the forward's ``attention_mask``, or :func:`frame_peft.routing_context`) are
skipped, and at most ``tokens_per_batch`` tokens per module and batch are kept, chosen by a seeded
generator so every process of a distributed run keeps the same positions.

How: a forward hook on each FRAME layer returns ``y + z`` with ``z`` a zero leaf that requires
grad; ``z``'s gradient is ∂L/∂y. A token's record is only kept once that gradient arrives, so
forwards that never get a backward (activation-checkpointing recomputes) add nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ...core.inject import disable_adapters, require_injection
from .layer import FrameAdapter

MODES = ("zero", "current")


@dataclass
class TokenStats:
    """Recorded tokens of one module: ``x`` (N, d_in), ``delta`` (N, d_out), ``gates`` (N, E),
    float32 on the CPU."""

    x: torch.Tensor
    delta: torch.Tensor
    gates: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.x.shape[0]


class TokenRecorder:
    """Records :class:`TokenStats` for every FRAME module of ``model`` while open.

    Use::

        with TokenRecorder(model, tokens_per_batch=128, seed=0) as rec:
            for batch in batches:
                loss = my_loss(model, batch)      # any scalar loss of the model's outputs
                loss.backward()
                rec.next_batch()
        stats = rec.stats()                      # {module name: TokenStats}

    The model is put in eval mode (no dropout, no router jitter) and, in mode ``"zero"``, its
    adapters are disabled for the duration; both are restored on exit, also on an exception.
    Callers discard the parameter gradients the backward leaves (mode ``"current"``).
    """

    def __init__(
        self, model: nn.Module, tokens_per_batch: int, seed: int = 0, mode: str = "zero"
    ) -> None:
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        inj = require_injection(model)
        self.layers = {
            n: la for n, la in inj.layers.items() if isinstance(la.adapter, FrameAdapter)
        }
        if not self.layers:
            raise ValueError("the model has no FRAME modules: the order scan is for FRAME only")
        self.model = model
        self.state = inj.state
        self.tokens_per_batch = tokens_per_batch
        self.seed = seed
        self.mode = mode
        self._records: dict[str, list[tuple[torch.Tensor, ...]]] = {n: [] for n in self.layers}
        self._calls = 0
        self._stack: contextlib.ExitStack | None = None
        # mode "current": Σ‖c‖² and g₁ = −Σ⟨δ, c⟩ over every valid token of every module
        self.contribution_energy = 0.0
        self.slope = 0.0

    def __enter__(self) -> TokenRecorder:
        stack = contextlib.ExitStack()
        was_training = self.model.training
        self.model.eval()
        stack.callback(self.model.train, was_training)
        if self.mode == "zero":
            stack.enter_context(disable_adapters(self.model))
        for i, (name, layer) in enumerate(self.layers.items()):
            handle = layer.register_forward_hook(self._hook(name, i))
            stack.callback(handle.remove)
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _valid_tokens(self, flat: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        mask = self.state.token_mask(lead)
        valid = torch.arange(flat.shape[0], device=flat.device)
        if mask is not None:
            valid = valid[mask.to(flat.device).reshape(-1) > 0]
        return valid

    def _hook(self, name: str, index: int):
        layer = self.layers[name]
        adapter = layer.adapter

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return output
            x = args[0]
            lead = x.shape[:-1]
            flat = x.detach().reshape(-1, x.shape[-1])
            valid = all_valid = self._valid_tokens(flat, lead)
            if len(valid) > self.tokens_per_batch:
                gen = torch.Generator().manual_seed(
                    self.seed * 1_000_003 + self._calls * 997 + index
                )
                pick = torch.randperm(len(valid), generator=gen)[: self.tokens_per_batch]
                valid = valid[pick.sort().values.to(valid.device)]
            if len(valid) == 0:
                return output
            with torch.no_grad():
                gates = adapter.router(flat.float()).gates
                contribution = None
                if self.mode == "current":  # the adapter's output c (eval mode: no dropout)
                    contribution = adapter.mix(flat.index_select(0, all_valid), gates[all_valid])
                    contribution = contribution.float()
                    self.contribution_energy += float(contribution.square().sum())
            x_kept = flat.index_select(0, valid).float().cpu()
            g_kept = gates.index_select(0, valid).float().cpu()
            tap = torch.zeros_like(output, requires_grad=True)
            records = self._records[name]

            def on_grad(grad: torch.Tensor) -> None:
                grad = grad.detach().reshape(-1, grad.shape[-1])
                delta = -grad.index_select(0, valid)
                records.append((x_kept, delta.float().cpu(), g_kept))
                if contribution is not None:
                    g_all = grad.index_select(0, all_valid).float()
                    self.slope += float((g_all * contribution).sum())

            tap.register_hook(on_grad)
            return output + tap

        return hook

    def next_batch(self) -> None:
        """Advance the token-selection seed (call once per batch; :func:`record` does)."""
        self._calls += 1

    def stats(self) -> dict[str, TokenStats]:
        """The recorded tokens of every FRAME module (modules that saw none are left out)."""
        out = {}
        for name, recs in self._records.items():
            if recs:
                x, d, g = (torch.cat(parts) for parts in zip(*recs, strict=True))
                out[name] = TokenStats(x, d, g)
        return out


def curvature_scale(
    loss_now: float, loss_off: float, slope: float, contribution_energy: float
) -> float | None:
    """``λ = Σ‖c‖² / h`` with ``h = 2 (L(−1) − L₀ + g₁)`` (module docstring); None when the
    quadratic model has no positive curvature or the adapters contribute nothing."""
    h = 2.0 * (loss_off - loss_now + slope)
    if not h > 0 or not contribution_energy > 0:
        return None
    return contribution_energy / h


def record(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    tokens_per_batch: int,
    seed: int = 0,
    mode: str = "zero",
) -> tuple[dict[str, TokenStats], float | None]:
    """Run ``loss_fn(model, batch).backward()`` for every batch inside a :class:`TokenRecorder`;
    returns its statistics and, in mode ``"current"``, the scale λ (:func:`curvature_scale`;
    None in mode ``"zero"``). ``loss_fn`` returns a scalar tensor."""
    loss_now = loss_off = 0.0
    with torch.enable_grad(), TokenRecorder(model, tokens_per_batch, seed, mode) as rec:
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar tensor")
            if not loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on any FRAME module's output (no gradient to "
                    "record); does loss_fn run the model?"
                )
            loss.backward()
            loss_now += float(loss.detach())
            if mode == "current":
                with torch.no_grad(), disable_adapters(model):
                    loss_off += float(loss_fn(model, batch))
            rec.next_batch()
    if mode == "zero":
        return rec.stats(), None
    return rec.stats(), curvature_scale(loss_now, loss_off, rec.slope, rec.contribution_energy)
