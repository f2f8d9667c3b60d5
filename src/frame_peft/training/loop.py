"""``Trainer``: the training loop for frame-peft and PEFT models, in one process or distributed.

```python
trainer = Trainer(model, dataset, TrainConfig(output_dir="runs/x", max_steps=1000))
result = trainer.train()
```

One optimizer step: fetch this rank's ``A`` micro-batches, count the labelled tokens of the whole
global batch (all-reduced), then for each micro-batch run the forward inside
``fp.routing_context(attention_mask=..., task_ids=...)`` and backpropagate the objective of
:mod:`frame_peft.training.losses` (gradient sync skipped on all but the last micro-batch); then
clip (the :class:`~frame_peft.AdapterOptimizer` clips adapter weights and FRAME orders
separately), read the loss sums and a non-finite-gradient flag in the step's one host sync (a
NaN/inf step raises or is skipped before any update: ``TrainConfig.nonfinite``),
``optimizer.step()``, ``after_optimizer_step`` (AdaLoRA), ``scheduler.step()``, ``zero_grad``; then
log, evaluate, checkpoint. See ``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._files import replace_directory, temp_directory, write_json
from .._version import __version__
from ..core.inject import find_injection
from ..optim import build_optimizer
from ..peft_bridge import after_optimizer_step, aux_loss, is_peft_model
from ..routing import routing_context
from . import checkpoint as ckpt
from . import run_identity as rid
from .callbacks import TrainerCallback, TrainResult
from .config import TrainConfig
from .distributed import (
    DistEnv,
    broadcast_adapter_buffers,
    setup,
    skip_gradient_sync,
    unwrap,
    wrap,
)
from .logging import RunLogger, routing_summary
from .losses import count_labelled, extra_model_loss, lm_loss_sum
from .model_loading import enable_activation_checkpointing
from .nonfinite import NonFiniteError, nonfinite_grad_flag
from .order_scan import OrderScanCallback, uses_scan
from .sampler import StepBatchSampler, pad_collate
from .schedule import build_scheduler


@dataclass
class _Position:
    """Where the run is: the unit of resumption (saved in ``trainer_state.json``)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens_seen: int = 0


class _Window:
    """Running sums between two log records (mean loss, mean aux, throughput)."""

    def __init__(self) -> None:
        self.loss = self.aux = 0.0
        self.steps = self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, loss: float, aux: float, tokens: int, skipped: bool = False) -> float:
        if not skipped:  # a skipped non-finite step would turn the mean into NaN
            self.loss, self.aux = self.loss + loss, self.aux + aux
            self.steps += 1
        self.tokens += tokens
        return self.tokens / max(time.perf_counter() - self.t0, 1e-9)  # tokens/s so far

    def mean(self, total: float) -> float:
        return total / self.steps if self.steps else float("nan")


class Trainer:
    """Trains the adapters of ``model`` on ``train_dataset``.

    Args:
        model: a model with frame-peft adapters injected (``fp.inject``) or a PEFT model
            (``fp.peft_baseline``); base weights frozen. Under FSDP it is sharded in place.
        train_dataset: a map-style dataset of ``{"input_ids": list[int], "labels": list[int],
            "task_id": int}`` items (``labels`` -100 where not trained).
        config: the :class:`TrainConfig`.
        collate_fn: turns a list of items into LongTensors ``input_ids``, ``attention_mask``,
            ``labels`` (B, S) and ``task_ids`` (B,); default :func:`pad_collate` with
            ``config.pad_token_id``.
        eval_fn: ``eval_fn(model) -> {metric: float}``, called every ``eval_every`` steps and at
            the end, on every rank (FSDP needs all ranks in each forward), in ``model.eval()``
            and ``torch.no_grad()``; rank 0's result is logged as ``eval/<metric>``.
        callbacks: :class:`TrainerCallback` instances.
        data_fingerprint: an exact description of the training data (e.g. a hash of its files),
            saved with every checkpoint: resuming with another one is refused. Default: a
            sampled hash of the dataset (``run_identity.dataset_fingerprint``).

    After :meth:`train`, ``trainer.optimizer`` and ``trainer.scheduler`` hold the objects used.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        config: TrainConfig,
        *,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        callbacks: Sequence[TrainerCallback] | None = None,
        data_fingerprint: str | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if find_injection(model) is None and not is_peft_model(model):
            raise ValueError(
                "the model has no adapters: inject one with frame_peft.inject(model, config) or "
                "wrap it with frame_peft.peft_baseline(model, method)"
            )
        if not hasattr(train_dataset, "__len__") or not hasattr(train_dataset, "__getitem__"):
            raise TypeError("train_dataset must be a map-style Dataset (__len__ and __getitem__)")
        self.model = model
        self.train_dataset = train_dataset
        self.config = config
        # a partial, not a lambda: DataLoader workers started by "spawn" must pickle it
        self.collate_fn = collate_fn or functools.partial(
            pad_collate, pad_token_id=config.pad_token_id
        )
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks or [])
        self.data_fingerprint = data_fingerprint
        self.env: DistEnv | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._stop = False

    @property
    def rank(self) -> int:
        return 0 if self.env is None else self.env.rank

    def request_stop(self) -> None:
        """End training after the current step; a checkpoint of that step is written."""
        self._stop = True

    # -- setup ----------------------------------------------------------------------------------

    def _resume_path(self) -> Path | None:
        resume = self.config.resume
        if resume is None:
            return None
        if resume == "auto":
            return ckpt.latest_checkpoint(self.config.output_dir)
        ckpt.read_trainer_state(resume)  # raises with a clear message if incomplete
        return Path(resume)

    def _prepare_model(self, resume: Path | None) -> nn.Module:
        model = self.model
        if self.config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        model.to(self.env.device)
        if resume is not None:  # before wrapping: DDP broadcasts it, FSDP shards it
            ckpt.load_model_adapter(model, resume)
        return wrap(model, self.env, self.config.find_unused_parameters)

    def _batches(self, pos: _Position) -> Any:
        cfg, env = self.config, self.env
        sampler = StepBatchSampler(
            len(self.train_dataset), cfg.per_device_batch_size, cfg.gradient_accumulation_steps,
            env.world_size, env.rank, cfg.seed, pos.epoch, pos.step_in_epoch, cfg.shuffle,
        )  # fmt: skip
        # Own generator: creating a loader must not draw from the global RNG (exact resume).
        g = torch.Generator().manual_seed(cfg.seed)
        return iter(DataLoader(
            self.train_dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
            num_workers=cfg.num_workers, generator=g,
        ))  # fmt: skip

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=getattr(torch, self.config.dtype))

    def _claim_output_dir(self, out: Path) -> None:
        """Create ``out``, finish or undo swaps a killed run left half done, and with
        ``overwrite=True`` delete an earlier run's files (all ranks check, rank 0 acts)."""
        env = self.env
        if self.config.overwrite:
            rid.check_clearable(out)
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for done in ckpt.recover_output_dir(out):
                warnings.warn(f"{out}: {done}", stacklevel=3)
            if self.config.overwrite:
                removed = rid.clear_output_dir(out)
                if removed:
                    warnings.warn(f"overwrite=True: deleted {removed} in {out}", stacklevel=3)
        env.barrier()

    # -- training -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run (or resume) training to the configured length; returns a :class:`TrainResult`."""
        cfg = self.config
        self.env = env = setup(cfg.distributed, cfg.device, self.model)
        out = Path(cfg.output_dir)
        self._claim_output_dir(out)
        resume = self._resume_path()
        state = ckpt.read_trainer_state(resume) if resume is not None else None
        identity = rid.run_identity(self.model, self.train_dataset, self.data_fingerprint)
        if state is None:
            rid.check_fresh_start(out, cfg, identity)
        ckpt.seed_everything(cfg.seed + env.rank)

        global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * env.world_size
        steps_per_epoch = len(self.train_dataset) // global_batch
        if steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(self.train_dataset)} items, fewer than one global batch "
                f"of {global_batch} (per_device_batch_size x gradient_accumulation_steps x "
                f"world size {env.world_size})"
            )
        total = cfg.max_steps or cfg.num_epochs * steps_per_epoch
        model = self._prepare_model(resume)
        self.optimizer = opt = build_optimizer(
            model, lr=cfg.lr, order_lr=cfg.order_lr, weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm, order_max_grad_norm=cfg.order_max_grad_norm,
        )  # fmt: skip
        warmup = min(cfg.warmup_for(total), total)
        self.scheduler = build_scheduler(opt, cfg.schedule, warmup, total, cfg.min_lr_ratio)
        self._scaler = torch.amp.GradScaler(env.device.type) if cfg.dtype == "float16" else None
        pos = _Position()
        if state is not None:
            rid.check_resume_state(state, cfg, identity, global_batch, resume)
            pos = _Position(
                state["step"], state["epoch"], state["step_in_epoch"], state["tokens_seen"]
            )
            if not ckpt.load_training_state(resume, opt, self.scheduler, self._scaler, env.rank):
                warnings.warn(
                    f"{resume} has no RNG state for rank {env.rank}; dropout masks will differ "
                    "from an uninterrupted run",
                    stacklevel=2,
                )
        env.barrier()  # every rank has checked the directory before rank 0 writes into it
        if env.is_main:
            write_json(out / "train_config.json", cfg.to_dict(), sort_keys=True)
            rid.write_identity(out, identity)
        self._identity = identity
        logger = RunLogger(
            out, total, pos.step, enabled=env.is_main, progress=cfg.progress,
            report_to=cfg.report_to, config=cfg.to_dict(),
        )  # fmt: skip
        if resume is not None:
            logger.write(f"resumed from {resume} at step {pos.step}")
        if uses_scan(self.model) and not any(
            isinstance(cb, OrderScanCallback) for cb in self.callbacks
        ):
            self.callbacks.append(OrderScanCallback())

        self._wrapped, self._logger, self._global_batch = model, logger, global_batch
        self._last_ckpt, self._eval_metrics = None, {}
        self._skipped, self._skipped_in_a_row = 0, 0  # non-finite steps (nonfinite="skip")
        last = {"loss": float("nan"), "aux_loss": float("nan")}
        self._window, session_tokens, t_start = _Window(), 0, time.perf_counter()
        for cb in self.callbacks:
            cb.on_train_begin(self, total, pos.step)
        model.train()
        try:
            while pos.step < total and not self._stop:
                if pos.step_in_epoch >= steps_per_epoch:
                    pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                batches = self._batches(pos)
                while pos.step_in_epoch < steps_per_epoch and pos.step < total and not self._stop:
                    micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
                    last = self._train_step(micro, pos)
                    session_tokens += last["tokens"]
                    self._after_step(pos, last, total, t_start)
        finally:
            logger.close()
        elapsed = time.perf_counter() - t_start
        if self._last_ckpt is None and resume is not None and pos.step >= total:
            self._last_ckpt = resume  # a finished run again: re-export its adapter
        adapter_path = self._export_final_adapter(out) if self._last_ckpt is not None else None
        result = TrainResult(
            global_step=pos.step, epoch=pos.epoch, tokens_seen=pos.tokens_seen,
            tokens_per_second=session_tokens / max(elapsed, 1e-9), loss=last["loss"],
            aux_loss=last["aux_loss"], elapsed_s=elapsed, output_dir=out,
            last_checkpoint=self._last_ckpt, adapter_path=adapter_path, log_path=logger.log_path,
            resumed_from=resume, stopped_early=self._stop and pos.step < total,
            eval_metrics=self._eval_metrics,
        )  # fmt: skip
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _train_step(self, micro: list[dict[str, torch.Tensor]], pos: _Position) -> dict[str, Any]:
        """Forward/backward every micro-batch, step; returns the step's global metrics."""
        env, model, opt = self.env, self._wrapped, self.optimizer
        accum = len(micro)
        local = torch.tensor([
            float(sum(count_labelled(b["labels"]) for b in micro)),
            float(sum(b["attention_mask"].sum() for b in micro)),
        ])  # fmt: skip
        n_labels, n_tokens = env.all_reduce_sum(local).tolist()
        n_labels = max(n_labels, 1.0)
        hf_config = getattr(unwrap(model), "config", None)
        no_cache = {"use_cache": False} if hasattr(hf_config, "use_cache") else {}
        # (ce, aux) summed on the device: one host sync per step, not one per micro-batch
        sums = torch.zeros(2, dtype=torch.float64, device=env.device)
        for i, batch in enumerate(micro):
            batch = {k: v.to(env.device) for k, v in batch.items()}
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "task_ids")}
            with skip_gradient_sync(model, env, skip=i < accum - 1):
                # the prompt ends at the first supervised label: what HMoRA's task encoder reads
                prompt = torch.cumsum((batch["labels"] != -100).long(), dim=1) == 0
                ctx = routing_context(
                    attention_mask=batch["attention_mask"],
                    task_ids=batch.get("task_ids"),
                    prompt_mask=prompt,
                )
                with self._autocast(), ctx:
                    outputs = self._forward(model, inputs, no_cache)
                logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
                ce = lm_loss_sum(logits, batch["labels"])
                aux = aux_loss(model).float()
                extra = extra_model_loss(model)
                if extra is not None:
                    aux = aux + extra.float()
                # DDP/FSDP average gradients over ranks, hence the world-size factor.
                loss = ce * (env.world_size / n_labels) + aux / accum
                (self._scaler.scale(loss) if self._scaler else loss).backward()
            sums += torch.stack([ce.detach().double(), aux.detach().double()])
        lrs = self._lrs()
        if self._scaler is not None:
            self._scaler.unscale_(opt)  # clip and check the true gradients
        norm_t = opt.clip_gradients()
        # with float16 the gradient scaler skips inf/NaN gradients itself
        bad_grad = nonfinite_grad_flag(opt, norm_t, env.device, self._scaler is None)
        # the step's one host sync, before the parameters change: losses and the gradient check
        ce_all, aux_all, bad = env.all_reduce_sum(torch.cat([sums, bad_grad.reshape(1)])).tolist()
        loss, aux_mean = ce_all / n_labels, aux_all / (accum * env.world_size)
        finite = math.isfinite(loss) and math.isfinite(aux_mean) and bad == 0
        if finite:
            if self._scaler is not None:
                self._scaler.step(opt)
                self._scaler.update()
            else:
                opt.step()
            after_optimizer_step(model, pos.step)  # AdaLoRA ranks by gradients: before zero_grad
            broadcast_adapter_buffers(model, env)  # FlyLoRA's bias: rank 0's on every rank
            self._skipped_in_a_row = 0
        else:
            self._refuse_step(pos.step + 1, loss, aux_mean, opt.last_grad_norms)
            if self._scaler is not None:
                self._scaler.update()  # lowers the scale; the step itself is skipped
        self.scheduler.step()
        opt.zero_grad(set_to_none=True)
        pos.step, pos.step_in_epoch = pos.step + 1, pos.step_in_epoch + 1
        pos.tokens_seen += int(n_tokens)
        norms = opt.last_grad_norms
        out = {
            "loss": loss, "aux_loss": aux_mean, **lrs,
            "grad_norm_main": norms["main"], "grad_norm_order": norms["order"],
            "tokens": int(n_tokens), "skipped": not finite,
        }  # fmt: skip
        if self.config.nonfinite == "skip":
            out["skipped_steps"] = self._skipped
        return out

    def _refuse_step(
        self, step: int, loss: float, aux: float, norms: dict[str, float | None]
    ) -> None:
        """A non-finite step: raise (``nonfinite="error"``) or count a skip; never update."""
        cfg = self.config
        last = self._last_ckpt or "none (no checkpoint was written before this step)"
        what = (
            f"non-finite values at step {step}: loss={loss}, aux_loss={aux}, "
            f"grad_norm_main={norms['main']}, grad_norm_order={norms['order']}"
        )
        if cfg.nonfinite == "skip":
            self._skipped += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row <= cfg.max_skipped_steps:
                self._logger.write(f"{what}; step skipped (no parameter update)")
                return
            what += f" ({self._skipped_in_a_row} non-finite steps in a row)"
        message = (
            f"{what}. The parameters were not updated by this step and no checkpoint of it was "
            f"written; the last good checkpoint is {last}. Lower the learning rate, check the "
            "data, or set TrainConfig(nonfinite='skip', max_skipped_steps=N) to skip such steps"
        )
        self._logger.write(message)
        raise NonFiniteError(message)

    @staticmethod
    def _forward(model: nn.Module, inputs: dict[str, torch.Tensor], extra: dict) -> Any:
        try:
            return model(**inputs, **extra)
        except RuntimeError as err:
            if "find_unused_parameters" not in str(err):
                raise
            raise RuntimeError(
                "DDP found trainable parameters that got no gradient in the previous step (e.g. "
                "HMoRA's task encoder when task ids are given): set "
                "TrainConfig(find_unused_parameters=True)"
            ) from err

    def _after_step(
        self, pos: _Position, stats: dict[str, Any], total: int, t_start: float
    ) -> None:
        """Progress bar, log record (+ eval), callbacks, checkpoint."""
        cfg, window = self.config, self._window
        tok_s = window.add(stats["loss"], stats["aux_loss"], stats["tokens"], stats["skipped"])
        self._logger.progress(pos.step, stats["loss"], stats["aux_loss"], tok_s, stats.get("lr", 0))
        metrics = {
            "step": pos.step, "epoch": pos.epoch,
            **{k: v for k, v in stats.items() if k not in ("tokens", "skipped")},
            "tokens_per_s": tok_s, "tokens_seen": pos.tokens_seen,
            "elapsed_s": time.perf_counter() - t_start,
        }  # fmt: skip
        final = pos.step >= total or self._stop
        record: dict[str, Any] | None = None
        order_lists = None
        if pos.step % cfg.log_every == 0 or final:
            record = {**metrics, "loss": window.mean(window.loss),
                      "aux_loss": window.mean(window.aux)}  # fmt: skip
            order_lists = routing_summary(self._wrapped, record)
            self._window = _Window()
        if self.eval_fn is not None and (
            final or (cfg.eval_every is not None and pos.step % cfg.eval_every == 0)
        ):
            self._eval_metrics = self._evaluate(pos.step)
            record = record or {"step": pos.step}
            record.update({f"eval/{k}": v for k, v in self._eval_metrics.items()})
        if record is not None:
            self._logger.log(record, order_lists)
        for cb in self.callbacks:
            cb.on_step_end(self, pos.step, metrics)
        if self._stop or final or (cfg.save_every is not None and pos.step % cfg.save_every == 0):
            self._save(pos)

    def _lrs(self) -> dict[str, float]:
        """The learning rates the coming ``optimizer.step()`` uses (main, order)."""
        out, opt = {}, self.optimizer
        if opt.main.param_groups:
            out["lr"] = float(opt.main.param_groups[0]["lr"])
        if opt.order.param_groups:
            out["order_lr"] = float(opt.order.param_groups[0]["lr"])
        return out

    def _evaluate(self, step: int) -> dict[str, float]:
        inner = unwrap(self._wrapped)
        inner.eval()
        try:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in dict(self.eval_fn(inner) or {}).items()}
        finally:
            inner.train()
        for cb in self.callbacks:
            cb.on_evaluate(self, step, metrics)
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------

    def _save(self, pos: _Position) -> None:
        env, out = self.env, Path(self.config.output_dir)
        state = {
            "step": pos.step, "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch,
            "tokens_seen": pos.tokens_seen, "global_batch_size": self._global_batch,
            "seed": self.config.seed, "world_size": env.world_size, "distributed": env.mode,
            "kind": "peft" if is_peft_model(self._wrapped) else "frame_peft",
            "library_version": __version__, "config": self.config.to_dict(),
            "identity": self._identity,
        }  # fmt: skip
        path = ckpt.save_checkpoint(
            out, self._wrapped, self.optimizer, self.scheduler, self._scaler, env, state
        )
        if env.is_main:
            ckpt.prune_checkpoints(out, self.config.keep_checkpoints)
        self._last_ckpt = path
        for cb in self.callbacks:
            cb.on_save(self, pos.step, path)

    def _export_final_adapter(self, out: Path) -> Path:
        """Copy the last checkpoint's adapter to ``<output_dir>/adapter``: written aside, then
        swapped in (:func:`frame_peft._files.replace_directory`), so a kill leaves a version
        that the next ``train()`` puts back, and then replaces with this one."""
        final = out / ckpt.ADAPTER_DIR
        if self.env.is_main:
            tmp = temp_directory(final)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self._last_ckpt / ckpt.ADAPTER_DIR, tmp)
            replace_directory(tmp, final)
        self.env.barrier()
        return final


__all__ = ["NonFiniteError", "TrainResult", "Trainer", "TrainerCallback"]
