"""The order scan's targets: what each FRAME expert should add, from recorded tokens.

For expert e of a module, with the recorded tokens' gates g (only tokens routed to e, g > 0),
inputs x and output gradients δ (:mod:`.scan_stats`)::

    C_e = Σ_n g_n δ_n x_nᵀ            (d_out, d_in)
    Σ_e = Σ_n g_n x_n x_nᵀ            (d_in, d_in)
    W_e = C_e (Σ_e + λ I)⁻¹,          λ = ridge · tr(Σ_e) / d_in

the **whitened** target: the least-squares update that moves the expert's gated outputs along
δ (an identity output-Hessian Newton step). Whitening matters: on the raw gradient C_e every
order loses to a = 0 (LLM inputs are strongly anisotropic, and that anisotropy lives in the
spatial basis).

W_e is kept factored, ``W_e = Lᵀ K`` with inner size m = min(N_e, d_in): with X_g = √g·X and
Δ_g = √g·Δ (N_e rows), either ``L = Δ_g, K = (X_g X_gᵀ + λI)⁻¹ X_g`` (N_e < d_in: the push-through
identity) or ``L = X_gᵀ Δ_g, K = (X_gᵀ X_g + λI)⁻¹``. Nothing of size d_out × d_in is formed.

:func:`sketch_targets` turns a module's targets into the rank-q :class:`~.order_fit.Sketch` the
fit works on: one orthonormal basis per side shared by all experts (the top-q singular subspace
of the experts' unit-norm targets side by side, by a randomized range finder with two power
steps), or one per expert; the cores ``S_e = Uᵀ W_e V`` are exact projections of the full targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .order_fit import Sketch
from .scan_stats import TokenStats

#: λ = RIDGE · tr(Σ_e) / d_in.
RIDGE = 1e-3
#: Extra columns of the randomized range finder.
OVERSAMPLE = 8


@dataclass
class Target:
    """``W = lᵀ k`` (d_out, d_in) with l (m, d_out), k (m, d_in), float64; ``energy = ‖W‖²``;
    ``tokens`` = N_e, the tokens routed to the expert."""

    l: torch.Tensor
    k: torch.Tensor
    energy: float
    tokens: int

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """W v for v (d_in, c)."""
        return self.l.T @ (self.k @ v)

    def apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """Wᵀ u for u (d_out, c)."""
        return self.k.T @ (self.l @ u)

    def dense(self) -> torch.Tensor:
        return self.l.T @ self.k


def whitened_targets(
    stats: TokenStats,
    ridge: float = RIDGE,
    delta_for: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> list[Target | None]:
    """One :class:`Target` per expert (None for an expert no recorded token was routed to).

    ``delta_for(e, routed)`` (rescans) replaces δ of expert e's routed tokens (a bool mask over
    the recorded tokens) with what it returns, (N_e, d_out): the residual target plus the
    expert's own contribution.
    """
    x, delta, gates = stats.x.double(), stats.delta.double(), stats.gates.double()
    d_in = x.shape[1]
    out: list[Target | None] = []
    for e in range(gates.shape[1]):
        routed = gates[:, e] > 0
        n = int(routed.sum())
        if n == 0:
            out.append(None)
            continue
        root = gates[routed, e].sqrt().unsqueeze(1)
        own = delta[routed] if delta_for is None else delta_for(e, routed).double()
        xg, dg = x[routed] * root, own * root
        trace = float(xg.square().sum())
        lam = ridge * trace / d_in if trace > 0 else ridge
        if n < d_in:
            gram = xg @ xg.T  # (n, n)
            k = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype), xg)
            l_ = dg
            inner = k @ k.T  # = K⁻¹ G K⁻¹
        else:
            sigma = xg.T @ xg + lam * torch.eye(d_in, dtype=x.dtype)
            k = torch.linalg.inv(sigma)
            l_ = xg.T @ dg  # (d_in, d_out)
            inner = k @ k.T
        energy = float(((l_ @ l_.T) * inner).sum())  # tr(L Lᵀ K Kᵀ) = ‖Lᵀ K‖²
        out.append(Target(l_, k, energy, n))
    return out


def _range(apply_all, dim: int, width: int, steps: int, gen: torch.Generator, apply_back):
    """Orthonormal (dim, width) basis of the range of Σ_e W_e Ω_e with ``steps`` power steps."""
    y = apply_all(gen)
    for _ in range(steps):
        y = torch.linalg.qr(y).Q
        y = apply_back(y)
    return torch.linalg.qr(y).Q


def _top(basis: torch.Tensor, project, q: int) -> torch.Tensor:
    """The q directions of ``basis`` that carry the most energy of the projected targets."""
    gram = project(basis)  # (c, c) = Σ_e Bᵀ W_e W_eᵀ B
    _, vecs = torch.linalg.eigh(gram)
    return basis @ vecs[:, -q:].flip(-1)


def _shared_basis(targets: list[Target], d_out: int, d_in: int, q: int, seed: int):
    width = min(q + OVERSAMPLE, d_out, d_in)
    gen = torch.Generator().manual_seed(seed)
    unit = [1.0 / max(t.energy, 1e-300) ** 0.5 for t in targets]

    def left_sample(g):
        return sum(s * t.apply(torch.randn(d_in, width, generator=g, dtype=torch.float64))
                   for s, t in zip(unit, targets, strict=True))  # fmt: skip

    def right_sample(g):
        return sum(s * t.apply_t(torch.randn(d_out, width, generator=g, dtype=torch.float64))
                   for s, t in zip(unit, targets, strict=True))  # fmt: skip

    def left_back(u):  # Σ_e Ŵ_e Ŵ_eᵀ u
        return sum(s * s * t.apply(t.apply_t(u)) for s, t in zip(unit, targets, strict=True))

    def right_back(v):
        return sum(s * s * t.apply_t(t.apply(v)) for s, t in zip(unit, targets, strict=True))

    u = _range(left_sample, d_out, width, 2, gen, left_back)
    v = _range(right_sample, d_in, width, 2, gen, right_back)

    def left_gram(b):
        cols = [s * t.apply_t(b) for s, t in zip(unit, targets, strict=True)]  # (d_in, c) each
        return sum(c.T @ c for c in cols)

    def right_gram(b):
        cols = [s * t.apply(b) for s, t in zip(unit, targets, strict=True)]
        return sum(c.T @ c for c in cols)

    q = min(q, width)
    return _top(u, left_gram, q), _top(v, right_gram, q)


def sketch_targets(
    targets: list[Target | None],
    d_out: int,
    d_in: int,
    q: int,
    basis: str = "shared",
    seed: int = 0,
) -> tuple[Sketch, list[int]]:
    """The rank-q :class:`Sketch` of a module's targets and the experts it covers (those with a
    target). ``basis``: ``"shared"`` (one basis per side for all experts) or ``"expert"``."""
    present = [e for e, t in enumerate(targets) if t is not None and t.energy > 0]
    if not present:
        raise ValueError("no expert of this module has a non-zero target")
    ts = [targets[e] for e in present]
    q = min(q, d_out, d_in)
    if basis == "shared":
        u, v = _shared_basis(ts, d_out, d_in, q, seed)
        us, vs = u.unsqueeze(0), v.unsqueeze(0)
        group = torch.zeros(len(ts), dtype=torch.long)
    elif basis == "expert":
        pairs = [_shared_basis([t], d_out, d_in, q, seed + i) for i, t in enumerate(ts)]
        qmin = min(p[0].shape[1] for p in pairs)
        us = torch.stack([p[0][:, :qmin] for p in pairs])
        vs = torch.stack([p[1][:, :qmin] for p in pairs])
        group = torch.arange(len(ts))
    else:
        raise ValueError(f"basis must be 'shared' or 'expert', got {basis!r}")
    cores = torch.stack(
        [(t.l @ us[g]).T @ (t.k @ vs[g]) for t, g in zip(ts, group.tolist(), strict=True)]
    )
    energy = torch.tensor([t.energy for t in ts], dtype=torch.float64)
    return Sketch(us, vs, cores, energy, group), present
