"""Non-finite losses and gradients: detect them without an extra host sync, refuse NaN saves.

A NaN or inf loss (or gradient) that reaches ``optimizer.step()`` turns every adapter weight
non-finite, and every later checkpoint with it; with ``keep_checkpoints=2`` no good one would
survive. The :class:`~frame_peft.training.Trainer` therefore looks at the step's loss and
gradient norms *before* stepping (:func:`nonfinite_grad_flag` is a device tensor that travels in
the one all-reduce per step the loop already does), and :func:`refuse_nonfinite` stops any
checkpoint whose adapter tensors are not all finite. See ``docs/training.md`` ("Non-finite
values") and ``docs/guarantees.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .distributed import full_tensor

if TYPE_CHECKING:
    from ..optim import AdapterOptimizer

NONFINITE_POLICIES = ("error", "skip")


class NonFiniteError(RuntimeError):
    """Training met a NaN/inf loss or gradient (or was about to save non-finite weights)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def nonfinite_grad_flag(
    opt: AdapterOptimizer,
    norms: dict[str, torch.Tensor | None],
    device: torch.device,
    enabled: bool = True,
) -> torch.Tensor:
    """A 0-dim float64 tensor on ``device``: how many of ``opt``'s parameter sets (main, order)
    have a non-finite gradient (always 0 when not ``enabled``).

    ``norms`` are the pre-clip norms of :meth:`AdapterOptimizer.clip_gradients` (global over
    ranks); a set without a clip (norm ``None``) is checked gradient by gradient instead
    (``isfinite().all()`` on the device, local shards under FSDP). No host sync: the caller
    reads the flag together with the loss.
    """
    flag = torch.zeros((), dtype=torch.float64, device=device)
    if not enabled:
        return flag
    for name, inner in (("main", opt.main), ("order", opt.order)):
        group = [p for g in inner.param_groups for p in g["params"]]
        norm = norms.get(name)
        if norm is not None:
            norm = full_tensor(norm)
            flag = flag + (~torch.isfinite(norm.detach())).to(device, torch.float64)
            continue
        grads = [_local(p.grad) for p in group if p.grad is not None]
        if grads:
            finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
            flag = flag + (~finite).to(device, torch.float64)
    return flag


def nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or inf (local shards under FSDP)."""
    names = [k for k, v in tensors.items() if torch.is_floating_point(v)]
    if not names:
        return []
    bad = torch.stack([
        ~torch.isfinite(_local(tensors[k]).detach()).all().cpu() for k in names
    ]).tolist()  # fmt: skip
    return [k for k, b in zip(names, bad, strict=True) if b]


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` by name (what a training step can change)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_policy(name: str, value: object) -> None:
    """Validate a ``nonfinite`` policy name (``"error"`` or ``"skip"``)."""
    if value not in NONFINITE_POLICIES:
        raise ValueError(
            f"TrainConfig.{name} must be one of {list(NONFINITE_POLICIES)}, got {value!r}"
        )


__all__ = [
    "NONFINITE_POLICIES",
    "NonFiniteError",
    "check_policy",
    "nonfinite_grad_flag",
    "nonfinite_names",
    "trainable_tensors",
]
