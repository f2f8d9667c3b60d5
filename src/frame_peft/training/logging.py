"""Training logs: a tqdm progress bar, ``log.jsonl``, ``orders.jsonl`` and experiment trackers.

Only rank 0 logs (the Trainer builds a :class:`RunLogger` with ``enabled=False`` elsewhere).

* ``<output_dir>/log.jsonl``: one JSON object per logged step (keys in
  :data:`STEP_KEYS`, plus ``aux/<kind>`` from ``fp.aux_stats``, ``orders/{mean,std,min,max}``
  for FRAME models and ``eval/<metric>`` when an evaluation ran at that step). Only ever
  appended to: on resume, records after the resumed step (written by the interrupted run) are
  cut off the end of the file in place (:func:`truncate_jsonl`), never by rewriting it.
* ``<output_dir>/orders.jsonl``: FRAME only, every logged step: ``{"step", "orders": {module:
  [a_1 … a_E]}}``, the per-layer, per-expert orders for analysis.
* Experiment trackers (``TrainConfig.report_to``, through ``accelerate``'s tracker classes, see
  :mod:`.trackers`): the run config as hyperparameters once, then every numeric key of a record
  as a scalar (``train/<key>``; ``eval/...``, ``aux/...``, ``orders/...`` keep their prefix).
  TensorBoard (``<output_dir>/tensorboard/``) by default when installed; otherwise one warning.
  ``log.jsonl`` stays the record; trackers are views of it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.inject import aux_stats, find_injection, orders
from .distributed import full_tensor
from .trackers import (
    build_trackers,
    call_all,
    config_params,
    finish_trackers,
    normalize_report_to,
    resolve_report_to,
    scalars,
)

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
    """Drop the records of ``path`` after ``max_step`` (written by an interrupted run) and a torn
    last line, in place and without rewriting the file.

    Records are appended in step order, so the ones to keep are a prefix of the file: it is cut
    at the end of that prefix with one ``truncate`` call (and fsynced), so a kill at any moment
    leaves every earlier step in the file. Nothing is written when there is nothing to drop.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    keep = 0  # byte length of the prefix of whole records with step <= max_step
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a torn last line from a crash
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or record.get("step", 0) > max_step:
            break
        keep += len(line)
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


class RunLogger:
    """Progress bar + JSONL + experiment trackers for one run (no-ops when ``enabled`` is False).

    Args:
        output_dir: where ``log.jsonl``, ``orders.jsonl`` and ``tensorboard/`` go.
        total_steps: length of the run (progress bar total, ETA).
        initial_step: first step of this session (resume).
        enabled: False on ranks other than 0.
        progress: show the tqdm bar (on stderr).
        tensorboard: deprecated, used only when ``report_to`` is not given: True is the default
            (TensorBoard when installed), False is ``report_to=[]``.
        report_to: normalised ``TrainConfig.report_to``: tracker names, ``[]`` for none, or None
            for the default (TensorBoard when ``accelerate`` and ``tensorboard`` are installed,
            else one warning). Missing packages of named trackers raise ``ImportError`` on every
            rank (before any tracker starts), so no rank is left waiting for the others.
        config: the run config, stored by each tracker as hyperparameters.
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
        report_to: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.dir = Path(output_dir)
        self.log_path = self.dir / "log.jsonl"
        self.orders_path = self.dir / "orders.jsonl"
        self.bar = None
        self.trackers: list[Any] = []
        report_to = normalize_report_to(report_to)
        if report_to is None and not tensorboard:
            report_to = []
        names, warning = resolve_report_to(report_to)  # raises on every rank alike
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in (self.log_path, self.orders_path):
            truncate_jsonl(path, initial_step)
        if warning is not None:
            warnings.warn(warning, stacklevel=2)
        self.trackers = build_trackers(names, self.dir)  # before the bar: nothing to undo
        try:
            if config is not None:
                shown = {k: v for k, v in config.items() if k != "tensorboard"}  # deprecated
                shown["report_to"] = names  # resolved: what this run reports to
                call_all(self.trackers, "store_init_configuration", config_params(shown))
        except BaseException:
            finish_trackers(self.trackers)
            raise
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=initial_step, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stderr,
            )  # fmt: skip

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
        every tracker under ``train/`` (keys with a ``/``, such as ``eval/...``, keep theirs)."""
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if orders:
            with open(self.orders_path, "a") as f:
                f.write(json.dumps({"step": record["step"], "orders": orders}) + "\n")
        if self.trackers:
            call_all(self.trackers, "log", scalars(record), step=int(record["step"]))

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar (rank 0 only)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        """Close the bar and finish every tracker (flushes TensorBoard, ends W&B/MLflow runs)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        finish_trackers(self.trackers)


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
