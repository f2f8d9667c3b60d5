"""``TrainConfig``: every setting of a :class:`frame_peft.training.Trainer` run, validated.

A config is a flat dataclass of JSON-friendly values, so it is saved verbatim in every
checkpoint (``trainer_state.json``) and in ``<output_dir>/train_config.json``, and
:meth:`TrainConfig.from_dict` rebuilds it (unknown keys are refused with the list of allowed ones).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from .nonfinite import check_policy
from .trackers import REPORT_TO_NAMES, normalize_report_to

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(f"TrainConfig.{name} must be {allowed}, got {value!r}")


def _non_negative_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"TrainConfig.{name} must be finite, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"TrainConfig.{name} must be one of {list(allowed)}, got {value!r}")


def _clip(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"TrainConfig.{name} must be a positive number, math.inf (measure the norm without "
            f"clipping) or None (no clipping), got {value!r}"
        )


@dataclass
class TrainConfig:
    """Settings of one training run.

    Args:
        output_dir: directory for checkpoints (``checkpoint-<step>/``), the final adapter
            (``adapter/``), ``log.jsonl``, ``orders.jsonl``, ``train_config.json`` and TensorBoard
            events (``tensorboard/``). Created if missing.
        seed: seeds Python, NumPy and torch before training, and the data order (epoch ``e``
            uses the permutation of seed ``seed + e``).
        max_steps: number of optimizer steps. Exactly one of ``max_steps`` and ``num_epochs``
            must be set.
        num_epochs: number of passes over the data; the run then has
            ``num_epochs * (len(dataset) // global_batch)`` steps.
        per_device_batch_size: sequences per micro-batch on each process.
        gradient_accumulation_steps: micro-batches per optimizer step on each process. One step
            consumes a global batch of ``per_device_batch_size * gradient_accumulation_steps *
            world_size`` sequences; an incomplete last batch of an epoch is dropped.
        lr: peak learning rate of the adapter weights (main optimizer).
        order_lr: peak learning rate of FRAME's order logits (order optimizer, METHODS §2).
        weight_decay: AdamW weight decay of the >= 2-dim adapter weights (orders get none).
        schedule: ``"cosine"``, ``"linear"`` (decay to ``min_lr_ratio`` after the warm-up) or
            ``"constant"`` (flat after the warm-up). Main and order lrs follow the same shape.
        warmup_steps: linear warm-up from 0 over this many steps. At most one of
            ``warmup_steps`` and ``warmup_ratio`` may be set; neither means no warm-up.
        warmup_ratio: warm-up as a fraction in [0, 1) of the total number of steps (rounded up).
        min_lr_ratio: the lr at the last step, as a fraction in [0, 1] of the peak (cosine/linear).
        max_grad_norm: grad-norm clip of the adapter weights (``None``: off, ``math.inf``:
            measure only).
        order_max_grad_norm: separate grad-norm clip of the order logits.
        log_every: write a ``log.jsonl`` record (and TensorBoard scalars) every this many steps.
        eval_every: call ``eval_fn`` every this many steps (``None``: only after the last step).
        save_every: write a checkpoint every this many steps (``None``: only after the last step).
        keep_checkpoints: keep the newest this many ``checkpoint-*`` directories (``None``: all).
        resume: ``"auto"`` (continue from the newest complete checkpoint in ``output_dir``, or
            start fresh if there is none), ``None`` (always start fresh) or a checkpoint path.
            An output directory belongs to one run: ``None`` into a directory holding an earlier
            run's files is refused (unless ``overwrite``), and resuming a checkpoint trained on
            other data or with another adapter config is refused (other changed settings, such
            as the learning rate, only warn). See ``docs/training.md``.
        overwrite: delete an earlier run's files in ``output_dir`` first and start afresh
            (``frame-peft train --overwrite``). Refused when the folder holds files frame-peft
            does not write (it may not be a run directory), and with a checkpoint path as
            ``resume``.
        dtype: ``"float32"`` (no autocast), ``"bfloat16"`` or ``"float16"`` (autocast; float16
            also uses a gradient scaler, and is refused with FSDP).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant mode,
            which works with a frozen base). The model must support
            ``gradient_checkpointing_enable`` (every transformers model does).
        report_to: experiment trackers that get the config and every logged scalar, through
            ``accelerate``'s tracker classes: a list of names from ``"tensorboard"``,
            ``"wandb"``, ``"mlflow"``, ``"trackio"`` (a single name may be a string), or
            ``"none"``/``[]`` for none (``log.jsonl`` is always written). ``None`` (default):
            TensorBoard when ``accelerate`` and ``tensorboard`` are installed, else a one-line
            warning. A named tracker whose package is missing fails at the start of ``train()``
            with the ``pip install`` to run. Stored normalised (a list, ``"none"`` as ``[]``).
        tensorboard: deprecated alias of ``report_to`` (``DeprecationWarning``):
            ``tensorboard=False`` is ``report_to=[]``, ``tensorboard=True`` is the default
            ``report_to=None``. Setting both is an error; after validation it is ``None``.
        progress: show a tqdm progress bar (on rank 0 only).
        num_workers: ``DataLoader`` worker processes.
        distributed: ``"auto"`` (DDP when launched by ``torchrun``/``accelerate launch`` with
            more than one process, else a single process), ``"none"``, ``"ddp"`` or ``"fsdp"``
            (torch FSDP2 ``fully_shard``). ``"ddp"``/``"fsdp"`` need the launcher's environment.
        find_unused_parameters: passed to DDP; set it when some trainable parameters get no
            gradient in a step (e.g. HMoRA's task encoder when task ids are given). FRAME,
            MoE-LoRA, HydraLoRA, FlyLoRA, LoRA and PEFT's baselines use every trainable
            parameter in every forward and do not need it.
        shuffle: draw a seeded permutation of the dataset every epoch (``False``: in order).
        pad_token_id: padding id of the default collator (used only when no ``collate_fn`` is
            given to the Trainer).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (single process: where the model
            already is; distributed: ``cuda:LOCAL_RANK`` if CUDA is available, else the CPU).
        nonfinite: what a step with a NaN/inf loss or gradient norm does, checked before the
            parameters change: ``"error"`` (default) stops with a ``NonFiniteError`` naming the
            step, the loss and the last good checkpoint; ``"skip"`` drops the step (no update,
            gradients zeroed; it still counts towards ``max_steps`` and the lr schedule) and
            logs ``skipped_steps``. With ``dtype="float16"`` inf/NaN gradients are the gradient
            scaler's to skip; a non-finite loss still counts.
        max_skipped_steps: with ``nonfinite="skip"``, stop with ``NonFiniteError`` when more
            than this many steps in a row are non-finite.
    """

    output_dir: str
    seed: int = 0
    max_steps: int | None = None
    num_epochs: int | None = None
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr: float = 2e-4
    order_lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    order_max_grad_norm: float | None = 1.0
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int | None = 2
    resume: str | None = "auto"
    overwrite: bool = False
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    report_to: list[str] | str | None = None
    tensorboard: bool | None = None
    progress: bool = True
    num_workers: int = 0
    distributed: str = "auto"
    find_unused_parameters: bool = False
    shuffle: bool = True
    pad_token_id: int = 0
    device: str | None = None
    nonfinite: str = "error"
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir:
            if hasattr(self.output_dir, "__fspath__"):
                self.output_dir = str(self.output_dir)
            else:
                raise ValueError(
                    f"TrainConfig.output_dir must be a non-empty path, got {self.output_dir!r}"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be an integer >= 0, got {self.seed!r}")
        if (self.max_steps is None) == (self.num_epochs is None):
            raise ValueError(
                "TrainConfig: set exactly one of max_steps and num_epochs, got "
                f"max_steps={self.max_steps!r}, num_epochs={self.num_epochs!r}"
            )
        _positive_int("max_steps", self.max_steps, allow_none=True)
        _positive_int("num_epochs", self.num_epochs, allow_none=True)
        _positive_int("per_device_batch_size", self.per_device_batch_size)
        _positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        for name in ("lr", "order_lr", "weight_decay"):
            _non_negative_float(name, getattr(self, name))
        _choice("schedule", self.schedule, SCHEDULES)
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(
                "TrainConfig: set at most one of warmup_steps and warmup_ratio, got "
                f"warmup_steps={self.warmup_steps!r}, warmup_ratio={self.warmup_ratio!r}"
            )
        if self.warmup_steps is not None and (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ValueError(
                f"TrainConfig.warmup_steps must be an integer >= 0 or None, got "
                f"{self.warmup_steps!r}"
            )
        if self.warmup_ratio is not None:
            _non_negative_float("warmup_ratio", self.warmup_ratio)
            if self.warmup_ratio >= 1:
                raise ValueError(
                    f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}"
                )
        _non_negative_float("min_lr_ratio", self.min_lr_ratio)
        if self.min_lr_ratio > 1:
            raise ValueError(
                f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}"
            )
        _clip("max_grad_norm", self.max_grad_norm)
        _clip("order_max_grad_norm", self.order_max_grad_norm)
        _positive_int("log_every", self.log_every)
        _positive_int("eval_every", self.eval_every, allow_none=True)
        _positive_int("save_every", self.save_every, allow_none=True)
        _positive_int("keep_checkpoints", self.keep_checkpoints, allow_none=True)
        if self.resume is not None and not isinstance(self.resume, str):
            if hasattr(self.resume, "__fspath__"):
                self.resume = str(self.resume)
            else:
                raise ValueError(
                    "TrainConfig.resume must be 'auto', None or a checkpoint path, got "
                    f"{self.resume!r}"
                )
        _choice("dtype", self.dtype, DTYPES)
        _choice("distributed", self.distributed, DISTRIBUTED)
        if self.dtype == "float16" and self.distributed == "fsdp":
            raise ValueError(
                "TrainConfig.dtype='float16' is not supported with distributed='fsdp' (its "
                "gradient scaler would need sharded inf checks); use dtype='bfloat16'"
            )
        self._check_report_to()
        check_policy("nonfinite", self.nonfinite)
        _positive_int("max_skipped_steps", self.max_skipped_steps)
        if self.overwrite is not False and self.overwrite is not True:
            raise ValueError(f"TrainConfig.overwrite must be True or False, got {self.overwrite!r}")
        if self.overwrite and self.resume not in (None, "auto"):
            raise ValueError(
                f"TrainConfig: overwrite=True deletes output_dir and starts afresh, but resume="
                f"{self.resume!r} asks to continue a checkpoint; drop one of the two"
            )
        for name in ("gradient_checkpointing", "progress", "shuffle"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False, got "
                                 f"{getattr(self, name)!r}")  # fmt: skip
        if not isinstance(self.find_unused_parameters, bool):
            raise ValueError(
                "TrainConfig.find_unused_parameters must be True or False, got "
                f"{self.find_unused_parameters!r}"
            )
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(
                f"TrainConfig.num_workers must be an integer >= 0, got {self.num_workers!r}"
            )
        if (
            isinstance(self.pad_token_id, bool)
            or not isinstance(self.pad_token_id, int)
            or self.pad_token_id < 0
        ):
            raise ValueError(
                f"TrainConfig.pad_token_id must be an integer >= 0, got {self.pad_token_id!r}"
            )
        if self.device is not None and (
            not isinstance(self.device, str)
            or not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:"))
        ):
            raise ValueError(
                f"TrainConfig.device must be None, 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    def _check_report_to(self) -> None:
        """Normalise ``report_to`` and fold the deprecated ``tensorboard`` flag into it."""
        if self.tensorboard is not None:
            if not isinstance(self.tensorboard, bool):
                raise ValueError(
                    f"TrainConfig.tensorboard must be True, False or None, got {self.tensorboard!r}"
                )
            if self.report_to is not None:
                raise ValueError(
                    "TrainConfig: set report_to only; tensorboard is its deprecated alias, got "
                    f"tensorboard={self.tensorboard!r} and report_to={self.report_to!r}"
                )
            warnings.warn(
                "TrainConfig.tensorboard is deprecated; use report_to (tensorboard=False is "
                "report_to='none', tensorboard=True is the default report_to=None: TensorBoard "
                f"when installed). Allowed report_to names: {list(REPORT_TO_NAMES)}",
                DeprecationWarning,
                stacklevel=4,
            )
            self.report_to = None if self.tensorboard else []
            self.tensorboard = None
        self.report_to = normalize_report_to(self.report_to)

    def warmup_for(self, total_steps: int) -> int:
        """Number of warm-up steps of a run of ``total_steps`` optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is not None:
            return math.ceil(self.warmup_ratio * total_steps)
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; allowed keys: {allowed}")
        data = dict(data)
        if data.get("tensorboard") is not None and data.get("report_to") is None:
            # a config saved before report_to existed: translate without a deprecation warning
            data["report_to"] = None if data.pop("tensorboard") else []
        return cls(**data)
