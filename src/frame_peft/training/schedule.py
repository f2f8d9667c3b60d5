"""Learning-rate schedules: linear warm-up from 0, then cosine / linear decay or constant.

The schedule is a ``torch.optim.lr_scheduler.LambdaLR`` on the
:class:`~frame_peft.AdapterOptimizer`, whose ``param_groups`` are the main groups followed by the
order groups. ``LambdaLR`` multiplies every group's *own* initial lr by the same factor, so the
adapter weights and FRAME's orders follow one schedule shape, each from its own peak (METHODS §2).
With ``w`` warm-up steps, ``T`` total steps and ``m = min_lr_ratio``, the factor before optimizer
step ``s`` (0-based) is::

    s < w:          s / w                                      (0 at the first step, as in HF)
    cosine:         m + (1 - m) · ½ (1 + cos(π p)),   p = (s - w) / (T - w)
    linear:         m + (1 - m) · (1 - p)
    constant:       1

so the factor reaches ``m`` at ``s = T`` (one past the last step; the last step runs just above it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import SCHEDULES


@dataclass
class WarmupDecay:
    """The factor function of the schedule above (a picklable callable: ``LambdaLR`` saves its
    fields in its ``state_dict``)."""

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {list(SCHEDULES)}, got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}], got "
                f"{self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        m = self.min_lr_ratio
        if self.kind == "cosine":
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return m + (1.0 - m) * (1.0 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` applying :class:`WarmupDecay` to every param group of ``optimizer``.

    Build it on the composite :class:`~frame_peft.AdapterOptimizer` (never on ``.main`` or
    ``.order`` alone) so both sets are scheduled. Create it before loading the optimizer's state
    dict, then load the scheduler's own state dict (resume).
    """
    return LambdaLR(optimizer, WarmupDecay(kind, warmup_steps, total_steps, min_lr_ratio))
