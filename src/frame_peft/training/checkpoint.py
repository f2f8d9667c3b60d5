"""Atomic, complete training checkpoints and exact resume.

Layout of ``<output_dir>/checkpoint-<step>/``::

    adapter/                   fp.save_adapter (frame-peft) or save_pretrained (PEFT); full
                               tensors even under FSDP, identical to a single-process save
    peft_state.safetensors     PEFT models only: their tuner tensors by full name (for resume)
    optimizer.pt               AdapterOptimizer state (main + order AdamW), gathered
    scheduler.pt               LambdaLR state
    scaler.pt                  GradScaler state (dtype="float16" only)
    rng-rank<r>.pt             Python, NumPy, torch CPU (and CUDA) RNG state of each rank
    trainer_state.json         step, epoch, step_in_epoch, tokens_seen, data seed, global batch
                               size, world size, the TrainConfig; written last

Everything is written into ``checkpoint-<step>.tmp/``, marked complete, fsynced, then renamed
(:func:`frame_peft._files.replace_directory`): a directory named ``checkpoint-<step>`` is always
complete, :func:`latest_checkpoint` ignores ``*.tmp`` ones, and :func:`recover_output_dir`
finishes or undoes a swap a killed process left half done.
All ranks write their RNG file into the same directory (a filesystem shared by the ranks).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import recover_directories, replace_directory, temp_directory, write_json
from ..core.inject import find_injection
from ..core.serialization import (
    adapter_state_dict,
    read_adapter,
    save_adapter,
    with_optional_state,
)
from ..peft_bridge import is_peft_model
from .distributed import DistEnv, full_tensors, is_dtensor, unwrap
from .nonfinite import NonFiniteError, nonfinite_names, trainable_tensors

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "trainer_state.json"
ADAPTER_DIR = "adapter"
PEFT_STATE_NAME = "peft_state.safetensors"
DELETED_SUFFIX = ".deleted"  # a pruned checkpoint being removed


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (if available) CUDA RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {  # only tuples, numbers and tensors: loadable with torch.load(weights_only=True)
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def commit_dir(tmp: Path, final: Path) -> None:
    """Make the written folder ``tmp`` (``<final>.tmp``) the new ``final``: marker, fsync, swap
    (:func:`frame_peft._files.replace_directory`); a kill at any point leaves a version that
    :func:`recover_output_dir` puts back in place on the next start."""
    replace_directory(tmp, final)


def _owned(name: str) -> bool:
    return name == ADAPTER_DIR or CHECKPOINT_RE.match(name) is not None


def recover_output_dir(output_dir: str | os.PathLike) -> list[str]:
    """Finish or undo the directory swaps (``adapter/``, ``checkpoint-<step>/``) that a killed
    run left half done in ``output_dir``; incomplete ``*.tmp`` folders are deleted. Returns
    what was done. Rank 0 calls it once at the start of ``train()``, before anything reads."""
    done = recover_directories(output_dir, _owned)
    root = Path(output_dir)
    for trash in sorted(root.glob(f"checkpoint-*{DELETED_SUFFIX}")) if root.is_dir() else []:
        shutil.rmtree(trash, ignore_errors=True)
        done.append(f"removed {trash.name} (a pruned checkpoint)")
    return done


# -- adapter weights -----------------------------------------------------------------------------


@contextlib.contextmanager
def _state_dict_overrides(model: nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Make each adapter's ``state_dict()`` return the given full tensors (keys as in
    ``adapter_state_dict``), so ``save_adapter`` writes gathered FSDP tensors unchanged."""
    handles = []
    for name, layer in find_injection(model).layers.items():

        def hook(module, state_dict, prefix, local_metadata, _name=name):
            for key in list(state_dict):
                state_dict[key] = tensors[f"{_name}.{key[len(prefix) :]}"]

        handles.append(layer.adapter.register_state_dict_post_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _peft_tensors(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The PEFT tuner's tensors of the model state dict (names containing the tuner prefix)."""
    prefix = getattr(peft_model.base_model, "prefix", "lora_")
    return {k: v for k, v in peft_model.state_dict().items() if prefix in k}


def save_model_adapter(model: nn.Module, path: Path, env: DistEnv) -> None:
    """Write the adapter of ``model`` (possibly DDP/FSDP-wrapped) to ``path`` on rank 0.

    Every rank must call it (FSDP gathers shards). frame-peft models: ``fp.save_adapter``;
    PEFT models: ``save_pretrained`` plus ``peft_state.safetensors`` next to ``path``.
    """
    inner = unwrap(model)
    if is_peft_model(inner):
        tensors = full_tensors(_peft_tensors(inner))
        if env.is_main:
            from safetensors.torch import save_file

            inner.save_pretrained(str(path), state_dict=tensors)
            contiguous = {k: v.contiguous() for k, v in tensors.items()}
            save_file(contiguous, str(path.parent / PEFT_STATE_NAME), metadata={"format": "pt"})
        return
    raw = adapter_state_dict(inner)
    if any(is_dtensor(v) for v in raw.values()):
        tensors = full_tensors(raw)
        if env.is_main:
            with _state_dict_overrides(inner, tensors):
                save_adapter(inner, path)
    elif env.is_main:
        save_adapter(inner, path)


def load_model_adapter(model: nn.Module, checkpoint: Path) -> None:
    """Load the adapter tensors of ``checkpoint`` into an (unwrapped) model built like the saved
    one: frame-peft adapters already injected, or the same PEFT baseline."""
    if is_peft_model(model):
        from safetensors.torch import load_file

        tensors = load_file(str(checkpoint / PEFT_STATE_NAME))
        expected = set(_peft_tensors(model))
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(
                f"{checkpoint}: PEFT tensors do not match this model (missing {missing[:3]}, "
                f"unexpected {extra[:3]}); build the same PEFT baseline before resuming"
            )
        model.load_state_dict(tensors, strict=False)
        return
    inj = find_injection(model)
    if inj is None:
        raise ValueError(
            "the model has no frame-peft adapters and is not a PEFT model; inject the same "
            "adapter config before resuming"
        )
    meta, tensors = read_adapter(checkpoint / ADAPTER_DIR)
    if meta.get("method") != inj.config.method:
        raise ValueError(
            f"{checkpoint}: the checkpoint holds a {meta.get('method')!r} adapter but the model "
            f"has {inj.config.method!r}"
        )
    current = adapter_state_dict(model)
    tensors = with_optional_state(model, tensors)
    if set(current) != set(tensors):
        missing = sorted(set(current) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(current))[:3]
        raise ValueError(
            f"{checkpoint}: adapter tensors do not match the model (missing {missing}, "
            f"unexpected {extra}); inject the same adapter config before resuming"
        )
    for name, layer in inj.layers.items():
        own = layer.adapter.state_dict()
        layer.adapter.load_state_dict({k: tensors[f"{name}.{k}"] for k in own}, strict=True)


# -- finding and pruning checkpoints -----------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``output_dir`` (``*.tmp`` ignored), or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the deleted.

    Each is first renamed to ``checkpoint-<step>.deleted`` (one rename), then removed: a kill
    mid-delete never leaves a half-deleted folder under a checkpoint's name for ``resume`` to
    pick; :func:`recover_output_dir` removes such leftovers.
    """
    removed = []
    if keep is not None:
        for _, path in list_checkpoints(output_dir)[:-keep]:
            trash = path.with_name(path.name + DELETED_SUFFIX)
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(path)
    return removed


def read_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a complete checkpoint: {STATE_NAME} is missing"
        )
    return json.loads(path.read_text())


# -- whole training state ------------------------------------------------------------------------


def save_checkpoint(
    output_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    env: DistEnv,
    trainer_state: dict[str, Any],
) -> Path:
    """Write ``checkpoint-<step>`` atomically (every rank calls it); return its final path.

    ``trainer_state`` (with at least ``"step"``) becomes ``trainer_state.json``, written last.
    """
    from .distributed import gathered_optimizer_state

    step = trainer_state["step"]
    refuse_nonfinite(model, env, output_dir, step)
    final = output_dir / f"checkpoint-{step}"
    tmp = temp_directory(final)
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    env.barrier()
    save_model_adapter(model, tmp / ADAPTER_DIR, env)
    opt_state = gathered_optimizer_state(optimizer)  # collective under FSDP
    torch.save(rng_state(), tmp / f"rng-rank{env.rank}.pt")
    if env.is_main:
        torch.save(opt_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
    env.barrier()
    if env.is_main:
        write_json(tmp / STATE_NAME, trainer_state, sort_keys=True)
        commit_dir(tmp, final)
    env.barrier()
    return final


def refuse_nonfinite(model: nn.Module, env: DistEnv, output_dir: Path, step: int) -> None:
    """Raise :class:`NonFiniteError` (on every rank) if an adapter tensor of ``model`` holds a
    NaN or inf, before anything of ``checkpoint-<step>`` is written: a NaN checkpoint would
    replace a good one under ``keep_checkpoints``, and resuming from it cannot recover."""
    inner = unwrap(model)
    tensors = trainable_tensors(inner)
    if find_injection(inner) is not None:
        tensors.update(adapter_state_dict(inner))
    bad = nonfinite_names(tensors)
    if env.all_reduce_sum(torch.tensor([float(len(bad))])).item() == 0:
        return
    good = latest_checkpoint(output_dir)
    raise NonFiniteError(
        f"refusing to write checkpoint-{step}: adapter tensors hold NaN/inf values "
        f"(e.g. {bad[:3] or 'on another rank'}); the last good checkpoint is "
        f"{good if good is not None else 'none (none was written)'}. Resume from it with a "
        "lower learning rate, or check the data and the loss"
    )


def load_training_state(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int,
) -> bool:
    """Restore optimizer (re-sharded under FSDP), scheduler, scaler and this rank's RNG from
    ``checkpoint``. Returns False when the checkpoint has no RNG file for ``rank``."""
    from .distributed import shard_optimizer_state

    opt_state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(shard_optimizer_state(optimizer, opt_state))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    if scaler is not None and (checkpoint / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(checkpoint / "scaler.pt", weights_only=True))
    rng = checkpoint / f"rng-rank{rank}.pt"
    if not rng.is_file():
        return False
    set_rng_state(torch.load(rng, weights_only=True))
    return True
