r"""FourierMoE's gated sparse spectral mixing, ``Z = Σ_e ĝ_e ⊙ (A_e F)``, as one autograd Function.

Shapes: T tokens, E experts with n coefficients each, ``B = ⌊d_out/2⌋ + 1`` output rfft bins.

- ``F`` (T, d_in) complex: the unnormalised DFT ``F = fft(x)`` (a plain tensor; ``ifft`` of a real
  input would be a lazy conjugate view, which makes every gather several times slower).
- ``A_e`` (B, d_in) sparse, n entries: ``A_e[u_j mod d_out, (−v_j) mod d_in] = w_j · c_{e,j}``
  (the term ``c · X̂[−v]`` of the layer docstring) with ``w_j = 2`` in the self-mirrored output
  rows (u = 0 and u = d_out/2), else 1.
- ``Z[t] = Σ_{e ∈ top-k(t)} ĝ_{t,e} · A_e F[t]``, then the imaginary part of the self-mirrored bins
  is dropped (their value is 2·Re of the term: the mirror conj(c) at (u, −v) lands in the same
  row), so Z is exactly the one-sided Hermitian spectrum that ``irfft`` expects.

Each ``A_e`` is a CSR matrix (its structure is fixed by the saved positions, its values are the
live coefficients), applied to the dispatched tokens of expert e as one sparse × dense product:
gather, scale and accumulate in one pass, no (T, k·n) table. Memory: the Function saves only F
(T, d_in), the gates and the dispatch (T·k ints); per expert it holds (d_in + B, T_e) transients.

Backward (PyTorch's convention for complex tensors: the gradient of a real loss L w.r.t. z is
``∂L/∂Re z + i ∂L/∂Im z``; for ``z = a·w`` it is ``conj(a)·grad_z`` w.r.t. w), with ``G = gZ`` of
the dispatched tokens (self-mirrored bins' imaginary parts zeroed, the adjoint of dropping them)
and ``H_e = A_eᴴ Gᵀ`` (d_in, T_e):

- ``grad F[t] += ĝ_{t,e} · H_e[:, t]``
- ``grad ĝ_{t,e} = Re Σ_v conj(F[t, v]) H_e[v, t]``  (= Re⟨A_e F[t], G[t]⟩)
- ``grad A_e[u, v] = Σ_t ĝ_{t,e} G[t, u] conj(F[t, v])`` sampled at the n entries (SDDMM);
  ``grad c_{e,j} = w_j · grad A_e[u_j, v_j]``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpectralPattern:
    """CSR structure of the E sparse maps ``A_e`` (B, d_in) and of their transposes (d_in, B).

    Attributes:
        crow, col: (E, B + 1), (E, n) CSR row pointers / column indices of ``A_e``.
        perm: (E, n) coefficient index j of each CSR entry of ``A_e``.
        crow_t, col_t, perm_t: the same for ``A_eᵀ`` (rows = input bins).
        weight: (E, n) real, 2 for positions in a self-mirrored output row, else 1.
        bins_out: B = ⌊d_out/2⌋ + 1.  d_in: input length.
    """

    crow: torch.Tensor
    col: torch.Tensor
    perm: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm_t: torch.Tensor
    weight: torch.Tensor
    bins_out: int
    d_in: int

    def matrix(self, e: int, values: torch.Tensor) -> torch.Tensor:
        """``A_e`` as a sparse CSR (B, d_in) tensor; ``values`` (E, n) from :meth:`csr_values`."""
        return _csr(self.crow[e], self.col[e], values[e], (self.bins_out, self.d_in))

    def adjoint(self, e: int, values: torch.Tensor) -> torch.Tensor:
        """``A_eᴴ`` as a sparse CSR (d_in, B) tensor; ``values`` from :meth:`adjoint_values`."""
        return _csr(self.crow_t[e], self.col_t[e], values[e], (self.d_in, self.bins_out))

    def csr_values(self, vals: torch.Tensor) -> torch.Tensor:
        """(E, n) entries ``w·c`` (coefficient order) -> CSR order of ``A_e``."""
        return vals.gather(-1, self.perm)

    def adjoint_values(self, vals: torch.Tensor) -> torch.Tensor:
        """(E, n) entries ``w·c`` (coefficient order) -> conjugated, CSR order of ``A_eᵀ``."""
        return vals.gather(-1, self.perm_t).conj_physical()


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (once per process)
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _compressed(major: torch.Tensor, minor: torch.Tensor, majors: int, minors: int):
    """Per-expert CSR arrays of entries (major, minor), each (E, n): (crow, col, perm)."""
    e, n = major.shape
    offset = torch.arange(e, device=major.device).unsqueeze(-1) * (majors * minors)
    order = torch.argsort((offset + major * minors + minor).reshape(-1))  # experts stay in blocks
    perm = (order - torch.arange(e, device=major.device).repeat_interleave(n) * n).reshape(e, n)
    counts = torch.zeros(e, majors, dtype=torch.long, device=major.device)
    counts.scatter_add_(-1, major, torch.ones_like(major))
    crow = torch.cat([counts.new_zeros(e, 1), counts.cumsum(-1)], dim=-1)
    return crow, minor.gather(-1, perm), perm


def build_pattern(positions: torch.Tensor, d_out: int, d_in: int) -> SpectralPattern:
    """The CSR structure of every expert from centered positions (E, n, 2).

    Raises ``ValueError`` when a position lies outside the half-plane rows ``u mod d_out ∈
    [0, ⌊d_out/2⌋]`` (the one-sided spectrum has no other rows) or an expert holds a position
    twice (a CSR entry must be unique).
    """
    bins_out = d_out // 2 + 1
    row = positions[..., 0] % d_out
    col = (-positions[..., 1]) % d_in  # reads X̂[−v]
    if bool((row >= bins_out).any()):
        raise ValueError(
            f"positions must lie in the half-plane rows u mod d_out in [0, {bins_out - 1}]; "
            f"got a row {int(row.max())} (d_out={d_out})"
        )
    crow, col_sorted, perm = _compressed(row, col, bins_out, d_in)
    key = row.gather(-1, perm) * d_in + col_sorted
    if bool((key[:, 1:] == key[:, :-1]).any()):
        raise ValueError("an expert holds the same frequency position twice")
    crow_t, row_sorted, perm_t = _compressed(col, row, d_in, bins_out)
    self_row = (row == 0) | (2 * row == d_out)
    return SpectralPattern(
        crow=crow,
        col=col_sorted,
        perm=perm,
        crow_t=crow_t,
        col_t=row_sorted,
        perm_t=perm_t,
        weight=1.0 + self_row.float(),
        bins_out=bins_out,
        d_in=d_in,
    )


@dataclass(frozen=True)
class Dispatch:
    """Tokens grouped by expert: ``tokens`` (T·k,) token of each (token, slot) pair sorted by
    expert (stable), ``slots`` (T·k,) its flat index into the (T, k) top-k arrays, and
    ``counts`` the number of pairs per expert (a Python list: it sets the loop bounds)."""

    tokens: torch.Tensor
    slots: torch.Tensor
    counts: list[int]

    @classmethod
    def from_indices(cls, indices: torch.Tensor, num_experts: int) -> Dispatch:
        """From the router's (T, k) expert indices."""
        flat = indices.reshape(-1)
        slots = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=num_experts).tolist()
        return cls(slots // indices.shape[-1], slots, counts)

    def groups(self):
        """Yield ``(e, sl)`` with ``sl`` the slice of the sorted pairs routed to expert e."""
        start = 0
        for e, count in enumerate(self.counts):
            if count:
                yield e, slice(start, start + count)
            start += count


def _drop_self_imag(z: torch.Tensor, d_out: int) -> None:
    """Zero the imaginary part of the self-mirrored output bins (0 and d_out/2), in place."""
    z.imag[:, 0] = 0
    if d_out % 2 == 0:
        z.imag[:, -1] = 0


class SpectralMix(torch.autograd.Function):
    """``Z = Σ_e ĝ_e ⊙ (A_e F)``; see the module docstring for the maths and the gradients.

    Per expert the dispatched tokens are gathered and transposed to (features, T_e): the sparse
    products (MKL / cuSPARSE CSR × dense, and the SDDMM) are fastest with the token axis
    contiguous, and the scatter back by rows is fastest with contiguous rows.
    """

    @staticmethod
    def forward(ctx, spec, coef, gates, pattern: SpectralPattern, dispatch: Dispatch, d_out):
        """spec (T, d_in) complex, coef (E, n) complex, gates (T·k,) real in dispatch order."""
        vals = coef * pattern.weight.to(coef.real.dtype)
        csr_vals = pattern.csr_values(vals)
        z = spec.new_zeros(spec.shape[0], pattern.bins_out)
        for e, sl in dispatch.groups():
            tok = dispatch.tokens[sl]
            z_t = pattern.matrix(e, csr_vals) @ _gather_t(spec, tok)  # (B, T_e)
            z.index_add_(0, tok, z_t.mul_(gates[sl]).t().contiguous())
        _drop_self_imag(z, d_out)
        ctx.save_for_backward(spec, vals, gates)
        ctx.pattern, ctx.dispatch, ctx.d_out = pattern, dispatch, d_out
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z):
        spec, vals, gates = ctx.saved_tensors
        pattern, dispatch = ctx.pattern, ctx.dispatch
        need_spec, need_coef, need_gates = ctx.needs_input_grad[:3]
        g_spec = torch.zeros_like(spec) if need_spec else None
        g_vals = torch.zeros_like(vals) if need_coef else None
        g_gates = torch.zeros_like(gates) if need_gates else None
        csr_vals = pattern.csr_values(vals)
        adj_vals = pattern.adjoint_values(vals) if need_spec else None
        for e, sl in dispatch.groups():
            tok = dispatch.tokens[sl]
            a = pattern.matrix(e, csr_vals)
            f_t = _gather_t(spec, tok)  # (d_in, T_e)
            g_t = _gather_t(grad_z, tok)  # (B, T_e)
            _drop_self_imag(g_t.t(), ctx.d_out)  # on the copy: grad_z is not ours to change
            if need_gates:  # Re⟨A_e F[t], G[t]⟩, the forward product recomputed
                g_gates[sl] = torch.linalg.vecdot(a @ f_t, g_t, dim=0).real
            g_t.mul_(gates[sl])
            if need_spec:
                h = pattern.adjoint(e, adj_vals) @ g_t  # (d_in, T_e)
                g_spec.index_add_(0, tok, h.t().contiguous())
            if need_coef:  # Σ_t ĝ G[t,u] conj(F[t,v]) = conj((conj(ĝG)ᵀ F)[u, v]) at the entries
                sampled = torch.sparse.sampled_addmm(a, g_t.conj_physical(), f_t.t(), beta=0.0)
                # conj_physical: views (.conj, .real) of a CSR result's values() fail in torch 2.13
                g_vals[e, pattern.perm[e]] = sampled.values().conj_physical()
        g_coef = g_vals * pattern.weight.to(g_vals.real.dtype) if need_coef else None
        return g_spec, g_coef, g_gates, None, None, None


def _gather_t(rows: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """``rows[tok]ᵀ`` as a contiguous (features, T_e) tensor."""
    return rows.index_select(0, tok).t().contiguous()


def spectral_mix(
    spec: torch.Tensor,
    coef: torch.Tensor,
    gates: torch.Tensor,
    pattern: SpectralPattern,
    dispatch: Dispatch,
    d_out: int,
) -> torch.Tensor:
    """(T, ⌊d_out/2⌋+1) one-sided spectrum ``Z``; differentiable in spec, coef and gates."""
    return SpectralMix.apply(spec, coef, gates, pattern, dispatch, d_out)
