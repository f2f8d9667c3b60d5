"""Training: ``Trainer`` (one process, torchrun DDP / FSDP2, accelerate launch), checkpoints with
exact resume, schedules and logs. See ``docs/training.md``."""

from __future__ import annotations

from .callbacks import TrainerCallback, TrainResult
from .checkpoint import latest_checkpoint, list_checkpoints, prune_checkpoints
from .config import TrainConfig
from .loop import Trainer
from .model_loading import load_base_model
from .sampler import StepBatchSampler, epoch_permutation, pad_collate
from .schedule import WarmupDecay, build_scheduler

__all__ = [
    "StepBatchSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "WarmupDecay",
    "build_scheduler",
    "epoch_permutation",
    "latest_checkpoint",
    "list_checkpoints",
    "load_base_model",
    "pad_collate",
    "prune_checkpoints",
]
