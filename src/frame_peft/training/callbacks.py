"""``TrainerCallback`` (hooks into a run) and ``TrainResult`` (what a run did)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import Trainer


class TrainerCallback:
    """Hooks called on every rank; override what you need. ``trainer.request_stop()`` ends the run
    after the current step (with a checkpoint)."""

    def on_train_begin(self, trainer: Trainer, total_steps: int, start_step: int) -> None:
        """Once the run is set up (model wrapped, optimizer built, resumed state loaded), before
        the first step; ``start_step`` > 0 on resume."""

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        """After each optimizer step; ``metrics`` holds that step's loss, aux_loss, lr, ..."""

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After each ``eval_fn`` call."""

    def on_save(self, trainer: Trainer, step: int, path: Path) -> None:
        """After a checkpoint is committed."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """At the end of :meth:`Trainer.train`."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did.

    Attributes:
        global_step: optimizer steps done in total (including those before a resume).
        epoch: epoch index of the last step.
        tokens_seen: non-padding input tokens processed over all ranks, in total.
        tokens_per_second: mean throughput of this session (all ranks, non-padding tokens).
        loss: LM loss per labelled token of the last step (global batch).
        aux_loss: routing aux loss of the last step (mean over micro-batches and ranks).
        elapsed_s: wall time of this session's training loop.
        output_dir: the run directory.
        last_checkpoint: the last checkpoint written (None if the run did no step).
        adapter_path: ``<output_dir>/adapter``, a copy of the last checkpoint's adapter.
        log_path: ``<output_dir>/log.jsonl``.
        resumed_from: the checkpoint this session started from, if any.
        stopped_early: ``request_stop()`` ended the run before the configured length.
        eval_metrics: the last ``eval_fn`` result (empty without one).
    """

    global_step: int
    epoch: int
    tokens_seen: int
    tokens_per_second: float
    loss: float
    aux_loss: float
    elapsed_s: float
    output_dir: Path
    last_checkpoint: Path | None
    adapter_path: Path | None
    log_path: Path
    resumed_from: Path | None = None
    stopped_early: bool = False
    eval_metrics: dict[str, float] = field(default_factory=dict)
