"""The order scan: put each FRAME expert at the fractional order where its update is most compact.

Gradient descent does not find FRAME's orders (the fitted-energy landscape has features about 1/d
wide, and routing settles first; ``docs/experiments.md``). The scan reverses the roles: once
routing has settled, for every FRAME module and expert e

1. record a few batches' inputs, gates and output gradients (:mod:`.scan_stats`): with the
   experts at zero on the first scan; with them on for a rescan, where each expert's target is
   then ``λ δ`` plus its own contribution ``s g ΔW_e x`` (what it does now, plus what is left to
   do; λ from the loss's curvature along the adapters' update). Form the whitened target W_e
   (:mod:`.scan_targets`) and sketch it;
2. score every order on a grid of step 1/(``grid``·d), d = max(d_in, d_out), by the fitted
   energy of a rank-r expert (:mod:`.order_fit`; a cheap screen: the sketch's leading
   ``SCREEN_RANK`` directions and no IHT), run the full fit at the ``REFINE_PEAKS`` best local
   maxima and at the expert's current order, then on a grid of step 1/(8d) within ±1/(2d) of
   the best;
3. **jump**: set a_e to the best order (snapped to 0 or 1 and *held* there, via ``order_pins``,
   when within ``SNAP``/d of an end), reset A_e (Kaiming), B_e (0) and the first Adam moments of
   A_e, B_e, θ_e. On a rescan (``first=False``) an expert jumps only if its best order is more
   than 1/d from its current one **and** fits at least ``margin`` better (relative);
4. training continues; the order optimizer refines a_e inside its basin.

Experts that no recorded token was routed to are left as they are (order and factors).

Experts held at 0 run as LoRA experts (no transform, rank r): where a module has no better domain
the scan sends its experts to 0 and FRAME costs what MoE-LoRA costs there.

Adam's second moments are kept on a jump (AdamW's step count is per tensor, so zeroed second
moments would get no bias correction and the first updates after a jump would be 3-6x larger than
usual); first moments are zeroed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ...core.inject import find_injection, require_injection
from .layer import FrameAdapter
from .order_fit import candidate_grid, fitted_energies, side_grams
from .scan_stats import TokenStats, record
from .scan_targets import sketch_targets, whitened_targets

#: Local maxima of the screen that get the full fit, per expert.
REFINE_PEAKS = 4
#: The screen uses the leading SCREEN_RANK directions of the sketch (the full fits use all q).
SCREEN_RANK = 8
#: Snap to order 0 or 1 (and hold it) when within SNAP/d of it.
SNAP = 0.5
#: The refinement grid: step 1/(REFINE_DENSITY·d) within ±1/(2d) of the best order.
REFINE_DENSITY = 8
#: First-moment keys of torch optimizers' per-parameter state that a jump zeroes.
FIRST_MOMENTS = ("exp_avg", "momentum_buffer")


@dataclass
class ScanSettings:
    """How the scan searches (FrameConfig's ``scan_*`` fields).

    Args:
        grid: screen candidates per 1/d (2: the grid j/(2d)).
        sketch_rank: q, the rank each module's targets are sketched to.
        basis: ``"expert"`` (one sketch basis per expert) or ``"shared"`` (one per module).
        iters: IHT iterations of the full fit.
        margin: a rescan moves an expert only if its best order fits this much better
            (relative) than its current one.
        seed: the seed of every random draw (token choice, sketches).
    """

    grid: float = 1.0
    sketch_rank: int = 16
    basis: str = "expert"
    iters: int = 8
    margin: float = 0.05
    seed: int = 0


@dataclass
class ExpertDecision:
    """One expert's scan result (orders in [0, 1]; scores are fitted-energy fractions)."""

    expert: int
    order_before: float
    order_after: float
    best_order: float
    score_before: float
    score_best: float
    jumped: bool
    held: bool
    tokens: int


@dataclass
class ModuleScan:
    """One module's scan: the decisions and what the screen saw."""

    name: str
    width: int
    experts: list[ExpertDecision]
    sketch_energy: list[float]  # share of each expert's target energy inside the sketch
    screen_orders: list[float]
    screen_scores: list[list[float]]  # (experts, orders), rounded
    seconds: float


@dataclass
class ScanReport:
    """Everything one scan did (JSON-ready through :meth:`to_dict`)."""

    first: bool
    step: int | None
    modules: list[ModuleScan] = field(default_factory=list)
    scale: float | None = None  # λ of a rescan's add-back targets (None: first scan)
    note: str = ""  # why a rescan made no decision, if it made none
    seconds_statistics: float = 0.0
    seconds_search: float = 0.0
    tokens: int = 0

    @property
    def num_jumps(self) -> int:
        return sum(e.jumped for m in self.modules for e in m.experts)

    def orders_after(self) -> dict[str, list[float]]:
        return {m.name: [e.order_after for e in m.experts] for m in self.modules}

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """The report as plain data; the screen curves only with ``curves``."""
        out = asdict(self)
        if not curves:
            for m in out["modules"]:
                m.pop("screen_orders"), m.pop("screen_scores")
        out["num_jumps"] = self.num_jumps
        return out


def _local_peaks(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest local maxima of a 1-D curve (ends count)."""
    padded = torch.cat([scores[:1] - 1, scores, scores[-1:] - 1])
    is_peak = (scores >= padded[:-2]) & (scores >= padded[2:])
    idx = torch.nonzero(is_peak).flatten()
    order = scores[idx].argsort(descending=True)
    return idx[order[:k]].tolist()


def _fit(sketch, candidates: list[list[float]], rank, transform, iters) -> list[dict]:
    """Full fits of each expert (row of the sketch) at its own candidate orders: one transform
    call per distinct order, then only the listed (expert, order) pairs are solved. Returns
    ``{order: f}`` per expert."""
    orders = sorted({a for row in candidates for a in row})
    where = {a: j for j, a in enumerate(orders)}
    a = torch.tensor(orders, dtype=torch.float64)
    grams = (*side_grams(sketch.u, a, transform), *side_grams(sketch.v, a, transform))
    experts = torch.tensor([i for i, row in enumerate(candidates) for _ in set(row)])
    index = torch.tensor([where[x] for row in candidates for x in sorted(set(row))])
    f = fitted_energies(sketch, a, rank, transform, iters, grams=grams, pairs=(experts, index))
    out: list[dict] = [{} for _ in candidates]
    for e, j, val in zip(experts.tolist(), index.tolist(), f.tolist(), strict=True):
        out[e][orders[j]] = val
    return out


def _best(scores: dict) -> tuple[float, float]:
    order = max(scores, key=lambda a: (scores[a], -a))
    return order, scores[order]


def _add_back(adapter: FrameAdapter, stats: TokenStats, scale: float):
    """``delta_for`` of a rescan: ``λ δ_n + s g_{n,e} ΔW_e x_n`` for expert e's routed tokens."""
    with torch.no_grad():
        a_eff, b_eff = (t.detach().double().cpu() for t in adapter.expert_factors())

    def delta_for(e: int, routed: torch.Tensor) -> torch.Tensor:
        x = stats.x[routed].double()
        gate = stats.gates[routed, e].double().unsqueeze(1)
        own = (x @ a_eff[e].T) @ b_eff[e].T * (adapter.scale * gate)
        return scale * stats.delta[routed].double() + own

    return delta_for


def scan_module(
    adapter: FrameAdapter,
    stats: TokenStats,
    settings: ScanSettings,
    first: bool,
    scale: float | None = None,
) -> tuple[ModuleScan, list[tuple[int, float, bool]]]:
    """Score orders for every expert of ``adapter`` from ``stats``; returns the report and the
    jumps ``(expert, new order, held)`` (nothing is changed here). ``scale`` (statistics with
    the adapters on, :func:`.scan_stats.record` mode ``"current"``): each expert's target is
    ``λ δ`` plus its own contribution. ``first``: every expert jumps to its best order whatever
    the margin (starting orders, including a start held at 0 with ``init_orders="zeros"``, carry
    no information yet), except one whose best order is the order it is held at, which is left
    untouched; on later scans an expert moves only past the margin and more than 1/d away."""
    t0 = time.perf_counter()
    d = max(adapter.in_features, adapter.out_features)
    delta_for = None if scale is None else _add_back(adapter, stats, scale)
    targets = whitened_targets(stats, delta_for=delta_for)
    sketch, present = sketch_targets(
        targets, adapter.out_features, adapter.in_features, settings.sketch_rank, settings.basis,
        settings.seed,
    )  # fmt: skip
    transform, rank = adapter.transform_name, adapter.rank
    current = [float(a) for a in adapter.orders().detach().double().clamp(0, 1).cpu()]

    grid = candidate_grid(d, settings.grid)
    screen = fitted_energies(sketch.leading(SCREEN_RANK), grid, rank, transform, iters=0)
    pass1 = [[float(grid[j]) for j in _local_peaks(screen[i], REFINE_PEAKS)] + [current[e]]
             for i, e in enumerate(present)]  # fmt: skip
    f1 = _fit(sketch, pass1, rank, transform, settings.iters)
    step = 1.0 / (REFINE_DENSITY * d)
    pass2 = []
    for scores in f1:
        best, _ = _best(scores)
        pass2.append([min(max(best + j * step, 0.0), 1.0) for j in range(-4, 5) if j])
    f2 = _fit(sketch, pass2, rank, transform, settings.iters)

    held_now = set(adapter.pinned_experts())
    decisions, jumps = [], []
    for i, e in enumerate(present):
        scores = {**f1[i], **f2[i]}
        best, f_best = _best(scores)
        f_now = f1[i][current[e]]
        held = best <= SNAP / d or best >= 1 - SNAP / d
        new = (0.0 if best <= 0.5 else 1.0) if held else best
        stays = held and new == current[e] and e in held_now  # e.g. held at 0, best at 0
        jump = not stays and (
            first or (abs(best - current[e]) > 1.0 / d and f_best >= (1 + settings.margin) * f_now)
        )
        decisions.append(ExpertDecision(
            e, current[e], new if jump else current[e], best, f_now, f_best, jump, held and jump,
            targets[e].tokens,
        ))  # fmt: skip
        if jump:
            jumps.append((e, new, held))
    captured = (sketch.cores.square().sum((-1, -2)) / sketch.energy.clamp_min(1e-300)).tolist()
    report = ModuleScan(
        adapter.name, d, decisions, [round(c, 4) for c in captured],
        [round(float(a), 6) for a in grid], [[round(float(v), 4) for v in row] for row in screen],
        time.perf_counter() - t0,
    )  # fmt: skip
    return report, jumps


@torch.no_grad()
def apply_jumps(
    adapter: FrameAdapter,
    jumps: list[tuple[int, float, bool]],
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> None:
    """Move and pin the experts of ``jumps`` and give them new factors; zero their first
    optimizer moments.

    An expert that lands on order 0 keeps the spatial part of what it has learned: its current
    update ``B'_e A'_e`` (rank ≤ 2r) truncated to rank r, ``B_e A_e = H_r(B'_e A'_e)`` (the
    best rank-r approximation; at order 0 the update is exactly ``B_e A_e``). An expert that lands
    elsewhere restarts: A_e Kaiming (from a generator seeded by ``seed``, the same on every
    process), B_e = 0."""
    if not jumps:
        return
    experts = [e for e, _, _ in jumps]
    to_zero = [e for e, a, _ in jumps if a == 0.0]
    kept = _spatial_part(adapter, to_zero) if to_zero else {}
    adapter.place_experts(experts, [a for _, a, _ in jumps], [h for _, _, h in jumps])
    adapter.reset_experts([e for e in experts if e not in kept],
                          torch.Generator().manual_seed(seed))  # fmt: skip
    for e, (b, a) in kept.items():
        adapter.A[e] = a.to(adapter.A)
        adapter.B[e] = b.to(adapter.B)
    if optimizer is None:
        return
    params = [adapter.A, adapter.B] + ([adapter.order_logits] if adapter.learned else [])
    wanted = {id(p): p for p in params}
    for param, state in optimizer.state.items():  # items(): never creates an empty state
        if id(param) not in wanted:
            continue
        for key in FIRST_MOMENTS:
            value = state.get(key)
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value[experts] = 0


def _spatial_part(adapter: FrameAdapter, experts: list[int]) -> dict[int, tuple]:
    """``{e: (B, A)}`` with ``B A = H_r(B'_e A'_e)`` for the experts' current effective factors,
    from QR of the factors and a 2r × 2r SVD ``U S Vᵀ``: ``A = κ V_rᵀ``, ``B = U_r S_r / κ``.

    κ is the expert's current RMS row norm of A, so A keeps the scale it had (LoRA's Kaiming
    scale, early in training) and B carries the update. The balanced split ``S^½`` on both sides
    shrinks A as much as B when the update is small (early on it is), and gradient steps on two
    small factors barely move them: on SmolLM2 that split ended 0.02 nats above MoE-LoRA."""
    a_eff, b_eff = (t.detach().double() for t in adapter.expert_factors())
    r, out = adapter.rank, {}
    for e in experts:
        qb, rb = torch.linalg.qr(b_eff[e])  # (d_out, R), (R, R)
        qa, ra = torch.linalg.qr(a_eff[e].T)  # (d_in, R), (R, R)
        u, sv, vh = torch.linalg.svd(rb @ ra.T)
        kappa = float(adapter.A[e].detach().double().norm()) / math.sqrt(r) or 1.0
        out[e] = (qb @ (u[:, :r] * (sv[:r] / kappa)), kappa * vh[:r] @ qa.T)
    return out


def frame_adapters(model: nn.Module) -> dict[str, FrameAdapter]:
    """``{module name: FrameAdapter}`` of the model (ValueError when it has none)."""
    inj = require_injection(model)
    out = {n: la.adapter for n, la in inj.layers.items() if isinstance(la.adapter, FrameAdapter)}
    if not out:
        raise ValueError("the model has no FRAME modules: the order scan is for FRAME only")
    return out


def search_orders(
    model: nn.Module,
    stats: dict[str, TokenStats],
    settings: ScanSettings,
    *,
    first: bool,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
    progress: Callable[[str], None] | None = None,
    scale: float | None = None,
) -> ScanReport:
    """Steps 2-3 of the scan on recorded statistics: choose orders and jump, module by module."""
    report = ScanReport(first, step, scale=scale)
    t0 = time.perf_counter()
    adapters = frame_adapters(model)
    for i, (name, adapter) in enumerate(adapters.items()):
        if name not in stats:
            continue
        module_report, jumps = scan_module(adapter, stats[name], settings, first, scale)
        apply_jumps(
            adapter, jumps, optimizer, seed=settings.seed * 1_000_003 + (step or 0) * 1009 + i
        )
        report.modules.append(module_report)
        if progress is not None:
            progress(f"order scan: {i + 1}/{len(adapters)} modules ({name})")
    report.seconds_search = time.perf_counter() - t0
    return report


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default scan loss: the model's own ``outputs.loss`` for a causal-LM batch with
    ``labels`` (mean cross-entropy over labelled tokens), without the routing loss the
    injection adds to ``outputs.loss`` in training (the scan reads the task's gradient only)."""
    keys = ("input_ids", "attention_mask", "labels")
    inj = find_injection(model)
    before = inj.aux_in_loss if inj is not None else None
    if inj is not None:
        inj.aux_in_loss = False
    try:
        out = model(**{k: v for k, v in batch.items() if k in keys})
    finally:
        if inj is not None:
            inj.aux_in_loss = before
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: give batches with 'labels' or a loss_fn")
    return loss


def scan_orders(
    model: nn.Module,
    batches: Iterable,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    first: bool = True,
    settings: ScanSettings | None = None,
    tokens_per_batch: int | None = None,
    gather: Callable[..., tuple[dict[str, TokenStats], float | None]] | None = None,
    step: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScanReport:
    """Run the order scan on ``model`` (see the module docstring) and return its report.

    Args:
        model: a model with FRAME adapters (unwrapped: not the DDP wrapper).
        batches: the batches of the statistics pass (e.g. 8 training batches).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default :func:`lm_loss`.
        optimizer: its first moments of the experts that jump are zeroed.
        first: the first scan jumps every expert; later ones only with the margin.
        settings: the search settings; default: from the model's FrameConfig.
        tokens_per_batch: tokens kept per module and batch (default from the config).
        gather: in distributed runs, ``gather(stats, scale) -> (stats, scale)`` merges every
            process's statistics (all processes must then see the same merged statistics and
            scale, and make the same jumps).
        step, progress: recorded in the report / called with progress lines.
    """
    for name, adapter in frame_adapters(model).items():  # refuses models without FRAME modules
        if any(type(p.data) is not torch.Tensor for p in (adapter.A, adapter.B)):
            raise ValueError(
                f"{name}: the order scan needs whole expert factors on every process, and this "
                "module's are sharded (FSDP / ZeRO-3); train with DDP or order_search='gradient'"
            )
    config = require_injection(model).config
    settings = settings or settings_from_config(config)
    if tokens_per_batch is None:
        tokens_per_batch = math.ceil(config.scan_tokens / max(1, config.scan_batches))
    t0 = time.perf_counter()
    seed = settings.seed + (step or 0)
    # A first scan over experts that are still at their (arbitrary) starting orders records with
    # the experts off; once they are held somewhere (started at 0) or after a scan, they are on.
    held = any(ad.pinned_experts() for ad in frame_adapters(model).values())
    fresh = first and not held
    mode = "zero" if fresh else "current"
    grads = {p: p.grad for p in model.parameters() if p.requires_grad}
    try:
        for p in grads:
            p.grad = None
        stats, scale = record(model, batches, loss_fn or lm_loss, tokens_per_batch, seed, mode)
    finally:
        for p, g in grads.items():  # the statistics pass leaves no gradient behind
            p.grad = g
    if gather is not None:
        stats, scale = gather(stats, scale)
    seconds = time.perf_counter() - t0
    if not fresh and scale is None:
        report = ScanReport(first, step, seconds_statistics=seconds)
        report.note = (
            "no decision: the loss has no positive curvature along the adapters' update (or "
            "the adapters contribute nothing yet), so δ has no output scale to add the experts' "
            "own contributions back to"
        )
        return report
    report = search_orders(
        model, stats, settings, first=first, optimizer=optimizer, step=step, progress=progress,
        scale=scale,
    )  # fmt: skip
    report.seconds_statistics = seconds
    report.tokens = sum(s.num_tokens for s in stats.values()) // max(1, len(stats))
    return report


def scan_steps(scan_at: list[float], total_steps: int) -> list[int]:
    """Optimizer steps after which the scans run: ``max(1, round(f · total))``, distinct; the
    first is the first scan, the rest are rescans."""
    return sorted({min(total_steps, max(1, round(f * total_steps))) for f in scan_at})


def settings_from_config(config: Any) -> ScanSettings:
    """The :class:`ScanSettings` of a FrameConfig's ``scan_*`` fields."""
    return ScanSettings(
        grid=config.scan_grid,
        sketch_rank=config.scan_sketch_rank,
        basis=config.scan_basis,
        margin=config.scan_margin,
    )
