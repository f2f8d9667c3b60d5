"""Training logs: a tqdm progress bar, ``log.jsonl``, ``orders.jsonl`` and TensorBoard scalars.

Only rank 0 logs (the Trainer builds a :class:`RunLogger` with ``enabled=False`` elsewhere).

* ``<output_dir>/log.jsonl``: one JSON object per logged step (keys in
  :data:`STEP_KEYS`, plus ``aux/<kind>`` from ``fp.aux_stats``, ``orders/{mean,std,min,max}``
  for FRAME models and ``eval/<metric>`` when an evaluation ran at that step). On resume, records
  after the resumed step (written by the interrupted run) are dropped first.
* ``<output_dir>/orders.jsonl``: FRAME only, every logged step: ``{"step", "orders": {module:
  [a_1 … a_E]}}``, the per-layer, per-expert orders for analysis.
* ``<output_dir>/tensorboard/``: every numeric key of a record as a scalar (``train/<key>``,
  ``eval/...``), when the ``tensorboard`` package is importable; otherwise one warning.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.inject import aux_stats, find_injection, orders
from .distributed import full_tensor

STEP_KEYS = (
    "step",
    "epoch",
    "loss",
    "aux_loss",
    "lr",
    "order_lr",
    "grad_norm_main",
    "grad_norm_order",
    "tokens_per_s",
    "tokens_seen",
    "elapsed_s",
)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan
    return value


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only the records of ``path`` with ``step <= max_step`` (resume after a crash)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
    path.write_text("".join(line + "\n" for line in kept))


class RunLogger:
    """Progress bar + JSONL + TensorBoard for one run (all no-ops when ``enabled`` is False).

    Args:
        output_dir: where ``log.jsonl``, ``orders.jsonl`` and ``tensorboard/`` go.
        total_steps: length of the run (progress bar total, ETA).
        initial_step: first step of this session (resume).
        enabled: False on ranks other than 0.
        progress: show the tqdm bar (on stderr).
        tensorboard: write TensorBoard scalars if the package is importable.
    """

    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        *,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.dir = Path(output_dir)
        self.log_path = self.dir / "log.jsonl"
        self.orders_path = self.dir / "orders.jsonl"
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in (self.log_path, self.orders_path):
            truncate_jsonl(path, initial_step)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=initial_step, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stderr,
            )  # fmt: skip
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "TrainConfig.tensorboard=True but the tensorboard package is not installed "
                    "(pip install tensorboard); writing log.jsonl only",
                    stacklevel=2,
                )
            else:
                self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def progress(self, step: int, loss: float, aux: float, tokens_per_s: float, lr: float) -> None:
        """Advance the bar to ``step`` and show the latest numbers (tqdm shows the ETA)."""
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{loss:.4f}", aux=f"{aux:.4f}", tok_s=f"{tokens_per_s:.0f}", lr=f"{lr:.2e}",
            refresh=False,
        )  # fmt: skip

    def log(self, record: dict[str, Any], orders: dict[str, list[float]] | None = None) -> None:
        """Append ``record`` to ``log.jsonl`` (and ``orders`` to ``orders.jsonl``); scalars to
        TensorBoard under ``train/`` (keys already prefixed ``eval/`` keep their prefix)."""
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if orders:
            with open(self.orders_path, "a") as f:
                f.write(json.dumps({"step": record["step"], "orders": orders}) + "\n")
        if self.writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                tag = key if "/" in key else f"train/{key}"
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar (rank 0 only)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def routing_summary(model: nn.Module, record: dict[str, Any]) -> dict[str, list[float]] | None:
    """Add ``aux/<kind>`` (``fp.aux_stats`` of the latest forward) and, for FRAME,
    ``orders/{mean,std,min,max}`` to ``record``; return the per-module orders ``{module: [a_e]}``
    (None without FRAME modules). Every rank must call it: gathering FSDP shards is collective."""
    if find_injection(model) is None:
        return None  # a PEFT model: nothing routed
    record.update({f"aux/{k}": v for k, v in aux_stats(model).items()})
    per_module = {k: full_tensor(v).float().cpu() for k, v in orders(model).items()}
    if not per_module:
        return None
    flat = torch.cat(list(per_module.values()))
    record.update({
        "orders/mean": float(flat.mean()), "orders/std": float(flat.std(unbiased=False)),
        "orders/min": float(flat.min()), "orders/max": float(flat.max()),
    })  # fmt: skip
    return {k: [round(float(a), 6) for a in v] for k, v in per_module.items()}
