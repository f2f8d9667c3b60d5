"""Training engines frame-peft does not support, detected before they do damage.

DeepSpeed replaces or wraps a user's optimizer (transformers' ``Trainer`` builds its own AdamW,
accelerate hands it to ZeRO), so an :class:`~frame_peft.optim.AdapterOptimizer` would silently
not step; these checks let it and the HF callbacks refuse such a run with a clear error.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["deepspeed_evidence", "refuse_unsupported_engine"]


def deepspeed_evidence(args: Any = None) -> str | None:
    """What says DeepSpeed drives this run, or ``None`` when nothing does.

    Looked at, in order: ``args.deepspeed`` / ``args.deepspeed_plugin`` of a
    ``transformers.TrainingArguments`` (when given); the ``ACCELERATE_USE_DEEPSPEED`` variable,
    which ``accelerate launch --use_deepspeed`` (or a DeepSpeed accelerate config) and an
    ``Accelerator`` built with a ``DeepSpeedPlugin`` set; accelerate's shared state, when
    accelerate is already imported and its distributed type is DEEPSPEED.
    """
    if args is not None and getattr(args, "deepspeed", None):
        return f"TrainingArguments.deepspeed={args.deepspeed!r}"
    if args is not None and getattr(args, "deepspeed_plugin", None) is not None:
        return "TrainingArguments.deepspeed_plugin is set"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() in ("1", "true"):
        return "ACCELERATE_USE_DEEPSPEED=true (accelerate launch --use_deepspeed / DeepSpeedPlugin)"
    state = sys.modules.get("accelerate.state")  # only look if accelerate is already in use
    if state is not None:
        for cls in (state.PartialState, state.AcceleratorState):
            kind = getattr(cls, "_shared_state", {}).get("distributed_type")
            if kind is not None and str(getattr(kind, "value", kind)).upper() == "DEEPSPEED":
                return f"accelerate's {cls.__name__} is set up for DeepSpeed"
    return None


def refuse_unsupported_engine(args: Any = None) -> None:
    """Raise when the run is driven by DeepSpeed, which does not step an :class:`AdapterOptimizer`.

    transformers' ``Trainer`` under DeepSpeed drops the optimizer passed in ``optimizers=`` and
    builds its own AdamW at ``TrainingArguments.learning_rate`` (``deepspeed_init`` sets
    ``trainer.optimizer = None`` and calls ``create_optimizer()``), so FRAME's order optimizer
    never steps and the per-set clips never run; accelerate hands the optimizer to DeepSpeed's
    ZeRO wrapper, which re-partitions its parameter groups. Nothing fails on its own.

    Args:
        args: a ``transformers.TrainingArguments`` to inspect as well (optional).

    Raises:
        RuntimeError: naming the evidence and what to use instead.
    """
    evidence = deepspeed_evidence(args)
    if evidence is None:
        return
    raise RuntimeError(
        f"frame_peft's AdapterOptimizer does not support DeepSpeed ({evidence}): DeepSpeed "
        "replaces or wraps the optimizer (transformers' Trainer builds its own AdamW at "
        "TrainingArguments.learning_rate, so the FRAME order optimizer never steps). Use DDP or "
        "FSDP2 instead: frame_peft.training.Trainer with TrainConfig(distributed='ddp' or 'fsdp'), "
        "or transformers' Trainer with optimizers=(opt, sched) (DDP), launched with torchrun or "
        "`accelerate launch --multi_gpu` without --use_deepspeed / TrainingArguments(deepspeed=...)"
    )
