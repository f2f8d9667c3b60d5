"""One run per output directory: what a run is, and the checks before a run writes anything.

A run's *identity* is what makes its checkpoints meaningful for it: the training data (a
fingerprint) and the adapter (method and config). It is saved in every checkpoint
(``trainer_state.json``, key ``"identity"``) and in ``<output_dir>/run_identity.json``.

At the start of ``Trainer.train()``:

* ``resume=None`` into a directory that already holds files of a run (checkpoints, logs, an
  adapter, ...) is refused, unless ``overwrite=True``, which first deletes them (only files this
  library writes: a folder holding anything else is refused, so a mistyped ``output_dir`` such
  as the home directory is never emptied).
* Resuming (``resume="auto"`` or a path) compares the checkpoint's identity with this run's:
  other data or another adapter config is an error naming the field; other settings that change
  the maths (learning rate, schedule, ...) are a warning.
* ``resume="auto"`` without a checkpoint into a directory holding another run's
  ``run_identity.json`` or a finished run's ``adapter/`` is refused too: starting afresh would
  replace that run's adapter and logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..core.inject import find_injection
from ..peft_bridge import is_peft_model
from .checkpoint import ADAPTER_DIR, list_checkpoints
from .config import TrainConfig

IDENTITY_NAME = "run_identity.json"


class RunDirError(ValueError):
    """The output directory holds another run (or files that are not a run's): the message names
    what differs and what to do (``overwrite=True`` / ``--overwrite``, or another directory)."""


# Settings that may differ between a run and its resumption without a warning.
FREE_ON_RESUME = {
    "resume", "progress", "tensorboard", "report_to", "output_dir", "num_workers", "log_every",
    "eval_every", "save_every", "keep_checkpoints", "max_steps", "num_epochs", "device",
    "distributed", "find_unused_parameters", "nonfinite", "max_skipped_steps", "overwrite",
}  # fmt: skip

# What frame-peft writes into a run directory (the trainer, `frame-peft train/eval/analyze`).
_RUN_FILES = {
    ADAPTER_DIR, "log.jsonl", "orders.jsonl", "scans.jsonl", "train_config.json", IDENTITY_NAME,
    "tensorboard", "recipe.yaml", "data.json", "run.json", "eval.json", "eval.md",
    "lm_eval.json", "analysis",
}  # fmt: skip
# PEFT config fields that do not define the adapter's maths: where the base model was loaded
# from, PEFT's own mode flag and version, and AdaLoRA's total_step (the run length, which may
# grow on resume).
_PEFT_NOT_IDENTITY = {
    "base_model_name_or_path", "revision", "inference_mode", "total_step", "peft_version",
}  # fmt: skip
_SWAP_RE = re.compile(r"^(checkpoint-\d+(\.deleted)?|adapter)(\.tmp|\.old)?$")
_ATOMIC_TEMP_RE = re.compile(r"^\.(.+)\.[^.]+$")  # atomic_write_bytes' temp files: .<name>.<rand>


def _library_written(name: str) -> bool:
    if name in _RUN_FILES or _SWAP_RE.match(name):
        return True
    m = _ATOMIC_TEMP_RE.match(name)
    return m is not None and m.group(1) in _RUN_FILES


def _plain(value: Any) -> Any:
    """A JSON-comparable copy: tensors and tuples as lists, sets sorted."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def dataset_fingerprint(dataset: Any, samples: int = 64) -> str:
    """sha256 over the dataset's length and ``samples`` evenly spaced items (all of a small one).

    Cheap on any dataset size; it tells apart datasets of other sizes or other content at the
    sampled positions. Pass an exact fingerprint to the Trainer (``data_fingerprint=``) when the
    data has a cheaper exact description (``frame-peft train`` hashes the recipe's data section
    and the split records of ``data.json``).
    """
    n = len(dataset)
    if n <= samples:
        indices: list[int] = list(range(n))
    else:
        indices = sorted({round(i * (n - 1) / (samples - 1)) for i in range(samples)})
    h = hashlib.sha256(f"items={n}\n".encode())
    for i in indices:
        h.update(json.dumps(_plain(dataset[i]), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def adapter_identity(model: nn.Module) -> dict[str, Any]:
    """The adapter's method and config as plain JSON values (frame-peft or PEFT)."""
    inj = find_injection(model)
    if inj is not None:
        return _plain(inj.config.to_dict())
    if is_peft_model(model):
        cfg = model.peft_config[getattr(model, "active_adapter", "default")]
        fields = {k: v for k, v in cfg.to_dict().items() if k not in _PEFT_NOT_IDENTITY}
        return _plain({"method": f"peft:{cfg.peft_type}", **fields})
    return {}


def run_identity(model: nn.Module, dataset: Any, data_fingerprint: str | None) -> dict[str, Any]:
    """``{"data": <fingerprint>, "adapter": {...}}`` of a run (saved with every checkpoint)."""
    data = data_fingerprint if data_fingerprint is not None else dataset_fingerprint(dataset)
    return {"data": data, "adapter": adapter_identity(model)}


def _what_to_do(out: Path) -> str:
    return (
        f"pass overwrite=True (`frame-peft train ... --overwrite`) to delete it and start afresh "
        f"in {out}, or choose another output_dir"
    )


def check_identity(saved: dict[str, Any] | None, current: dict[str, Any], where: Path) -> None:
    """Raise if ``where`` (a checkpoint or run directory) was trained on other data or with
    another adapter config than this run; nothing to check when it recorded no identity."""
    if not saved:
        return
    out = where.parent if where.name.startswith("checkpoint-") else where
    if saved.get("data") != current["data"]:
        raise RunDirError(
            f"{where} was trained on other data (fingerprint {str(saved.get('data'))[:12]}..., "
            f"this run's data {current['data'][:12]}...): resuming would mix two runs; "
            + _what_to_do(out)
        )
    old, new = saved.get("adapter") or {}, current["adapter"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise RunDirError(
            f"{where} was trained with another adapter config ({diffs}): resuming would load "
            "weights of another model; " + _what_to_do(out)
        )


def check_resume_state(
    state: dict[str, Any], config: TrainConfig, identity: dict[str, Any], global_batch: int,
    path: Path,
) -> None:  # fmt: skip
    """Refuse to resume ``path`` with another data position, data or adapter; warn about other
    changed settings (learning rate, schedule, ...): the run then differs from an
    uninterrupted one but is still one run."""
    if state["global_batch_size"] != global_batch:
        raise RunDirError(
            f"cannot resume {path}: it was trained with a global batch of "
            f"{state['global_batch_size']} sequences, this run has {global_batch} "
            "(per_device_batch_size x gradient_accumulation_steps x world size), so the data "
            "position would not match"
        )
    check_identity(state.get("identity"), identity, path)
    saved = state.get("config", {})
    changed = sorted(
        k for k, v in config.to_dict().items()
        if k in saved and saved[k] != v and k not in FREE_ON_RESUME
    )  # fmt: skip
    if changed:
        warnings.warn(
            f"resuming {path} with changed settings {changed}; the run will not match an "
            "uninterrupted one",
            stacklevel=3,
        )


def run_files(out: Path) -> list[str]:
    """Names of the entries of ``out`` that frame-peft writes (empty if ``out`` is missing)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if _library_written(p.name))


def check_clearable(out: Path) -> None:
    """Raise ``ValueError`` if ``out`` holds anything frame-peft does not write (every rank
    checks before rank 0 clears, so all of them raise alike)."""
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if not _library_written(p.name))
    if foreign:
        raise RunDirError(
            f"overwrite=True would delete {out}, but it holds files frame-peft did not write "
            f"({foreign[:8]}{' ...' if len(foreign) > 8 else ''}); it may not be a run "
            "directory. Remove them yourself or choose another output_dir"
        )


def clear_output_dir(out: Path) -> list[str]:
    """Delete what an earlier run wrote in ``out`` (``overwrite=True``); return the names.

    Refuses (``ValueError``) when ``out`` holds anything frame-peft does not write: the folder
    may not be a run directory at all (a mistyped path, the home directory), and its other files
    are the user's.
    """
    check_clearable(out)
    removed = run_files(out)
    for name in removed:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def check_fresh_start(out: Path, config: TrainConfig, identity: dict[str, Any]) -> None:
    """Refuse to start a run from step 0 in ``out`` when that would replace another run's files.

    Called when no checkpoint is resumed: with ``resume=None`` any earlier run's files are
    refused; with ``resume="auto"`` (no checkpoint there) the files of an unfinished run of the
    same identity are taken over, those of another run or of a finished run are refused.
    """
    present = run_files(out)
    if not present:
        return
    if config.resume is None:
        raise RunDirError(
            f"{out} holds files of an earlier run ({present[:6]}"
            f"{' ...' if len(present) > 6 else ''}) and resume=None starts afresh: pass "
            "resume='auto' to continue that run, or " + _what_to_do(out)
        )
    saved_path = out / IDENTITY_NAME
    if saved_path.is_file():
        check_identity(json.loads(saved_path.read_text()), identity, out)
    if (out / ADAPTER_DIR).exists() and not list_checkpoints(out):
        raise RunDirError(
            f"{out} holds a finished run's adapter/ but no checkpoint to resume from; starting "
            "afresh would replace it: " + _what_to_do(out)
        )


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    """``<output_dir>/run_identity.json`` (atomic)."""
    from .._files import write_json

    write_json(out / IDENTITY_NAME, identity, sort_keys=True)


__all__ = [
    "FREE_ON_RESUME",
    "IDENTITY_NAME",
    "RunDirError",
    "adapter_identity",
    "check_clearable",
    "check_fresh_start",
    "check_identity",
    "check_resume_state",
    "clear_output_dir",
    "dataset_fingerprint",
    "run_files",
    "run_identity",
    "write_identity",
]
