"""The methods of the layer benchmark on one Linear, and matching their active-parameter budgets.

Every method adapts the single ``proj`` Linear of :class:`OneLayer` (d_in -> d_out, no bias);
PEFT's methods wrap the same module through :func:`frame_peft.peft_baseline`. Each method has a
fixed structure and at most one *budget knob* (a rank, a coefficient count, FlyLoRA's k), chosen
by :func:`match_budgets` so that its active parameters per token, as counted by
:func:`frame_peft.peft_bridge.count_parameters` (``fp.count_parameters`` for frame-peft models,
PEFT's trainable count for PEFT models), are as close as possible to the target: MoE-LoRA's count
at the FRAME default E = 8, k = 2, r = 4, i.e. ``2·r·(d_in + d_out)`` expert parameters plus the
``E·d_in`` router, ``k·r·(d_in + d_out) + E·d_in``.

One row is deliberately not matched: ``peft_lora_rank``, PEFT LoRA at MoE-LoRA's active rank
k·r = 8, the reference of the "FRAME <= 1.25x PEFT LoRA at equal active rank" target.

Counts are taken on the meta device (the way :mod:`frame_peft.accounting` does), so matching needs
no weights; the benchmark then builds the matched methods for real and reports their real counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import frame_peft as fp
from frame_peft.accounting import PeftMethod
from frame_peft.methods.fouriermoe.layer import half_plane_size
from frame_peft.peft_bridge import count_parameters

# The MoE-LoRA / FRAME default budget that every other method is matched to.
EXPERTS, TOP_K, RANK = 8, 2, 4
FLY_RATIO = 4  # FlyLoRA keeps rank = 4·top_k (its defaults r = 32, k = 8)
HMORA_TASK_DIM = 8  # the default 32 makes the task encoder alone (32·d_in) exceed the budget

Config = fp.AdapterConfig | PeftMethod | None


class OneLayer(nn.Module):
    """One bias-free Linear named ``proj``: the module every method adapts."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@dataclass(frozen=True)
class Method:
    """A benchmarked method: ``make(knob)`` gives its config (``None`` for the bare Linear).

    ``knob`` names the budget knob matched by :func:`match_budgets` (``None``: fixed config),
    ``limit(d_in, d_out)`` its largest valid value where there is one; ``structure`` says what
    stays fixed, ``describe(knob)`` is the config column of the table.
    """

    name: str
    label: str
    make: Callable[[int | None], Config]
    knob: str | None = None
    structure: str = ""
    limit: Callable[[int, int], int] | None = None

    @property
    def peft(self) -> bool:
        return isinstance(self.make(1), PeftMethod)

    def describe(self, knob: int | None) -> str:
        cfg = self.make(knob)
        if cfg is None:
            return "frozen W only"
        parts = [self.structure] if self.structure else []
        if self.knob is not None:
            parts.append(f"{self.knob}={knob}")
        return ", ".join(parts)


def _t() -> list[str]:
    return ["proj"]


def _mixture(cls, **kw) -> fp.AdapterConfig:
    return cls(target_modules=_t(), num_experts=EXPERTS, top_k=TOP_K, dropout=0.0, **kw)


def _peft_rank(method: str) -> Callable[[int | None], PeftMethod]:
    """PEFT LoRA / DoRA of rank r with α = 2r (the library's convention) and no dropout."""

    def make(r: int | None) -> PeftMethod:
        kw = {"target_modules": _t(), "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0}
        return PeftMethod(method, kw)

    return make


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("base", "base (frozen Linear)", lambda v: None),
        Method(
            "lora",
            "LoRA",
            lambda v: fp.LoRAConfig(target_modules=_t(), rank=v, dropout=0.0),
            knob="rank",
        ),
        Method(
            "moe_lora",
            "MoE-LoRA",
            lambda v: _mixture(fp.MoELoRAConfig, rank=RANK),
            structure=f"E={EXPERTS} k={TOP_K} r={RANK} (the target budget)",
        ),
        Method(
            "frame_chirp",
            "FRAME (chirp)",
            lambda v: _mixture(fp.FrameConfig, rank=RANK, transform="chirp"),
            structure=f"E={EXPERTS} k={TOP_K} r={RANK}, learned orders",
        ),
        Method(
            "frame_held0",
            "FRAME, all orders held at 0",
            lambda v: _mixture(fp.FrameConfig, rank=RANK, order_mode="fixed", init_orders="zeros"),
            structure=f"E={EXPERTS} k={TOP_K} r={RANK}, every expert at order 0 (as after a scan "
            "that found no better domain): runs as MoE-LoRA",
        ),
        Method(
            "frame_held_half",
            "FRAME, half the orders held at 0",
            lambda v: _mixture(
                fp.FrameConfig,
                rank=RANK,
                order_mode="fixed",
                init_orders=[0.0] * (EXPERTS // 2)
                + [(e + 0.5) / EXPERTS for e in range(EXPERTS // 2)],
            ),
            structure=f"E={EXPERTS} k={TOP_K} r={RANK}, {EXPERTS // 2} experts at order 0 "
            "(rank r, no transform), the rest at fixed orders",
        ),
        Method(
            "frame_exact",
            "FRAME (exact)",
            lambda v: _mixture(fp.FrameConfig, rank=RANK, transform="exact"),
            structure=f"E={EXPERTS} k={TOP_K} r={RANK}, learned orders",
        ),
        Method(
            "fouriermoe",
            "FourierMoE",
            lambda v: _mixture(fp.FourierMoEConfig, num_coefficients=v),
            knob="num_coefficients",
            structure=f"E={EXPERTS} k={TOP_K}",
            limit=lambda i, o: half_plane_size(o, i) // EXPERTS,  # one ring per expert
        ),
        Method(
            "hydralora",
            "HydraLoRA",
            lambda v: fp.HydraLoRAConfig(target_modules=_t(), rank=v, dropout=0.0),
            knob="rank",
            structure="E=3 heads (default), dense router",
        ),
        Method(
            "flylora",
            "FlyLoRA",
            lambda v: fp.FlyLoRAConfig(
                target_modules=_t(), rank=FLY_RATIO * v, top_k=v, dropout=0.0
            ),
            knob="top_k",
            structure=f"rank={FLY_RATIO}·top_k",
        ),
        Method(
            "hmora",
            "HMoRA",
            lambda v: fp.HMoRAConfig.simplified(  # the variant the recorded results measured
                target_modules=_t(),
                num_experts=EXPERTS,
                top_k=TOP_K,
                rank=v,
                task_dim=HMORA_TASK_DIM,
                dropout=0.0,
            ),
            knob="rank",
            structure=f"E={EXPERTS} top_k={TOP_K} task_dim={HMORA_TASK_DIM}",
        ),
        Method("peft_lora", "PEFT LoRA", _peft_rank("lora"), knob="r"),
        Method(
            "peft_lora_rank",
            "PEFT LoRA (equal rank)",
            lambda v: _peft_rank("lora")(TOP_K * RANK),
            structure=f"r = k·r = {TOP_K * RANK}: MoE-LoRA's active rank (not budget-matched)",
        ),
        Method("peft_dora", "PEFT DoRA", _peft_rank("dora"), knob="r"),
        Method(
            "peft_fourierft",
            "PEFT FourierFT",
            lambda v: PeftMethod("fourierft", {"target_modules": _t(), "n_frequency": v}),
            knob="n_frequency",
            structure="scaling=150",
            limit=lambda i, o: i * o,
        ),
    ]
}


def adapt(layer: nn.Module, config: Config) -> nn.Module:
    """``layer`` adapted by ``config``: ``fp.inject``, ``fp.peft_baseline`` or unchanged."""
    if config is None:
        return layer
    if isinstance(config, PeftMethod):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns about custom modules without a task
            return fp.peft_baseline(layer, config.method, **config.kwargs)
    return fp.inject(layer, config)


def build(config: Config, d_in: int, d_out: int, weight: torch.Tensor | None = None) -> nn.Module:
    """A :class:`OneLayer` adapted by ``config``; ``weight`` (d_out, d_in) is shared if given."""
    layer = OneLayer(d_in, d_out)
    if weight is not None:
        layer.proj.weight = nn.Parameter(weight, requires_grad=False)
    layer.requires_grad_(False)  # the base is frozen either way (inject / PEFT freeze it too)
    return adapt(layer, config)


def meta_counts(config: Config, d_in: int, d_out: int) -> dict[str, int]:
    """``{"total", "trainable", "active_per_token"}`` of ``config`` on a meta-device layer."""
    with torch.device("meta"):
        layer = OneLayer(d_in, d_out)
    layer.requires_grad_(False)  # as in build(): the base counts as frozen for every method
    return count_parameters(adapt(layer, config))


def closest_knob(
    count: Callable[[int], int], target: int, lo: int = 1, hi: int | None = None
) -> int:
    """The knob ``lo <= v <= hi`` whose ``count(v)`` is closest to ``target`` (ties: smaller v).

    ``count`` must be strictly increasing. The first guess extrapolates linearly from ``lo`` and
    ``lo + 1``; then it walks until ``count(v) <= target < count(v + 1)`` (or v = hi), so the
    answer is exact for any increasing count, and costs four evaluations when the count is
    affine in the knob.
    """
    hi = hi if hi is not None else 2**62
    if hi < lo:
        raise ValueError(f"empty knob range [{lo}, {hi}]")
    memo: dict[int, int] = {}

    def c(v: int) -> int:
        if v not in memo:
            memo[v] = count(v)
        return memo[v]

    if c(lo) >= target or lo == hi:
        return lo
    slope = c(lo + 1) - c(lo)
    if slope <= 0:
        raise ValueError(
            f"count must increase with the knob: count({lo}) = {c(lo)}, "
            f"count({lo + 1}) = {c(lo + 1)}"
        )
    v = min(hi, lo + (target - c(lo)) // slope)
    while v > lo and c(v) > target:
        v -= 1
    while v < hi and c(v + 1) <= target:
        v += 1
    return min((k for k in (v, v + 1) if k <= hi), key=lambda k: (abs(c(k) - target), k))


def target_budget(d_in: int, d_out: int) -> int:
    """Active parameters per token of MoE-LoRA E=8 k=2 r=4 on this layer (the target)."""
    return meta_counts(METHODS["moe_lora"].make(None), d_in, d_out)["active_per_token"]


def match_budgets(
    names: list[str], d_in: int, d_out: int, target: int | None = None
) -> dict[str, int | None]:
    """``{method: knob}``: each method's knob with active-per-token closest to ``target``
    (default :func:`target_budget`); ``None`` for methods without a knob."""
    if target is None:
        target = target_budget(d_in, d_out)
    knobs: dict[str, int | None] = {}
    for name in names:
        m = METHODS[name]
        if m.knob is None:
            knobs[name] = None
            continue

        def count(v: int, m: Method = m) -> int:
            return meta_counts(m.make(v), d_in, d_out)["active_per_token"]

        knobs[name] = closest_knob(count, target, hi=m.limit(d_in, d_out) if m.limit else None)
    return knobs
