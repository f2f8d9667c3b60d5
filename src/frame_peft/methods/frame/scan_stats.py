"""The order scan's statistics pass: inputs, gates and output gradients of every FRAME module.

Inside :class:`TokenRecorder` the model runs with its adapters **disabled** (every expert's update
is zero, as with ``B = 0``), so the gradient each FRAME module sees at its output is the one a
fresh expert would start from. For each FRAME module and each recorded token n it keeps::

    x_n  (d_in,)   the module's (clean) input
    g_n  (E,)      the router's renormalised top-k gates for x_n (the current router, eval mode)
    δ_n  (d_out,)  −∂L/∂y_n, the negative gradient of the caller's loss at the module output

Padding tokens (the forward's ``attention_mask``, or :func:`frame_peft.routing_context`) are
skipped, and at most ``tokens_per_batch`` tokens per module and batch are kept, chosen by a seeded
generator so every process of a distributed run keeps the same positions.

How: a forward hook on each FRAME layer returns ``y + z`` with ``z`` a zero leaf that requires
grad; ``z``'s gradient is ∂L/∂y. A token's record is only kept once that gradient arrives, so
forwards that never get a backward (activation-checkpointing recomputes) add nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ...core.inject import disable_adapters, require_injection
from .layer import FrameAdapter


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
        stats = rec.stats()                      # {module name: TokenStats}

    The model is put in eval mode (no dropout, no router jitter) and its adapters are disabled
    for the duration; both are restored on exit, also on an exception. Parameters get no
    gradient (nothing trainable is used), so no optimizer state is touched.
    """

    def __init__(self, model: nn.Module, tokens_per_batch: int, seed: int = 0) -> None:
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
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
        self._records: dict[str, list[tuple[torch.Tensor, ...]]] = {n: [] for n in self.layers}
        self._calls = 0
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> TokenRecorder:
        stack = contextlib.ExitStack()
        was_training = self.model.training
        self.model.eval()
        stack.callback(self.model.train, was_training)
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

    def _hook(self, name: str, index: int):
        adapter = self.layers[name].adapter

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return output
            x = args[0]
            lead = x.shape[:-1]
            flat = x.detach().reshape(-1, x.shape[-1])
            mask = self.state.token_mask(lead)
            valid = torch.arange(flat.shape[0], device=flat.device)
            if mask is not None:
                valid = valid[mask.to(flat.device).reshape(-1) > 0]
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
            x_kept = flat.index_select(0, valid).float().cpu()
            g_kept = gates.index_select(0, valid).float().cpu()
            tap = torch.zeros_like(output, requires_grad=True)
            records = self._records[name]

            def on_grad(grad: torch.Tensor) -> None:
                delta = -grad.detach().reshape(-1, grad.shape[-1]).index_select(0, valid)
                records.append((x_kept, delta.float().cpu(), g_kept))

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


def record(
    model: nn.Module, batches: Iterator, loss_fn, tokens_per_batch: int, seed: int = 0
) -> dict[str, TokenStats]:
    """Run ``loss_fn(model, batch).backward()`` for every batch inside a :class:`TokenRecorder`
    and return its statistics. ``loss_fn`` returns a scalar tensor."""
    with TokenRecorder(model, tokens_per_batch, seed) as rec:
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
            rec.next_batch()
    return rec.stats()
