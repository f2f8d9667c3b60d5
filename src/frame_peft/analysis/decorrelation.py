r"""How different are a module's experts? Update cosines, subspace overlaps and basis coherence.

Expert e of a module has the update ``ΔW_e = B_e A_e`` (``adapter.expert_factors()``: A (E, R,
d_in), B (E, d_out, R); FRAME's are its transformed rank-2r factors, so ``B'_e A'_e = Re(T^H B_e
A_e T)`` exactly). The module's scale multiplies every expert alike and is left out: all measures
below are scale-free. For every pair of experts (each pair computed once, the matrices are
symmetric), never building a d×d matrix on the factor path:

- ``delta_cosine[e][f] = <ΔW_e, ΔW_f>_F / (‖ΔW_e‖_F ‖ΔW_f‖_F)`` with
  ``<B_e A_e, B_f A_f>_F = Σ (B_eᵀ B_f) ⊙ (A_e A_fᵀ)``: all pairs from two (E·R)² Gram matrices.
- ``col_overlap`` / ``row_overlap``: ``‖U_eᵀ U_f‖_F² / min(rank_e, rank_f)`` ∈ [0, 1] for
  orthonormal bases U of the column (resp. row) spaces of ΔW_e: 1 when one space contains the
  other, 0 when they are orthogonal. Bases come from a thin SVD built from QR of the factors
  (``B = Q_B R_B``, ``Aᵀ = Q_A R_A``, SVD of the R×R core ``R_B R_Aᵀ = U S Vᵀ``: columns
  ``Q_B U``, rows ``Q_A V``), keeping singular values above ``rank_rtol · s_max`` (numerical rank,
  default rtol 1e-6, in float64).
- ``coherence[e][f] = max_ij |(T_{a_e}^H T_{a_f})_ij|`` (:func:`frame_peft.transforms.coherence`)
  for FRAME's input-side transforms (length d_in, the module's transform). Experts of MoE-LoRA,
  HMoRA and HydraLoRA all act in the same (identity) basis, ``T = I`` for every expert, so their
  coherence is the matrix of ones: the basis itself does not decorrelate them. FourierMoE's
  experts are not indexed by a transform (they differ by spectral support): None.

An expert whose update is exactly zero (B = 0 at initialisation) has no direction and no
subspace: its row and column of the three matrices are None (never NaN). Coherence does not
depend on the weights and is always reported.

Coherence matrices come from :func:`frame_peft.transforms.coherence_matrix` (one transform per
expert, one adjoint per pair, a cache shared by the modules of one call).

FourierMoE has no factors; when its dense ``ΔW_e`` (E·d_out·d_in numbers) is at most
``max_dense_elements`` per expert, cosines come from the dense matrices and overlaps from their
SVDs (O(d³) per expert); larger modules are skipped with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.inject import require_injection
from ..transforms import coherence_matrix
from .modules import module_info

Matrix = list[list[float | None]]


def decorrelation(
    model: nn.Module,
    *,
    coherence: bool = True,
    max_coherence_width: int | None = 2048,
    rank_rtol: float = 1e-6,
    max_dense_elements: int = 1 << 19,
) -> dict[str, Any]:
    """Pairwise expert similarity of every adapted mixture module (see the module docstring).

    Args:
        model: a model with frame-peft adapters.
        coherence: compute FRAME's basis coherence (else every ``coherence`` is None).
        max_coherence_width: skip coherence (None) for modules with d_in above this (None: no
            limit). The chirp transform costs O(n² log n) per pair and E·n²·8 bytes.
        rank_rtol: singular values at most ``rank_rtol · s_max`` count as zero.
        max_dense_elements: largest d_out·d_in for which FourierMoE's dense ΔW_e is built.

    Returns::

        {"modules": {name: {"layer", "kind", "method", "num_experts", "delta_cosine": [[E]],
                            "col_overlap": [[E]], "row_overlap": [[E]],
                            "coherence": [[E]] | None, "orders": [E] | None,
                            "ranks": [E], "mean_offdiag_cosine", ...}},
         "per_layer": [{"layer", "num_modules", "mean_offdiag_cosine",
                        "mean_abs_offdiag_cosine", "mean_offdiag_col_overlap",
                        "mean_offdiag_row_overlap", "mean_offdiag_coherence"}],
         "summary": {the per-layer keys, over all modules},
         "skipped": {name: reason}}

    Off-diagonal means skip None entries (zero experts) and are None when nothing is left;
    per-layer and summary values are unweighted means over modules (modules without a layer
    index enter the summary only).
    """
    if rank_rtol <= 0:
        raise ValueError(f"rank_rtol must be > 0, got {rank_rtol!r}")
    inj = require_injection(model)
    method = inj.config.method
    modules: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    coherence_cache: dict[tuple, float] = {}
    with torch.no_grad():
        for name, layer in inj.layers.items():
            adapter = layer.adapter
            update = _expert_update(adapter, max_dense_elements)
            if isinstance(update, str):
                skipped[name] = update
                continue
            cos, col, row, ranks = (
                _from_dense(update, rank_rtol)
                if isinstance(update, torch.Tensor)
                else _from_factors(*update, rank_rtol)
            )
            info = module_info(name)
            entry: dict[str, Any] = {
                "layer": info.layer,
                "kind": info.kind,
                "method": method,
                "num_experts": adapter.num_experts,
                "delta_cosine": cos,
                "col_overlap": col,
                "row_overlap": row,
                "coherence": None,
                "orders": None,
                "ranks": ranks,
            }
            domain = adapter.expert_domain()
            if domain is not None:
                entry["orders"] = [float(a) for a in domain.orders.double().cpu()]
            width_ok = max_coherence_width is None or adapter.in_features <= max_coherence_width
            if coherence and width_ok and isinstance(update, tuple):  # low-rank experts
                if domain is not None:
                    entry["coherence"] = coherence_matrix(
                        entry["orders"], adapter.in_features, domain.transform, coherence_cache
                    )
                else:
                    e = adapter.num_experts  # identity bases: T_e^H T_f = I, coherence 1
                    entry["coherence"] = [[1.0] * e for _ in range(e)]
            entry.update(_module_means(entry))
            modules[name] = entry
    return {
        "modules": modules,
        "per_layer": _per_layer(modules),
        "summary": _pooled_means(list(modules.values())),
        "skipped": skipped,
    }


# Expert updates ------------------------------------------------------------------------------
def _expert_update(
    adapter: nn.Module, max_dense_elements: int
) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor | str:
    """``(A, B)`` float64 factors, a dense (E, d_out, d_in) float64 ΔW, or why there is none."""
    if not adapter.has_router:
        return f"{type(adapter).__name__} has no experts (a single update)"
    if adapter.num_experts < 2:
        return f"only {adapter.num_experts} expert: nothing to compare"
    factors = adapter.expert_factors()
    if factors is not None:
        a, b = factors
        return a.detach().double(), b.detach().double()
    size = adapter.out_features * adapter.in_features
    if size > max_dense_elements:
        return (
            f"{type(adapter).__name__} has no low-rank factors and its dense ΔW_e "
            f"({adapter.out_features}×{adapter.in_features} = {size} > "
            f"max_dense_elements={max_dense_elements}) is too large to build"
        )
    try:
        return adapter.expert_deltas().detach().double().cpu()
    except NotImplementedError:
        return f"{type(adapter).__name__} exposes no per-expert updates"


def _from_factors(
    a: torch.Tensor, b: torch.Tensor, rtol: float
) -> tuple[Matrix, Matrix, Matrix, list[int]]:
    """Cosines and overlaps from factors A (E, R, d_in), B (E, d_out, R)."""
    a, b = a.cpu(), b.cpu()
    num_experts, rank = a.shape[0], a.shape[1]
    a_all = a.reshape(num_experts * rank, -1)  # rows: [A_1; …; A_E]
    b_all = b.permute(0, 2, 1).reshape(num_experts * rank, -1)  # rows: columns of B_e
    blocks = (b_all @ b_all.T) * (a_all @ a_all.T)  # (B_eᵀB_f)_ij (A_e A_fᵀ)_ij
    inner = blocks.view(num_experts, rank, num_experts, rank).sum(dim=(1, 3))
    q_b, r_b = torch.linalg.qr(b)  # (E, d_out, K_b), (E, K_b, R)
    q_a, r_a = torch.linalg.qr(a.transpose(1, 2))  # (E, d_in, K_a), (E, K_a, R)
    u, s, vh = torch.linalg.svd(r_b @ r_a.transpose(1, 2))
    ranks = _numerical_ranks(s, rtol)
    cols, rows = q_b @ u, q_a @ vh.transpose(1, 2)
    return (
        _cosines(inner),
        _overlaps(cols, ranks),
        _overlaps(rows, ranks),
        ranks,
    )


def _from_dense(w: torch.Tensor, rtol: float) -> tuple[Matrix, Matrix, Matrix, list[int]]:
    """Cosines and overlaps from dense updates W (E, d_out, d_in)."""
    flat = w.reshape(w.shape[0], -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    ranks = _numerical_ranks(s, rtol)
    return (
        _cosines(flat @ flat.T),
        _overlaps(u, ranks),
        _overlaps(vh.transpose(1, 2), ranks),
        ranks,
    )


def _numerical_ranks(s: torch.Tensor, rtol: float) -> list[int]:
    """Per expert, singular values above ``rtol · s_max`` (0 for an all-zero update)."""
    s_max = s.amax(dim=-1, keepdim=True)
    return [int(v) for v in ((s > rtol * s_max) & (s_max > 0)).sum(dim=-1)]


def _cosines(inner: torch.Tensor) -> Matrix:
    norms = inner.diagonal().clamp_min(0).sqrt()
    cos = (inner / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    alive = (norms > 0).tolist()
    return [
        [float(cos[e, f]) if alive[e] and alive[f] else None for f in range(len(alive))]
        for e in range(len(alive))
    ]


def _overlaps(bases: torch.Tensor, ranks: list[int]) -> Matrix:
    """``‖U_eᵀU_f‖_F² / min(rank_e, rank_f)`` for bases (E, d, K) whose first rank_e columns
    span expert e's space (sorted by singular value, so the kept columns come first)."""
    num_experts = len(ranks)
    k = max(ranks)
    if k == 0:
        return [[None] * num_experts for _ in range(num_experts)]
    keep = torch.arange(k)[None, :] < torch.tensor(ranks)[:, None]  # (E, k)
    u = bases[:, :, :k] * keep[:, None, :].to(bases.dtype)
    d = u.shape[1]
    if num_experts * k * k <= d * k + num_experts * d:  # cheaper: one (E·k)² Gram matrix
        flat = u.permute(1, 0, 2).reshape(d, num_experts * k)
        sq = (flat.T @ flat).square().view(num_experts, k, num_experts, k).sum(dim=(1, 3))
    else:  # wide bases (dense updates): projectors P_e (d×d), <P_e, P_f>_F = ‖U_eᵀU_f‖_F²
        proj = (u @ u.transpose(1, 2)).reshape(num_experts, d * d)
        sq = proj @ proj.T
    out: Matrix = []
    for e in range(num_experts):
        out.append([
            float(sq[e, f]) / min(ranks[e], ranks[f]) if ranks[e] and ranks[f] else None
            for f in range(num_experts)
        ])  # fmt: skip
    return out


# Coherence -----------------------------------------------------------------------------------
# Aggregation ---------------------------------------------------------------------------------
def _offdiag_mean(matrix: Matrix | None, absolute: bool = False) -> float | None:
    if matrix is None:
        return None
    values = [
        abs(v) if absolute else v
        for e, row in enumerate(matrix)
        for f, v in enumerate(row)
        if e != f and v is not None
    ]
    return sum(values) / len(values) if values else None


def _module_means(entry: dict[str, Any]) -> dict[str, float | None]:
    return {
        "mean_offdiag_cosine": _offdiag_mean(entry["delta_cosine"]),
        "mean_abs_offdiag_cosine": _offdiag_mean(entry["delta_cosine"], absolute=True),
        "mean_offdiag_col_overlap": _offdiag_mean(entry["col_overlap"]),
        "mean_offdiag_row_overlap": _offdiag_mean(entry["row_overlap"]),
        "mean_offdiag_coherence": _offdiag_mean(entry["coherence"]),
    }


_MEAN_KEYS = (
    "mean_offdiag_cosine",
    "mean_abs_offdiag_cosine",
    "mean_offdiag_col_overlap",
    "mean_offdiag_row_overlap",
    "mean_offdiag_coherence",
)


def _pooled_means(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted means over ``entries`` of each module-level mean (None values skipped)."""
    out: dict[str, Any] = {"num_modules": len(entries)}
    for k in _MEAN_KEYS:
        values = [m[k] for m in entries if m[k] is not None]
        out[k] = sum(values) / len(values) if values else None
    return out


def _per_layer(modules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for m in modules.values():
        if m["layer"] is not None:
            by_layer.setdefault(m["layer"], []).append(m)
    return [{"layer": layer, **_pooled_means(by_layer[layer])} for layer in sorted(by_layer)]
