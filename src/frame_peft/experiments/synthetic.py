"""The shared synthetic set-up of the controlled experiments: a frozen random layer and teachers.

**Base.** :class:`FrozenBase` is one frozen ``nn.Linear`` ``proj`` (d × d, no bias) with weight
``W0 ~ N(0, 1/d)`` entrywise, the only injection target. d must be even (the chirp transform
needs even lengths).

**Tasks.** Task t has an order ``a_t``, a teacher update and an input distribution::

    ΔW_t = Re( T_{a_t}^H · B_t A_t · T_{a_t} ),   B_t (d, r_t), A_t (r_t, d) ~ N(0, 1)
    x    = z + μ_t,   z ~ N(0, I_d),   μ_t = m · q_t   (q_t orthonormal directions)
    y    = (W0 + ΔW_t) x

T is the teachers' transform (the chirp surrogate ``U_a`` by default, FRAME's own; or the exact
FrFT), applied to the factors exactly as FRAME's factor path does. Each ΔW_t is rescaled to
Frobenius norm ``teacher_scale · √d`` (W0 has norm ≈ √d), so every task is equally hard in norm.
ΔW_t has rank r_t *in its own domain* but spatial rank up to 2·r_t when a_t ∉ {0} (the real part
adds the mirrored term). The task means make tasks separable by a linear router (choice: the
mean-to-noise ratio is ``m`` along the mean direction); they are otherwise identical.

**Metric.** On held-out inputs X_t (n × d) of task t, with ``ΔY = X ΔWᵀ`` the teacher's outputs and
``ΔŶ = model(X) − X W0ᵀ`` the adapter's, the relative error is ``‖ΔŶ − ΔY‖_F / ‖ΔY‖_F``.

**Floors (Eckart–Young).** Any *fixed* update of spatial rank ≤ q (one LoRA, or a mixture whose
gates are constant over the task) gives ``ΔŶ`` of rank ≤ q, so its error is at least
``sqrt(Σ_{i>q} σ_i² / Σ σ_i²)`` with σ the singular values of the teacher's ``ΔY`` on the same
held-out inputs: :func:`rank_floor` (exact for the metric above, not an estimate). A mixture whose
gates vary from token to token inside a task is not strictly bound by it. :func:`spectral_floor`
is the analogous bound for FourierMoE (best fit with the k rings that capture most of the
teacher's 2-D spectrum, in the plain Frobenius norm: an approximation of the metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import FourierMoEConfig, FrameConfig, LoRAConfig, MoELoRAConfig
from ..core.config import AdapterConfig
from ..transforms import get_transform
from ..transforms.by_name import TRANSFORMS

#: The methods compared, in table order, with what each is.
METHOD_INFO = {
    "frame": "FRAME as shipped (FrameConfig defaults)",
    "frame-gradient": "FRAME, orders by the order optimizer only (the paper's description)",
    "frame-scan": "FRAME with the order scan (order_search='scan')",
    "frame-fixed": "FRAME, orders fixed at the spread init (no order learning)",
    "moe-lora": "MoE-LoRA, rank r per expert",
    "moe-lora-2r": "MoE-LoRA, rank 2r per expert (FRAME's per-token FLOPs)",
    "lora": "LoRA, rank k·r",
    "fouriermoe": "FourierMoE",
}
METHODS = tuple(METHOD_INFO)
#: What the experiments compare by default: every method but ``frame``, which is one of the
#: FRAME variants under another name (the shipped default; ``docs/experiments.md`` says which).
DEFAULT_METHODS = tuple(m for m in METHODS if m != "frame")
#: FRAME options each FRAME method fixes.
FRAME_METHODS = {
    "frame": {},
    "frame-gradient": {"order_search": "gradient"},
    "frame-scan": {"order_search": "scan"},
    "frame-fixed": {"order_mode": "fixed"},
}


def _check(cond: bool, name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass
class TaskSpec:
    """The synthetic task set (see the module docstring for the equations).

    Args:
        dim: width d of the frozen layer (even, >= 8).
        task_orders: teacher order a_t of each task, each in [0, 1].
        teacher_rank: r_t, the rank of every teacher in its own domain.
        teacher_transform: ``"chirp"`` (FRAME's default surrogate) or ``"exact"``.
        teacher_scale: ‖ΔW_t‖_F = teacher_scale · √d.
        mean_norm: m = ‖μ_t‖ (task separability for the router), >= 0.
        eval_inputs: held-out inputs per task for the metric.
    """

    dim: int = 64
    task_orders: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)
    teacher_rank: int = 4
    teacher_transform: str = "chirp"
    teacher_scale: float = 0.5
    mean_norm: float = 6.0
    eval_inputs: int = 1024

    def __post_init__(self) -> None:
        self.task_orders = tuple(float(a) for a in self.task_orders)
        _check(self.dim >= 8 and self.dim % 2 == 0, "dim", self.dim, "an even integer >= 8")
        _check(len(self.task_orders) >= 1, "task_orders", self.task_orders, "non-empty")
        _check(
            all(0.0 <= a <= 1.0 for a in self.task_orders),
            "task_orders",
            self.task_orders,
            "orders in [0, 1]",
        )
        _check(len(self.task_orders) <= self.dim, "task_orders", self.task_orders, "<= dim tasks")
        _check(
            1 <= self.teacher_rank <= self.dim // 2,
            "teacher_rank",
            self.teacher_rank,
            "in [1, dim/2]",
        )
        _check(
            self.teacher_transform in TRANSFORMS,
            "teacher_transform",
            self.teacher_transform,
            f"one of {list(TRANSFORMS)}",
        )
        _check(self.teacher_scale > 0, "teacher_scale", self.teacher_scale, "> 0")
        _check(self.mean_norm >= 0, "mean_norm", self.mean_norm, ">= 0")
        _check(self.eval_inputs >= 8, "eval_inputs", self.eval_inputs, ">= 8")


@dataclass
class TaskSet:
    """Built tasks: ``w0`` (d, d), ``teachers`` (T, d, d), ``means`` (T, d), ``eval_x``
    (T, n, d) held-out inputs."""

    spec: TaskSpec
    w0: torch.Tensor
    teachers: torch.Tensor
    means: torch.Tensor
    eval_x: torch.Tensor
    floors_cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_tasks(self) -> int:
        return len(self.spec.task_orders)

    def sample(self, tasks: list[int], n: int, generator: torch.Generator) -> torch.Tensor:
        """Fresh inputs (len(tasks), n, d) for the listed tasks."""
        z = torch.randn(len(tasks), n, self.spec.dim, generator=generator)
        return z + self.means[tasks].unsqueeze(1)

    def teacher_delta(self, tasks: list[int], x: torch.Tensor) -> torch.Tensor:
        """Teacher outputs ΔY (len(tasks), n, d) for inputs x (len(tasks), n, d)."""
        return torch.einsum("tnd,ted->tne", x, self.teachers[tasks])


def teacher_update(a: float, b: torch.Tensor, a_mat: torch.Tensor, transform: str) -> torch.Tensor:
    """``Re(T_a^H B A T_a)`` (d, d) in float64 through FRAME's factor path (no dense T)."""
    forward, adjoint = get_transform(transform)
    a_t = forward(a_mat.to(torch.complex128), a, dim=-1)
    b_t = adjoint(b.to(torch.complex128), a, dim=-2)
    return b_t.real @ a_t.real - b_t.imag @ a_t.imag


def build_tasks(spec: TaskSpec, seed: int) -> TaskSet:
    """Draw W0, the teachers, the task means and the held-out inputs from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    d, r = spec.dim, spec.teacher_rank
    w0 = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    teachers = []
    for a in spec.task_orders:
        b = torch.randn(d, r, generator=g, dtype=torch.float64)
        a_mat = torch.randn(r, d, generator=g, dtype=torch.float64)
        dw = teacher_update(a, b, a_mat, spec.teacher_transform)
        teachers.append(dw * (spec.teacher_scale * math.sqrt(d) / dw.norm()))
    q, _ = torch.linalg.qr(torch.randn(d, len(spec.task_orders), generator=g, dtype=torch.float64))
    means = spec.mean_norm * q.T
    eval_x = (
        torch.randn(len(spec.task_orders), spec.eval_inputs, d, generator=g)
        + means.float()[:, None]
    )
    return TaskSet(spec, w0.float(), torch.stack(teachers).float(), means.float(), eval_x)


class FrozenBase(nn.Module):
    """The frozen random base: ``proj(x) = x W0ᵀ`` (the injection target is ``"proj"``)."""

    def __init__(self, w0: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(w0)
        self.proj.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@dataclass
class Budget:
    """The matched budget: mixtures use E experts, top-k, rank r per expert.

    LoRA gets rank k·r (the same factor parameters per token as k experts; it has no router),
    MoE-LoRA-2r rank 2r per expert (the spatial rank, and per-token FLOPs, of a FRAME expert),
    FourierMoE n = ⌈r·(d_in + d_out)/2⌉ complex coefficients per expert (2n real numbers, the size
    of a rank-r expert; its config default). FRAME adds E order scalars. The exact active counts
    are measured with ``fp.count_parameters`` and reported.
    """

    num_experts: int = 8
    top_k: int = 2
    expert_rank: int = 2

    def __post_init__(self) -> None:
        _check(self.num_experts >= 1, "num_experts", self.num_experts, ">= 1")
        _check(1 <= self.top_k <= self.num_experts, "top_k", self.top_k, "in [1, num_experts]")
        _check(self.expert_rank >= 1, "expert_rank", self.expert_rank, ">= 1")


def adapter_config(method: str, budget: Budget, **frame_kwargs: object) -> AdapterConfig:
    """The config of ``method`` at ``budget`` (dropout 0: the tasks are noise-free regressions).

    ``frame_kwargs`` (any FrameConfig field: ``transform``, ``order_mode``, ``init_orders``,
    ``scan_*``, ...) apply to the FRAME methods only, on top of what the method fixes.
    """
    common = {"target_modules": ["proj"], "dropout": 0.0}
    mix = {"num_experts": budget.num_experts, "top_k": budget.top_k, "rank": budget.expert_rank}
    if method in FRAME_METHODS:
        return FrameConfig(**common, **mix, **{**FRAME_METHODS[method], **frame_kwargs})
    if frame_kwargs:
        raise ValueError(f"FRAME options {sorted(frame_kwargs)} given for method {method!r}")
    if method not in CONTROL_CONFIGS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    config_cls, fields = CONTROL_CONFIGS[method]
    return config_cls(**common, **fields(budget))


#: The controls: config class and the fields each takes from the budget.
CONTROL_CONFIGS: dict[str, tuple[type[AdapterConfig], Callable[[Budget], dict[str, int]]]] = {
    "moe-lora": (MoELoRAConfig, lambda b: _mixture_fields(b, b.expert_rank)),
    "moe-lora-2r": (MoELoRAConfig, lambda b: _mixture_fields(b, 2 * b.expert_rank)),
    "lora": (LoRAConfig, lambda b: {"rank": b.top_k * b.expert_rank}),
    "fouriermoe": (FourierMoEConfig, lambda b: _mixture_fields(b, b.expert_rank)),
}


def _mixture_fields(budget: Budget, rank: int) -> dict[str, int]:
    return {"num_experts": budget.num_experts, "top_k": budget.top_k, "rank": rank}


def relative_errors(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per task ``‖pred_t − target_t‖_F / ‖target_t‖_F`` for (T, n, d) tensors."""
    num = (pred - target).flatten(1).norm(dim=1)
    return (num / target.flatten(1).norm(dim=1)).tolist()


def rank_floor(tasks: TaskSet, rank: int) -> list[float]:
    """Per task, the least relative error any fixed update of spatial rank ≤ ``rank`` can reach
    on the held-out inputs (Eckart–Young on the teacher's outputs ΔY)."""
    key = ("rank", rank)
    if key not in tasks.floors_cache:
        dy = tasks.teacher_delta(list(range(tasks.num_tasks)), tasks.eval_x).double()
        out = []
        for t in range(tasks.num_tasks):
            s2 = torch.linalg.svdvals(dy[t]) ** 2
            out.append(float((s2[rank:].sum() / s2.sum()).sqrt()))
        tasks.floors_cache[key] = out
    return tasks.floors_cache[key]


def spectral_floor(tasks: TaskSet, positions: torch.Tensor, top_k: int) -> list[float]:
    """FourierMoE's floor per task in the Frobenius norm: 1 − (energy of ΔW_t's 2-D spectrum at
    the positions of the ``top_k`` best experts) / (total energy), square-rooted.

    ``positions`` (E, n, 2) holds FourierMoE's centered frequency labels (u, v) per expert. Each
    half-plane position (u, v) carries the conjugate pair {(u, v), (−u, −v)}, so it captures
    ``2|Ŵ[u, v]|²`` of the energy ``Σ|Ŵ|²`` (the positions of different experts are distinct, so
    their basis functions are orthogonal and energies add).
    """
    spec = torch.fft.fft2(tasks.teachers.double())
    d_out, d_in = tasks.teachers.shape[1:]
    u = positions[..., 0].long() % d_out
    v = positions[..., 1].long() % d_in
    out = []
    for t in range(tasks.num_tasks):
        power = spec[t].abs() ** 2
        per_expert = 2 * power[u, v].sum(dim=1)  # (E,)
        captured = per_expert.topk(min(top_k, len(per_expert))).values.sum()
        out.append(float((1 - captured / power.sum()).clamp_min(0).sqrt()))
    return out
