"""How much of a target update one rank-r FRAME expert captures at order a (the order scan's score).

A FRAME expert at order a adds ``L_a(M) = Re(T_o^H M T_i)`` with M = B A real of rank r (T_o, T_i
the transforms of length d_out and d_in). Given a target ΔW (d_out, d_in), its **fitted energy**
at a is::

    f(a) = 1 − min_{rank M ≤ r} ‖W − L_a(M)‖² / ‖W‖²          (0 ≤ f ≤ 1)

``L_a`` is self-adjoint for real matrices (T is complex symmetric: ``L_a* G = Re(T_o^H G T_i)``),
an isometry at a = 0 and a projection at a = 1; f is even in a and 2-periodic, so [0, 1] covers
every order.

Two ways to compute it:

- :func:`dense_fitted_energy` (reference; O(d² log d) per iteration): normalised iterative hard
  thresholding on d_out × d_in matrices, ``M ← H_r(M + μ G)``, ``G = L_a*(W − L_a M)``,
  ``μ = ‖G‖²/‖L_a G‖²``, started from ``H_r(μ₀ L_a* W)`` and from that plus noise of equal norm
  (unperturbed IHT can stall at a = 1), the better of the two kept.
- :func:`fitted_energies` (the scan): W = U S Vᵀ sketched to rank q (U, V orthonormal, shared
  by the experts of a module, one q × q core S_e per expert). M is sought in the span of
  ``L_a*`` of that sketch: with ``Y = T U`` the columns ``P = [Re Y, Im Y]`` (d × 2q). This
  span contains the exact optimum whenever q ≥ the spatial rank of W (a rank-r update at any
  order has spatial rank ≤ 2r). Every inner product the fit needs reduces to two q × q
  complex-symmetric Gram matrices per side and order::

      Q2 = Uᵀ T² U = Yᵀ Y,      Q4 = Uᵀ T⁴ U = (T Y)ᵀ (T Y)

  so the transforms touch 2q rows of length d per side and order (not d), and everything else
  is 2q × 2q algebra shared across experts: O(J·q·d log d + J·q²·d) per module for J orders.
  In orthonormal coordinates of P_o ⊗ P_i the objective is ``‖W‖² − 2⟨R, Z⟩ + ⟨Z, 𝒜 Z⟩`` with
  ``𝒜 Z = ½(Z + Re(N_o Z N_i))``; IHT runs there and ends with an exact least-squares refit of
  the r × r core on the final subspaces.

Derivation (P = [Y, Ȳ] Γ with Γ = ½[[I, −iI], [I, iI]], T unitary and symmetric)::

    G = PᵀP        = Γᵀ [[Q2, I], [I, Q̄2]] Γ
    N_i = Pᵀ T² P  = Γᵀ [[Q4, Q2], [Q2, I]] Γ      (input side)
    N_o = Pᵀ T̄² P  = Γᵀ [[I, Q̄2], [Q̄2, Q̄4]] Γ     (output side, (T^H)² = T̄²)
    ‖L_a(P_o Z P_iᵀ)‖² = ½ tr(Zᵀ G_o Z G_i) + ½ Re tr(Zᵀ N_o Z N_i)
    ⟨L_a*(U S Vᵀ), P_o Z P_iᵀ⟩ = tr(Dᵀ G_o Z G_i),   D = blockdiag(S, S)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...transforms import CHIRP, get_transform

#: Eigenvalues of a side's Gram matrix below this are dropped (that direction is empty: at a = 0
#: the imaginary half vanishes and the problem is LoRA's).
GRAM_TOL = 1e-5
#: Most elements (rows · length) per transform call in :func:`side_grams`.
MAX_ELEMENTS = 1 << 21


def order_map(m: torch.Tensor, order: float, transform: str = CHIRP) -> torch.Tensor:
    """``L_a(M) = Re(T_o^H M T_i)`` for a real (d_out, d_in) matrix (also ``L_a*``)."""
    forward, adjoint = get_transform(transform)
    y = forward(m.to(torch.complex128), order, dim=-1)
    return adjoint(y, order, dim=-2).real.to(m.dtype)


def truncate(m: torch.Tensor, rank: int) -> torch.Tensor:
    """``H_r``: the best rank-``rank`` approximation of (a batch of) matrices."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]


def dense_fitted_energy(
    target: torch.Tensor,
    order: float,
    rank: int,
    transform: str = CHIRP,
    iters: int = 30,
    seed: int = 0,
) -> float:
    """f(a) for a dense target (d_out, d_in) by IHT on full matrices (reference, small d)."""
    w = target.double()
    total = float(w.square().sum())
    if total == 0:
        return 0.0

    def lmap(m):
        return order_map(m, order, transform)

    def step(g):
        lg = lmap(g)
        den = float(lg.square().sum())
        return float(g.square().sum()) / den if den > 0 else 0.0

    start = lmap(w)
    mu0 = step(start)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    noise *= (mu0 * start).norm() / noise.norm().clamp_min(1e-300)
    best = 0.0
    for m0 in (mu0 * start, mu0 * start + noise):
        m = truncate(m0, rank)
        for _ in range(iters):
            g = lmap(w - lmap(m))
            m = truncate(m + step(g) * g, rank)
        lm = lmap(m)
        den = float(lm.square().sum())
        if den > 0:  # the optimal scale of the final M
            scale = float((w * lm).sum()) / den
            best = max(best, float(1 - (w - scale * lm).square().sum() / total))
    return best


@dataclass
class Sketch:
    """Rank-q sketches of a module's E expert targets: ``W_e ≈ U_g · cores[e] · V_gᵀ`` with
    ``g = group[e]`` (one basis shared by all experts: G = 1; one per expert: G = E).

    Attributes:
        u: (G, d_out, q) orthonormal columns; v: (G, d_in, q) orthonormal columns.
        cores: (E, q, q) float64.
        energy: (E,) ``‖W_e‖²`` of the full (unsketched) targets, the denominator of f.
        group: (E,) long, the basis of each expert.
    """

    u: torch.Tensor
    v: torch.Tensor
    cores: torch.Tensor
    energy: torch.Tensor
    group: torch.Tensor

    def leading(self, q: int) -> Sketch:
        """The sketch restricted to its first q basis directions (the bases are ordered by the
        energy they carry, most first): a cheaper sketch for screening."""
        return Sketch(self.u[..., :q], self.v[..., :q], self.cores[:, :q, :q], self.energy,
                      self.group)  # fmt: skip

    @classmethod
    def shared(cls, u, v, cores, energy) -> Sketch:
        """One (d_out, q), (d_in, q) basis for all experts."""
        group = torch.zeros(len(cores), dtype=torch.long)
        return cls(u.unsqueeze(0), v.unsqueeze(0), cores, energy, group)


def side_grams(
    basis: torch.Tensor, orders: torch.Tensor, transform: str = CHIRP
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q2, Q4)``, each (J, G, q, q) complex128: ``Uᵀ T_a² U`` and ``Uᵀ T_a⁴ U`` per order.

    ``basis`` (G, d, q) real; ``orders`` (J,). Two transforms of G·q rows per order, chunked.
    """
    forward, _ = get_transform(transform)
    if transform == CHIRP:  # candidate orders lie in [0, 1]: no reversal gather

        def forward(x, a, dim, _f=forward):
            return _f(x, a, dim=dim, unit_orders=True)

    g, d, q = basis.shape
    rows = basis.transpose(1, 2).reshape(g * q, d).to(torch.float32).contiguous()
    per_call = max(1, MAX_ELEMENTS // (g * q * d))
    q2, q4 = [], []
    for start in range(0, len(orders), per_call):
        a = orders[start : start + per_call].to(torch.float32)
        y1 = forward(rows.expand(len(a), g * q, d), a, dim=-1).view(len(a), g, q, d)  # T U
        y2 = forward(y1.view(len(a), g * q, d), a, dim=-1).view(len(a), g, q, d)  # T² U
        q2.append((y1 @ y1.transpose(-1, -2)).to(torch.complex128))
        q4.append((y2 @ y2.transpose(-1, -2)).to(torch.complex128))
    return torch.cat(q2), torch.cat(q4)


def _gamma(q: int) -> torch.Tensor:
    eye = torch.eye(q, dtype=torch.complex128)
    top = torch.cat([eye, -1j * eye], dim=1)
    bottom = torch.cat([eye, 1j * eye], dim=1)
    return 0.5 * torch.cat([top, bottom], dim=0)  # (2q, 2q)


def _blocks(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.cat([a, b], dim=-1), torch.cat([c, d], dim=-1)], dim=-2)


def _side(q2: torch.Tensor, q4: torch.Tensor, output: bool):
    """Orthonormal coordinates of one side: ``(V, N')`` with ``V = E Λ^{1/2}`` (J, 2q, 2q)
    (maps raw P-coefficients to orthonormal ones) and N' the order-2 Gram there (complex)."""
    q = q2.shape[-1]
    eye = torch.eye(q, dtype=q2.dtype).expand_as(q2)
    g = _gamma(q)  # (2q, 2q); q2 (..., q, q)
    gram = (g.T @ _blocks(q2, eye, eye, q2.conj()) @ g).real  # (J, 2q, 2q)
    gram = 0.5 * (gram + gram.transpose(-1, -2))
    if output:
        n = g.T @ _blocks(eye, q2.conj(), q2.conj(), q4.conj()) @ g
    else:
        n = g.T @ _blocks(q4, q2, q2, eye) @ g
    lam, vecs = torch.linalg.eigh(gram)
    keep = lam > GRAM_TOL
    root = torch.where(keep, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
    inv_root = torch.where(keep, 1.0 / lam.clamp_min(GRAM_TOL).sqrt(), torch.zeros_like(lam))
    v = vecs * root.unsqueeze(-2)  # (J, 2q, 2q): columns E_k √λ_k
    w = (vecs * inv_root.unsqueeze(-2)).to(n.dtype)
    return v, w.transpose(-1, -2) @ n @ w, keep.to(v.dtype)


def _amap(z: torch.Tensor, n_o: torch.Tensor, n_i: torch.Tensor) -> torch.Tensor:
    """``𝒜 Z = ½ (Z + Re(N_o Z N_i))`` on batches (..., k, k)."""
    return 0.5 * (z + (n_o @ z.to(n_o.dtype) @ n_i).real)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(-1, -2))


def _orth(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning (..., k, r) ``x`` (Cholesky QR; tiny ridge for rank loss)."""
    gram = x.transpose(-1, -2) @ x
    ridge = 1e-12 * gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    chol = torch.linalg.cholesky(gram + ridge[..., None, None] * eye)
    return torch.linalg.solve_triangular(chol, x.transpose(-1, -2), upper=False).transpose(-1, -2)


def _left_subspace(x: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """Top-r left singular subspace of ``x`` (..., k, k) by subspace iteration from ``start``."""
    p = _orth(start)
    for _ in range(steps):
        p = _orth(x @ (x.transpose(-1, -2) @ p))
    return p


def _refit_core(p, q, r_mat, n_o, n_i, rank):
    """The best Z = p C qᵀ for column space ``p`` and row space ``q`` (..., k, r) orthonormal:
    an exact least-squares solve for the r × r core C (r² unknowns)."""
    a = p.transpose(-1, -2).to(n_o.dtype) @ n_o @ p.to(n_o.dtype)  # (..., r, r)
    b = q.transpose(-1, -2).to(n_i.dtype) @ n_i @ q.to(n_i.dtype)
    # ½ (C + Re(a C b)) = Pᵀ R Q, vectorised row-major: Re(a[i,k] b[l,j]) C[k,l]
    kron = torch.einsum("...ik,...lj->...ijkl", a, b).real
    r2 = rank * rank
    eye = torch.eye(r2, dtype=p.dtype)
    lhs = 0.5 * (eye + kron.reshape(*kron.shape[:-4], r2, r2)) + 1e-10 * eye
    rhs = (p.transpose(-1, -2) @ r_mat @ q).reshape(*p.shape[:-2], r2, 1)
    core = torch.linalg.solve(lhs, rhs)
    return p @ core.reshape(*p.shape[:-2], rank, rank) @ q.transpose(-1, -2)


def _iht(z, r_mat, n_o, n_i, rank, iters):
    """``iters`` normalised IHT steps from ``z`` (truncated first), then the exact core refit."""
    gen = torch.Generator().manual_seed(1)
    omega = torch.randn(z.shape[-1], rank, generator=gen, dtype=z.dtype)
    p = _left_subspace(z, z @ omega, steps=3)
    z = p @ (p.transpose(-1, -2) @ z)
    for _ in range(iters):
        g = r_mat - _amap(z, n_o, n_i)
        den = _inner(g, _amap(g, n_o, n_i))
        mu = torch.where(den > 0, _inner(g, g) / den.clamp_min(1e-300), torch.zeros_like(den))
        x = z + mu[..., None, None] * g
        p = _left_subspace(x, p, steps=2)
        z = p @ (p.transpose(-1, -2) @ x)
    return _refit_core(p, _orth(z.transpose(-1, -2) @ p), r_mat, n_o, n_i, rank)


def fitted_energies(
    sketch: Sketch,
    orders: torch.Tensor,
    rank: int,
    transform: str = CHIRP,
    iters: int = 8,
    grams: tuple[torch.Tensor, ...] | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """f_e(a_j) for every expert e of the sketch and every order in ``orders``: (E, J); or, with
    ``pairs = (experts, order indices)`` (P,) each, only those pairs: (P,).

    ``iters = 0`` is the screen: Z = the refit core on the top-r subspace of R (no IHT).
    ``grams`` = ``(Q2_o, Q4_o, Q2_i, Q4_i)`` from :func:`side_grams` may be passed in when the
    caller already has them. Rank truncation uses warm-started subspace iteration (batched
    matmuls; a batched SVD of E·J small matrices costs ~10x more on a CPU).
    """
    if grams is None:
        grams = (*side_grams(sketch.u, orders, transform), *side_grams(sketch.v, orders, transform))
    q2o, q4o, q2i, q4i = grams
    side_o, side_i = _side(q2o, q4o, output=True), _side(q2i, q4i, output=False)
    zero = torch.zeros_like(sketch.cores)
    d = _blocks(sketch.cores, zero, zero, sketch.cores)  # (E, 2q, 2q)
    if pairs is not None:
        experts, idx = pairs
        group = sketch.group[experts]
        v_o, n_o, keep_o = (t[idx, group] for t in side_o)
        v_i, n_i, keep_i = (t[idx, group] for t in side_i)
        d, energy = d[experts], sketch.energy[experts]
    elif sketch.u.shape[0] == 1:  # one shared basis: broadcast over experts, no copies
        v_o, n_o, keep_o = (t[:, 0].unsqueeze(0) for t in side_o)
        v_i, n_i, keep_i = (t[:, 0].unsqueeze(0) for t in side_i)
        d, energy = d.unsqueeze(1), sketch.energy.unsqueeze(1)
    else:
        group = sketch.group
        v_o, n_o, keep_o = (t[:, group].transpose(0, 1) for t in side_o)
        v_i, n_i, keep_i = (t[:, group].transpose(0, 1) for t in side_i)
        d, energy = d.unsqueeze(1), sketch.energy.unsqueeze(1)
    # R = V_oᵀ D_e V_i per (expert, order): (..., 2q, 2q)
    r_mat = v_o.transpose(-1, -2) @ d @ v_i
    k = r_mat.shape[-1]
    gen = torch.Generator().manual_seed(0)
    omega = torch.randn(k, rank, generator=gen, dtype=r_mat.dtype)
    p = _left_subspace(r_mat, r_mat @ omega, steps=3)
    z = _refit_core(p, _orth(r_mat.transpose(-1, -2) @ p), r_mat, n_o, n_i, rank)
    # After the exact core refit ⟨Z, 𝒜Z⟩ = ⟨R, Z⟩ (normal equations), so the captured energy
    # 2⟨R, Z⟩ − ⟨Z, 𝒜Z⟩ is ⟨R, Z⟩.
    captured = _inner(r_mat, z)
    if iters:
        # Two starts: from R, and from R plus noise of equal norm in the live coordinates (at
        # a = 1 the map has a null space and IHT from R alone stays in half of the space).
        noise = torch.randn(r_mat.shape, generator=gen, dtype=r_mat.dtype)
        noise = noise * keep_o.unsqueeze(-1) * keep_i.unsqueeze(-2)
        scale = r_mat.norm(dim=(-1, -2), keepdim=True) / noise.norm(dim=(-1, -2), keepdim=True)
        noisy = _iht(r_mat + noise * scale.nan_to_num(0.0), r_mat, n_o, n_i, rank, 0)
        captured = torch.full_like(captured, -math.inf)
        for z0 in (z, noisy):
            zi = _iht(z0, r_mat, n_o, n_i, rank, iters)
            captured = torch.maximum(
                captured, 2 * _inner(r_mat, zi) - _inner(zi, _amap(zi, n_o, n_i))
            )
    return (captured / energy.to(captured.dtype).clamp_min(1e-300)).clamp(0.0, 1.0)


def candidate_grid(width: int, points_per_unit: float) -> torch.Tensor:
    """Orders ``j / (points_per_unit · width)`` covering [0, 1] (both ends included)."""
    n = max(2, math.ceil(points_per_unit * width))
    return torch.arange(n + 1, dtype=torch.float64) / n
