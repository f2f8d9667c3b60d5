"""Process groups, DDP / FSDP2 wrapping, and gathering sharded adapter and optimizer state.

Launch with ``torchrun --nproc_per_node N train.py`` (or ``accelerate launch``, which sets the same
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables). The
process group uses ``nccl`` on CUDA and ``gloo`` on the CPU. A group that already exists (made by
the caller or by accelerate) is reused. The Trainer leaves the group open when it returns, so one
script can run several Trainers (re-creating a destroyed group under torchrun can hang); call
``torch.distributed.destroy_process_group()`` at the end of the script.

* **DDP** wraps the model with ``DistributedDataParallel``; gradients are averaged over ranks.
  ``broadcast_buffers`` stays on, so persistent buffers (FlyLoRA's selection bias) follow rank 0
  (each forward starts from rank 0's values; the other ranks' bias updates are discarded).
* **FSDP** applies torch's FSDP2 ``fully_shard`` to every module whose class is listed in the
  model's ``_no_split_modules`` (the decoder layers of a transformers model), then to the root;
  parameters become ``DTensor`` shards of dim 0. The base stays frozen and only the adapter
  parameters get gradients. Saving gathers full tensors (:func:`full_tensors`), so an FSDP
  adapter file equals a single-process one; optimizer state is saved gathered as well and is
  re-sharded on load (:func:`shard_optimizer_state`).
* With either, adapter buffers are broadcast from rank 0 after each optimizer step
  (:func:`broadcast_adapter_buffers`), so every rank ends with rank 0's FlyLoRA bias.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launcher_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun / accelerate launch, or 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# Set by MPI launchers: accelerate's simple launcher with an MPI hostfile does run N processes.
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_warned_dropped_processes = False


def dropped_processes_message() -> str | None:
    """Why this run looks like ``accelerate launch --num_processes N`` that started one process.

    Without ``--multi_gpu`` (and always with ``--cpu``), ``accelerate launch`` takes its
    single-process launcher: it runs the script once, with no ``WORLD_SIZE``/``RANK``, but still
    sets ``MASTER_ADDR``/``MASTER_PORT`` when more than one process (or machine) was requested
    (``accelerate.utils.launch.prepare_simple_launcher_cmd_env``). ``ACCELERATE_DYNAMO_BACKEND``
    marks that launcher. Returns ``None`` for any other start (plain python, torchrun, MPI).
    """
    env = os.environ
    if "ACCELERATE_DYNAMO_BACKEND" not in env or "MASTER_ADDR" not in env:
        return None
    if launcher_world_size() > 1 or "RANK" in env or any(v in env for v in _MPI_SIZE_VARS):
        return None
    return (
        "accelerate launch was asked for more than one process (MASTER_ADDR is set) but started "
        "one: WORLD_SIZE is unset, so this process trains alone. Add --multi_gpu (it also runs "
        "CPU-only, without --cpu) or use torchrun --nproc_per_node N"
    )


def warn_if_processes_dropped() -> bool:
    """Warn once per process (``RuntimeWarning``) when :func:`dropped_processes_message` applies.

    Returns:
        Whether the condition holds (also on calls after the first, which do not warn again).
    """
    global _warned_dropped_processes
    message = dropped_processes_message()
    if message is not None and not _warned_dropped_processes:
        _warned_dropped_processes = True
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message is not None


def _dtensor_cls() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def is_dtensor(value: Any) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(value, cls)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A ``DTensor`` gathered to a plain tensor (a collective: every rank must call it); any
    other tensor unchanged."""
    return value.full_tensor() if is_dtensor(value) else value


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`full_tensor` of every value, detached, on the CPU (same key order on all ranks)."""
    return {k: full_tensor(v.detach()).cpu() for k, v in tensors.items()}


@dataclass
class DistEnv:
    """Where this process runs: ``mode`` is ``"none"``, ``"ddp"`` or ``"fsdp"``."""

    mode: str
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` over ranks (in place on a float64 copy, returned on the CPU)."""
        out = values.detach().to(device=self.device, dtype=torch.float64)
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.cpu()


def _pick_device(requested: str | None, local_rank: int, model: nn.Module) -> torch.device:
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    if requested is not None:
        return torch.device(requested)
    if launcher_world_size() > 1 or "LOCAL_RANK" in os.environ:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def setup(mode: str, device: str | None, model: nn.Module) -> DistEnv:
    """Resolve ``mode`` (``"auto"``: DDP under a multi-process launcher, else ``"none"``), start
    the process group when needed, and pick the device. With a world size of 1 it warns when
    ``accelerate launch`` dropped requested processes (:func:`warn_if_processes_dropped`).

    Raises:
        ValueError: ``"ddp"``/``"fsdp"`` without the launcher's environment variables.
    """
    world = launcher_world_size()
    if world == 1:
        warn_if_processes_dropped()
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if mode == "none":
        if world > 1:
            raise ValueError(
                f"TrainConfig.distributed='none' but WORLD_SIZE={world}: every process would "
                "train the same model alone. Use distributed='auto', 'ddp' or 'fsdp'"
            )
        return DistEnv("none", 0, 1, 0, _pick_device(device, 0, model))
    missing = [v for v in LAUNCH_VARS if v not in os.environ]
    if missing:
        raise ValueError(
            f"TrainConfig.distributed={mode!r} needs a launcher (torchrun or accelerate launch); "
            f"the environment lacks {missing}"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = _pick_device(device, local_rank, model)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=30)}
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            kwargs["device_id"] = dev
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
        owns = True
    return DistEnv(mode, dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def _layer_class_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def wrap(model: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """The model to train: itself (single process), a DDP wrapper, or itself sharded by FSDP2."""
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    if env.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layer_names = _layer_class_names(model)
        for module in list(model.modules()):
            if module is not model and type(module).__name__ in layer_names:
                fully_shard(module)
        fully_shard(model)
        return model
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@contextlib.contextmanager
def skip_gradient_sync(model: nn.Module, env: DistEnv, skip: bool) -> Iterator[None]:
    """Accumulate gradients locally (no all-reduce / reduce-scatter) inside the block when
    ``skip``: DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``."""
    if not skip or env.mode == "none":
        yield
    elif env.mode == "ddp":
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def broadcast_adapter_buffers(model: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's floating-point adapter buffers (FlyLoRA's selection bias) to every rank.

    Called after each optimizer step. FSDP2 does not manage buffers, so without it each rank
    would update its own bias from its own tokens and drift apart; DDP broadcasts buffers before
    each forward, but the updates of the last forward would still differ at the end of a run.
    """
    if env.mode == "none":
        return
    from ..core.inject import find_injection

    inj = find_injection(model)
    if inj is None:
        return
    for layer in inj.layers.values():
        for buf in layer.adapter.buffers():
            if buf.is_floating_point():
                dist.broadcast(buf, src=0)


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every ``DTensor`` state gathered to a full CPU tensor
    (collective under FSDP), so the saved file does not depend on the world size."""
    sd = optimizer.state_dict()
    state = {
        idx: {k: full_tensor(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for idx, s in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`gathered_optimizer_state` for ``optimizer``'s parameters: state
    tensors of ``DTensor`` parameters become shards laid out like their parameter (collective)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for idx, s in sd["state"].items():
        param = params[int(idx)]
        if not is_dtensor(param):
            state[idx] = s
            continue
        from torch.distributed.tensor import distribute_tensor

        state[idx] = {
            k: distribute_tensor(v.to(param.device), param.device_mesh, param.placements)
            if isinstance(v, torch.Tensor) and v.shape == param.shape
            else v
            for k, v in s.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}
