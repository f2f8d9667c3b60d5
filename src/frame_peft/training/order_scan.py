"""Runs FRAME's order scan (:mod:`frame_peft.methods.frame.scan`) on schedule inside the Trainer.

The :class:`~frame_peft.training.Trainer` adds an :class:`OrderScanCallback` by itself when the
model's FrameConfig has ``order_search="scan"``. At the steps :func:`scan_steps` gives (the
fractions ``scan_at`` of the run, rounded) it

1. draws ``scan_batches`` batches of ``per_device_batch_size`` items per process from the
   training set with its own seeded generator (``seed + step``; the training data order and the
   global RNG are untouched, so an interrupted run resumes bit-exactly after a scan),
2. records the statistics with the model's adapters off and, under DDP, gathers every
   process's tokens so all processes make the same choice,
3. jumps the experts (the first scheduled step is the first scan, later ones are rescans) and
   zeroes their first optimizer moments,
4. appends the report to ``<output_dir>/scans.jsonl`` (rank 0) and logs one line.

It runs in ``on_step_end``, before that step's checkpoint is written, so every checkpoint after
a scan holds its result (orders, pins, reset experts, optimizer state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .._files import append_json_line
from ..core.inject import find_injection
from ..methods.frame.scan import scan_orders, scan_steps
from ..methods.frame.scan_stats import TokenStats
from ..routing import routing_context
from .callbacks import TrainerCallback
from .distributed import unwrap
from .logging import truncate_jsonl
from .losses import count_labelled, lm_loss_sum

if TYPE_CHECKING:
    from .loop import Trainer

SCANS_FILE = "scans.jsonl"


def uses_scan(model: torch.nn.Module) -> bool:
    """Whether ``model`` has FRAME adapters configured with ``order_search="scan"``."""
    inj = find_injection(model)
    return inj is not None and getattr(inj.config, "order_search", None) == "scan"


def gather_stats(
    stats: dict[str, TokenStats], scale: float | None
) -> tuple[dict[str, TokenStats], float | None]:
    """Every process's recorded tokens, concatenated in rank order, and the mean of the
    processes' scales (the same on all ranks)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats, scale
    parts: list[Any] = [None] * dist.get_world_size()
    mine = ({n: (s.x, s.delta, s.gates) for n, s in stats.items()}, scale)
    dist.all_gather_object(parts, mine)
    names = sorted({n for p, _ in parts for n in p})
    out = {}
    for name in names:
        pieces = [p[name] for p, _ in parts if name in p]
        out[name] = TokenStats(*(torch.cat(t) for t in zip(*pieces, strict=True)))
    scales = [s for _, s in parts if s is not None]
    return out, (sum(scales) / len(scales) if scales else None)


def lm_scan_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Trainer's LM objective on one batch: summed cross-entropy / labelled tokens."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "task_ids")}
    with routing_context(attention_mask=batch["attention_mask"], task_ids=batch.get("task_ids")):
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    n = count_labelled(batch["labels"]).clamp_min(1)
    return lm_loss_sum(logits, batch["labels"]) / n


class OrderScanCallback(TrainerCallback):
    """Runs the order scan at :func:`scan_steps` of the Trainer's run (see the module doc)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.reports: list[dict[str, Any]] = []

    def on_train_begin(self, trainer: Trainer, total_steps: int, start_step: int) -> None:
        inj = find_injection(trainer.model)
        if trainer.env.mode == "fsdp":
            raise ValueError(
                "order_search='scan' is not supported under FSDP (the scan needs whole expert "
                "factors on every process); train with DDP, or use order_search='gradient'"
            )
        self.config = inj.config
        self.steps = scan_steps(list(inj.config.scan_at), total_steps)
        path = Path(trainer.config.output_dir) / SCANS_FILE
        if trainer.rank == 0:
            if start_step > 0:
                truncate_jsonl(path, start_step)
            elif path.exists():
                path.unlink()

    def _batches(self, trainer: Trainer, step: int):
        cfg, env = trainer.config, trainer.env
        per = cfg.per_device_batch_size
        n = self.config.scan_batches * per * env.world_size
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        order = torch.randperm(len(trainer.train_dataset), generator=g)
        picked = order[: min(n, len(order))].tolist()
        mine = picked[env.rank :: env.world_size]
        for i in range(0, len(mine), per):
            items = [trainer.train_dataset[j] for j in mine[i : i + per]]
            batch = trainer.collate_fn(items)
            yield {k: v.to(env.device) for k, v in batch.items()}

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        if step not in self.steps:
            return
        first = step == self.steps[0]
        model = unwrap(trainer._wrapped)
        tokens = math.ceil(
            self.config.scan_tokens / (self.config.scan_batches * trainer.env.world_size)
        )
        with torch.random.fork_rng(devices=[]):
            report = scan_orders(
                model, self._batches(trainer, step), loss_fn=lm_scan_loss,
                optimizer=trainer.optimizer, first=first, tokens_per_batch=tokens,
                gather=gather_stats, step=step,
            )  # fmt: skip
        record = report.to_dict()
        self.reports.append(record)
        if trainer.rank == 0:
            path = Path(trainer.config.output_dir) / SCANS_FILE
            append_json_line(path, record)
            if report.note:
                trainer._logger.write(f"order scan at step {step}: {report.note}")
                return
            moved = report.num_jumps
            at0 = sum(e.order_after == 0 for m in report.modules for e in m.experts)
            total = sum(len(m.experts) for m in report.modules)
            trainer._logger.write(
                f"order scan at step {step} ({'first' if first else 'rescan'}): {moved}/{total} "
                f"experts moved, {at0}/{total} at order 0; statistics "
                f"{report.seconds_statistics:.1f} s, search {report.seconds_search:.1f} s"
            )
