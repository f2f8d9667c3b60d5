"""FRAME's order scan in a Hugging Face ``transformers.Trainer`` (or TRL's trainers built on it).

```python
from frame_peft.training.hf_callbacks import OrderScanHFCallback

trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                               data_collator=collator, optimizers=(opt, sched))
trainer.add_callback(OrderScanHFCallback(ds, collator))
trainer.train()
```

At the optimizer steps :func:`~frame_peft.scan_steps` gives for ``state.max_steps`` it draws the
FrameConfig's ``scan_batches`` batches from ``train_dataset`` with its own seeded generator (the
Trainer's data order and RNG are untouched), runs :func:`~frame_peft.scan_orders` on the
unwrapped model with the Trainer's optimizer (first moments of moved experts are zeroed) and keeps
the reports in ``self.reports`` (also appended to ``<output_dir>/scans.jsonl`` on the main
process). Single process, or DDP where every process gathers the same statistics.

Checkpoints the Trainer writes after a scan hold its result (orders, ``order_pins`` and the reset
experts are part of the model's state dict), so resuming from them does not rerun it.

:class:`AdapterOptimizerHFCallback` checks, before the first training step, that the Trainer
really steps the :class:`~frame_peft.optim.AdapterOptimizer` you passed in ``optimizers=``:
under DeepSpeed the Trainer silently drops it and builds its own AdamW. Both callbacks refuse
DeepSpeed at ``on_init_end`` (when given in ``Trainer(callbacks=[...])``) and ``on_train_begin``.

:class:`AdapterCheckpointHFCallback` writes the adapter into every checkpoint the Trainer saves
(its own checkpoint is a full model file with renamed keys, not a loadable adapter).

The routing (aux) loss reaches ``transformers.Trainer`` through ``outputs.loss`` (the loss hook
of :func:`~frame_peft.inject`). TRL's ``SFTTrainer`` (1.x) computes its loss from fused per-token
log-probabilities and never reads ``outputs.loss``: subclass it with :class:`AuxLossTrainerMixin`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._files import append_json_line
from ..core.inject import checked_aux_loss, require_injection
from ..core.serialization import save_adapter
from ..methods.frame.scan import lm_loss, scan_orders, scan_steps
from ..optim import AdapterOptimizer, refuse_unsupported_engine
from .distributed import warn_if_processes_dropped
from .order_scan import SCANS_FILE, gather_stats

try:
    from transformers import TrainerCallback as _HFCallback
except ImportError:  # pragma: no cover - transformers is a core dependency
    _HFCallback = object


def _inner_model(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def _check_engine(args: Any) -> None:
    """Refuse DeepSpeed, warn when accelerate launch dropped processes (both before any step)."""
    refuse_unsupported_engine(args)
    if max(1, getattr(args, "world_size", 1)) == 1:
        warn_if_processes_dropped()


class AuxLossTrainerMixin:
    """Adds the routing loss in trainers that compute their own loss (TRL's ``SFTTrainer``).

    ```python
    class FrameSFTTrainer(AuxLossTrainerMixin, trl.SFTTrainer): pass
    ```

    After the trainer's ``compute_loss`` it adds this forward's aux (:func:`~frame_peft.aux_loss`)
    the way TRL adds a Mixture-of-Experts router loss and frame-peft's Trainer adds aux: divided
    by the micro-batches of the optimizer step when the loss is normalised over the accumulated
    batch (``num_items_in_batch``; otherwise the Trainer divides the whole loss), after the
    cross-entropy's data-parallel factor, so each step's gradient holds the mean aux. Supports
    the trainer's default loss (no ``compute_loss_func``, no label smoothing: those run a second,
    gradient-free forward whose aux would be the one read).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if getattr(self, "compute_loss_func", None) is not None or getattr(
            self, "label_smoother", None
        ):
            raise ValueError(
                "AuxLossTrainerMixin supports the trainer's default loss only: drop "
                "compute_loss_func / label_smoothing_factor, or add frame_peft.aux_loss(model) in "
                "your own compute_loss"
            )
        inner = _inner_model(model)
        inj = require_injection(inner)
        seen: list[torch.Tensor | None] = []  # the aux of the loss forward (the first one)

        def keep(module, args, output):
            if not seen:
                seen.append(checked_aux_loss(inj, module))

        handle = inner.register_forward_hook(keep)
        try:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            handle.remove()
        loss, outputs = result if return_outputs else (result, None)
        aux = seen[0] if seen else None
        if model.training and inj.aux_in_loss and aux is not None:
            if num_items_in_batch is not None:
                aux = aux / self.current_gradient_accumulation_steps
            loss = loss + aux.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss


class AdapterCheckpointHFCallback(_HFCallback):
    """Writes the adapter (:func:`~frame_peft.save_adapter`) into every checkpoint the Trainer
    saves, as ``<output_dir>/checkpoint-<step>/adapter``.

    The Trainer's own checkpoint of an injected model is a full ``model.safetensors`` whose
    adapted projections are renamed (``...q_proj.base_layer.weight``), which neither the plain
    architecture's ``from_pretrained`` nor PEFT maps back. Reload this folder instead:
    ``fp.load_adapter(fresh_base, "checkpoint-N/adapter")``. Main process only.
    """

    def __init__(self, subdir: str = "adapter") -> None:
        self.subdir = subdir

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_adapter(_inner_model(model), checkpoint / self.subdir)
        return control


class AdapterOptimizerHFCallback(_HFCallback):
    """Fails loudly when ``transformers.Trainer`` would not step ``optimizer`` (see the list).

    ```python
    opt = build_optimizer(model)
    trainer = Trainer(model=model, args=args, optimizers=(opt, sched),
                      callbacks=[AdapterOptimizerHFCallback(opt)])
    ```

    * ``on_init_end`` (callbacks given to the constructor) and ``on_train_begin``: raise under
      DeepSpeed (:func:`~frame_peft.optim.refuse_unsupported_engine`); warn when
      ``accelerate launch --num_processes N`` without ``--multi_gpu`` started one process.
    * ``on_train_begin``: warn when ``args.max_grad_norm > 0``, the Trainer's joint clip that
      the per-set clips cannot undo (``docs/optim.md``).
    * ``on_optimizer_step``: raise when the Trainer stepped an optimizer but not ``optimizer``
      (a ``create_optimizer`` override, or an engine that replaced it). The Trainer's callbacks
      only see the optimizer given at construction, so a replacement can first be seen here,
      after the first step (with fp16, after 10, since the loss scaler may skip steps).

    Args:
        optimizer: the :class:`~frame_peft.optim.AdapterOptimizer` passed in ``optimizers=``.
    """

    def __init__(self, optimizer: AdapterOptimizer) -> None:
        if not isinstance(optimizer, AdapterOptimizer):
            raise TypeError(
                "AdapterOptimizerHFCallback needs the AdapterOptimizer passed to the Trainer "
                f"(frame_peft.optim.build_optimizer), got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer

    def on_init_end(self, args, state, control, **kwargs):
        _check_engine(args)
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        _check_engine(args)
        self._seen_steps = 0
        if getattr(args, "max_grad_norm", 0) and args.max_grad_norm > 0:
            warnings.warn(
                f"TrainingArguments.max_grad_norm={args.max_grad_norm} clips all parameters "
                "jointly before AdapterOptimizer's per-set clips; set max_grad_norm=0.0 "
                "(docs/optim.md)",
                RuntimeWarning,
                stacklevel=2,
            )
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._seen_steps = getattr(self, "_seen_steps", 0) + 1
        if self.optimizer.steps_taken == 0 and self._seen_steps >= (10 if args.fp16 else 1):
            raise RuntimeError(
                f"transformers.Trainer took {self._seen_steps} optimizer step(s) without stepping "
                "the AdapterOptimizer given to AdapterOptimizerHFCallback: something replaced it "
                "(DeepSpeed, or a create_optimizer override), so FRAME's order optimizer and the "
                "per-set clips do not run. Pass it as Trainer(optimizers=(opt, sched))"
            )
        return control


class OrderScanHFCallback(_HFCallback):
    """Runs FRAME's order scan inside ``transformers.Trainer`` (see the module docstring).

    Args:
        train_dataset: a map-style dataset of training items.
        data_collator: turns a list of items into a batch dict with ``input_ids``,
            ``attention_mask`` and ``labels``.
        batch_size: items per statistics batch (default: the Trainer's per-device batch size).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default the model's ``outputs.loss``
            without the routing loss (the cross-entropy, as in frame-peft's Trainer).
    """

    def __init__(
        self,
        train_dataset: Any,
        data_collator: Callable[[list], dict[str, torch.Tensor]],
        batch_size: int | None = None,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        self.dataset = train_dataset
        self.collate = data_collator
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.steps: list[int] = []
        self.reports: list[dict[str, Any]] = []

    def on_init_end(self, args, state, control, **kwargs):
        _check_engine(args)
        return control

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        _check_engine(args)
        config = require_injection(_inner_model(model)).config
        if getattr(config, "order_search", None) != "scan":
            raise ValueError(
                "OrderScanHFCallback needs a FRAME model with order_search='scan' (got "
                f"{type(config).__name__}, order_search="
                f"{getattr(config, 'order_search', None)!r})"
            )
        self.config = config
        self.steps = scan_steps(list(config.scan_at), state.max_steps)

    def _batches(self, args, step: int, device: torch.device):
        world = max(1, args.world_size)
        per = self.batch_size or args.per_device_train_batch_size
        n = self.config.scan_batches * per * world
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        picked = torch.randperm(len(self.dataset), generator=g)[: min(n, len(self.dataset))]
        mine = picked.tolist()[args.process_index :: world]
        for i in range(0, len(mine), per):
            batch = self.collate([self.dataset[j] for j in mine[i : i + per]])
            yield {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step not in self.steps:
            return control
        inner = _inner_model(model)
        device = next(inner.parameters()).device
        per_batch = math.ceil(
            self.config.scan_tokens / (self.config.scan_batches * max(1, args.world_size))
        )
        with torch.random.fork_rng(devices=[]):
            report = scan_orders(
                inner, self._batches(args, step, device), loss_fn=self.loss_fn or lm_loss,
                optimizer=getattr(optimizer, "optimizer", optimizer), first=step == self.steps[0],
                tokens_per_batch=per_batch, gather=gather_stats, step=step,
            )  # fmt: skip
        record = report.to_dict()
        self.reports.append(record)
        if state.is_world_process_zero:
            path = Path(args.output_dir) / SCANS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            append_json_line(path, record)
        return control
