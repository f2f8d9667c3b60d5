r"""Fractional-domain compactness: how much of an update a rank-r FRAME expert captures at order a.

FRAME's premise is that no single basis is best: for a module's ideal update direction W, the
curve

    f(a) = 1 − min_{rank M ≤ r} ‖W − Re(T_a^H M T_a)‖² / ‖W‖²          (a ∈ [0, 1])

should peak away from a = 0 (the spatial basis, where the expert is a LoRA expert of rank r) for
some tasks or layers. Next to it: LoRA at rank r (= f(0) exactly: the top-r singular energy) and
at rank 2r (a FRAME expert's real update has spatial rank ≤ 2r, and 2r is its per-token FLOPs).

This is the order scan's own machinery, called, not rewritten (:mod:`frame_peft.methods.frame`):

- the targets: :func:`.scan_targets.whitened_targets` of tokens recorded by
  :func:`.scan_stats.record` (the first scan's mode ``"zero"``: the adapters off, so δ is what a
  fresh expert starts from), ``W_e = C_e (Σ_e + λI)⁻¹``; or any dense matrix
  (:func:`dense_target`, e.g. a trained full-rank delta);
- the sketch (:func:`.scan_targets.sketch_targets`, per-expert basis of rank ``sketch_rank``);
- the score (:func:`.order_fit.fitted_energies`): the scan's screen on its grid ``j/d`` (leading 8
  directions, no IHT) picks the peaks; the full fit (IHT, ``iters``) then runs on an even grid of
  ``points`` + 1 orders, at the screen's 4 best peaks and on the step-1/(8d) grid around the best,
  exactly as :func:`.scan.scan_module` refines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..methods.frame.order_fit import candidate_grid, fitted_energies
from ..methods.frame.scan import REFINE_DENSITY, REFINE_PEAKS, SCREEN_RANK, lm_loss
from ..methods.frame.scan_stats import record
from ..methods.frame.scan_targets import Target, sketch_targets, whitened_targets
from ..transforms import CHIRP

__all__ = ["compactness_curve", "dense_target", "lora_energy", "whitened_module_targets"]


def dense_target(w: torch.Tensor) -> Target:
    """A dense (d_out, d_in) matrix as the scan's factored :class:`Target` (``W = lᵀ k`` from its
    thin SVD)."""
    if w.dim() != 2:
        raise ValueError(f"a target is a (d_out, d_in) matrix, got shape {tuple(w.shape)}")
    w = w.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError("the target has NaN or inf entries")
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return Target((u * s).T.contiguous(), vh.contiguous(), float(w.square().sum()), 0)


def lora_energy(target: Target, rank: int) -> float:
    """Share of ‖W‖² the best rank-``rank`` matrix captures (Eckart–Young): LoRA at that rank."""
    s = torch.linalg.svdvals(target.dense())
    total = float(s.square().sum())
    return float(s[:rank].square().sum()) / total if total > 0 else 0.0


def _peaks(scores: torch.Tensor, k: int) -> list[int]:
    padded = torch.cat([scores[:1] - 1, scores, scores[-1:] - 1])
    is_peak = (scores >= padded[:-2]) & (scores >= padded[2:])
    idx = torch.nonzero(is_peak).flatten()
    return idx[scores[idx].argsort(descending=True)[:k]].tolist()


def compactness_curve(
    target: Target | torch.Tensor,
    rank: int,
    *,
    points: int = 64,
    transform: str = CHIRP,
    sketch_rank: int = 16,
    iters: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """The curve f(a) of one target for a rank-``rank`` FRAME expert (module docstring).

    Returns ``{"orders": [...] ascending, "fitted": [...], "best_order", "best_fitted",
    "lora_r": f at rank r, "lora_2r": rank 2r, "rank", "gain_over_lora": best − lora_r,
    "sketch_energy": share of ‖W‖² inside the rank-q sketch (an upper bound on every f)}``.
    """
    if rank < 1 or points < 1:
        raise ValueError(f"rank and points must be >= 1, got rank={rank}, points={points}")
    t = dense_target(target) if isinstance(target, torch.Tensor) else target
    if not t.energy > 0:
        raise ValueError("the target is zero: nothing to capture")
    d_out, d_in = t.l.shape[1], t.k.shape[1]
    if transform == CHIRP and (d_out % 2 or d_in % 2):
        raise ValueError(
            f"the chirp transform needs even widths, got {d_out}×{d_in}; use transform='exact'"
        )
    sketch, _ = sketch_targets([t], d_out, d_in, sketch_rank, "expert", seed)
    d = max(d_out, d_in)
    screen_grid = candidate_grid(d, 1.0)
    screen = fitted_energies(sketch.leading(SCREEN_RANK), screen_grid, rank, transform, iters=0)[0]
    even = torch.arange(points + 1, dtype=torch.float64) / points
    peaks = screen_grid[_peaks(screen, REFINE_PEAKS)]
    orders = torch.unique(torch.cat([even, peaks]))
    fitted = fitted_energies(sketch, orders, rank, transform, iters)[0]
    best = float(orders[int(fitted.argmax())])
    step = 1.0 / (REFINE_DENSITY * d)
    near = torch.tensor([min(max(best + j * step, 0.0), 1.0) for j in range(-4, 5) if j],
                        dtype=torch.float64)  # fmt: skip
    near = near[~torch.isin(near, orders)]
    if len(near):
        orders = torch.cat([orders, near])
        fitted = torch.cat([fitted, fitted_energies(sketch, near, rank, transform, iters)[0]])
    order = orders.argsort()
    orders, fitted = orders[order], fitted[order]
    j = int(fitted.argmax())
    lora_r, lora_2r = lora_energy(t, rank), lora_energy(t, 2 * rank)
    captured = float(sketch.cores.square().sum() / sketch.energy.clamp_min(1e-300)[0])
    return {
        "orders": orders.tolist(),
        "fitted": fitted.tolist(),
        "best_order": float(orders[j]),
        "best_fitted": float(fitted[j]),
        "lora_r": lora_r,
        "lora_2r": lora_2r,
        "rank": rank,
        "gain_over_lora": float(fitted[j]) - lora_r,
        "sketch_energy": captured,
    }


def whitened_module_targets(
    model: nn.Module, batches: Iterable, tokens_per_batch: int = 128, seed: int = 0
) -> dict[str, list[Target | None]]:
    """The order scan's first-scan targets of every FRAME module of ``model``:
    ``{module: [W_e per expert, None where no recorded token was routed]}`` from ``batches``
    (causal-LM batches with ``labels``; adapters off while recording, as the first scan does).
    With one expert per module (``num_experts=1``) this is the module's whitened target."""
    stats, _ = record(model, batches, lm_loss, tokens_per_batch, seed, "zero")
    if not stats:
        raise ValueError("no token was recorded: are the batches empty or fully padded?")
    return {name: whitened_targets(s) for name, s in stats.items()}
