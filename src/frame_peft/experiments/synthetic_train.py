"""The training loop of the controlled experiments, and hooks that fix or delay routing.

:func:`train_adapter` injects a method into a fresh :class:`~.synthetic.FrozenBase`, trains it on
fresh samples of the chosen tasks and evaluates it on the held-out inputs. FRAME configs with
``order_search="scan"`` get the order scan (:func:`frame_peft.scan_orders`) at the steps
:func:`frame_peft.scan_steps` gives, on batches drawn from a generator of their own (the training
inputs are the same with and without it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.config import AdapterConfig
from .synthetic import FrozenBase, TaskSet, _check, relative_errors


@dataclass
class TrainConfig:
    """The training loop shared by all methods.

    Each step draws ``batch_per_task`` fresh inputs of every trained task, minimises the relative
    squared error ``Σ‖ΔŶ − ΔY‖² / Σ‖ΔY‖²`` plus ``fp.aux_loss`` with ``fp.build_optimizer`` (AdamW
    on the factors at ``lr``, the separate AdamW on FRAME's order logits at ``order_lr``; each set
    clipped to grad norm 1, the library default), linear warm-up over ``warmup_fraction`` of the
    steps then cosine decay to 0, the same shape for both sets. ``order_freeze_steps`` keeps the
    order learning rate at 0 for the first steps (warm-up with fixed orders).
    """

    steps: int = 3000
    batch_per_task: int = 64
    lr: float = 1e-2
    order_lr: float = 1e-3
    warmup_fraction: float = 0.05
    order_freeze_steps: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", self.steps, ">= 1")
        _check(self.batch_per_task >= 1, "batch_per_task", self.batch_per_task, ">= 1")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(self.order_lr >= 0, "order_lr", self.order_lr, ">= 0")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction", self.warmup_fraction, "in [0, 1)")
        _check(
            0 <= self.order_freeze_steps <= self.steps,
            "order_freeze_steps",
            self.order_freeze_steps,
            "in [0, steps]",
        )
        _check(self.log_every >= 1, "log_every", self.log_every, ">= 1")


@dataclass
class RunResult:
    """One trained adapter. Per-task lists follow the ``task_ids`` it was trained on."""

    task_ids: list[int]
    errors: list[float]
    active_parameters: int
    gates: list[list[float]] | None = None  # per task, mean renormalised gate of each expert
    orders: list[float] | None = None  # FRAME: final orders (E,)
    initial_orders: list[float] | None = None
    order_history: list[list[float]] = field(default_factory=list)  # FRAME: (logged steps, E)
    loss_history: list[float] = field(default_factory=list)
    logged_steps: list[int] = field(default_factory=list)
    scans: list[dict[str, Any]] = field(default_factory=list)  # FRAME scan: one per scan


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = int(cfg.warmup_fraction * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _frame_orders(model: nn.Module) -> list[float] | None:
    from .. import orders

    found = orders(model)
    return [round(float(a), 6) for a in found["proj"]] if found else None


def train_adapter(
    tasks: TaskSet,
    config: AdapterConfig,
    train: TrainConfig,
    task_ids: list[int],
    seed: int,
    prepare: Callable[[nn.Module], None] | None = None,
    on_step: Callable[[nn.Module, int], None] | None = None,
) -> RunResult:
    """Inject ``config`` into a fresh :class:`FrozenBase`, train on ``task_ids``, evaluate.

    Seeds: the adapter initialisation uses ``torch.manual_seed(seed)``, the training inputs a
    generator seeded with ``seed + 1``; held-out inputs come from the task set. ``prepare(model)``
    runs after injection, before the optimizer is built (e.g. to fix and freeze a router);
    ``on_step(model, step)`` runs at the start of every step (e.g. :func:`delayed_router`).
    """
    import frame_peft as fp

    torch.manual_seed(seed)
    model = fp.inject(FrozenBase(tasks.w0), config)
    if prepare is not None:
        prepare(model)
    opt = fp.build_optimizer(model, lr=train.lr, order_lr=train.order_lr)
    base_lrs = [group["lr"] for group in opt.param_groups]
    gen = torch.Generator().manual_seed(seed + 1)
    result = RunResult(task_ids, [], fp.count_parameters(model)["active_per_token"])
    result.initial_orders = _frame_orders(model)
    scan_at = []
    if getattr(config, "order_search", None) == "scan":
        scan_at = fp.scan_steps(list(config.scan_at), train.steps)
    for step in range(train.steps):
        if on_step is not None:
            on_step(model, step)
        if step in scan_at:
            result.scans.append(_scan(model, tasks, task_ids, train, opt, step, seed, scan_at))
        factor = _lr_factor(step, train)
        for group, base in zip(opt.param_groups, base_lrs, strict=True):
            frozen = group.get("name") == "order" and step < train.order_freeze_steps
            group["lr"] = 0.0 if frozen else base * factor
        x = tasks.sample(task_ids, train.batch_per_task, gen)
        task_loss = _loss(model, tasks, task_ids, x)
        loss = task_loss + fp.aux_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % train.log_every == 0 or step == train.steps - 1:
            result.logged_steps.append(step)
            result.loss_history.append(round(float(task_loss.detach()), 6))
            current = _frame_orders(model)
            if current is not None:
                result.order_history.append(current)
    result.errors, result.gates = evaluate(model, tasks, task_ids)
    result.orders = _frame_orders(model)
    return result


def _loss(model: nn.Module, tasks: TaskSet, task_ids: list[int], x: torch.Tensor) -> torch.Tensor:
    target = tasks.teacher_delta(task_ids, x)
    pred = model(x) - x @ tasks.w0.T
    return (pred - target).pow(2).sum() / target.pow(2).sum()


def _scan(model, tasks, task_ids, train, opt, step: int, seed: int, steps: list[int]) -> dict:
    """One order scan on ``scan_batches`` fresh batches of the trained tasks (own generator)."""
    import frame_peft as fp

    from ..core.inject import require_injection

    inj_config = require_injection(model).config
    gen = torch.Generator().manual_seed(seed * 7919 + 104729 + step)
    batches = [tasks.sample(task_ids, train.batch_per_task, gen)
               for _ in range(inj_config.scan_batches)]  # fmt: skip
    per_batch = math.ceil(inj_config.scan_tokens / inj_config.scan_batches)
    report = fp.scan_orders(
        model, batches, loss_fn=lambda m, x: _loss(m, tasks, task_ids, x), optimizer=opt,
        first=step == steps[0], tokens_per_batch=per_batch, step=step,
    )  # fmt: skip
    experts = report.modules[0].experts if report.modules else []
    return {
        "step": step,
        "first": report.first,
        "orders_before": [round(e.order_before, 6) for e in experts],
        "orders_after": [round(e.order_after, 6) for e in experts],
        "best_orders": [round(e.best_order, 6) for e in experts],
        "scores_best": [round(e.score_best, 4) for e in experts],
        "scores_before": [round(e.score_before, 4) for e in experts],
        "jumped": [e.jumped for e in experts],
    }


def evaluate(
    model: nn.Module, tasks: TaskSet, task_ids: list[int]
) -> tuple[list[float], list[list[float]] | None]:
    """Relative errors on the held-out inputs of ``task_ids`` and, for mixtures, the mean
    renormalised gate of every expert per task (rows sum to 1), read through a routing observer."""
    from .. import routing_context
    from ..core.inject import find_injection

    seen: list[torch.Tensor] = []
    remove = find_injection(model).state.add_observer(
        lambda name, routing, mask, ids: seen.append(routing.gates.detach())
    )
    x = tasks.eval_x[task_ids]
    try:
        with torch.no_grad(), routing_context(task_ids=torch.tensor(task_ids)):
            pred = model(x) - x @ tasks.w0.T
    finally:
        remove()
    errors = [round(e, 6) for e in relative_errors(pred, tasks.teacher_delta(task_ids, x))]
    if not seen:
        return errors, None
    gates = seen[0].reshape(len(task_ids), x.shape[1], -1).mean(dim=1)
    return errors, [[round(float(g), 6) for g in row] for row in gates]


def task_router(tasks: TaskSet, expert_tasks: list[int], sharpness: float = 10.0):
    """A ``prepare`` hook that fixes the router to the task means and freezes it: expert e's
    router row is ``sharpness · μ_{expert_tasks[e]} / ‖μ‖``, so the experts assigned to a task
    share its logit (equal gates) and win whenever the input's mean is that task's (oracle
    routing)."""

    def prepare(model: nn.Module) -> None:
        from .. import adapted_layers

        router = adapted_layers(model)["proj"].adapter.router
        rows = tasks.means[expert_tasks]
        with torch.no_grad():
            router.weight.copy_(sharpness * rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12))
        router.weight.requires_grad_(False)

    return prepare


def delayed_router(steps: int) -> Callable[[nn.Module, int], None]:
    """An ``on_step`` hook that holds routing back for the first ``steps`` steps: the router stays
    frozen at its random initialisation (N(0, 0.02), so its logits are small) and is dense (every
    expert gets its softmax gate, about 1/E each), so all experts train on all tasks before any
    routing decision; from step ``steps`` on the router is top-k and learned as usual. A frozen
    router gets no gradient, so the optimizer skips it (no update, no weight decay)."""
    saved: dict[str, int | None] = {}

    def on_step(model: nn.Module, step: int) -> None:
        from .. import adapted_layers

        router = adapted_layers(model)["proj"].adapter.router
        if step == 0 and steps > 0:
            saved["top_k"] = router.top_k
            router.top_k = None
            router.weight.requires_grad_(False)
        elif step == steps and saved:
            router.top_k = saved.pop("top_k")
            router.weight.requires_grad_(True)

    return on_step
