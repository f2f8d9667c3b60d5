r"""FourierMoE (docs/methods.md §3, reconstruction): a mixture of sparse, conjugate-symmetric
spectra.

**Frequency plane.** Frequencies are centered labels (docs/methods.md §1): ``u ∈ [−⌊d_out/2⌋,
⌈d_out/2⌉ − 1]``, ``v ∈ [−⌊d_in/2⌋, ⌈d_in/2⌉ − 1]``, taken modulo the length. The radial frequency
is ``ρ(u, v) = sqrt((u/d_out)² + (v/d_in)²)``.

**Definition of IDFT2 (choice).** For a spectrum S over (d_out, d_in) and *plain* 0-based weight
indices p (row), q (column)::

    IDFT2(S)[p, q] = 1/(d_out·d_in) · Σ_{u,v} S[u, v] · exp(2πi (u p / d_out + v q / d_in))

i.e. ``torch.fft.ifft2(ifftshift(S_centered))`` (norm="backward"), the convention of PEFT's
FourierFT. The spatial indices are not centered: centering them would only roll ΔW, i.e.
multiply every coefficient by a fixed phase.

**Experts.** The half-plane H holds one representative of every pair {(u, v), (−u, −v)} with
(u, v) ≠ (−u, −v): rows with ``u mod d_out ∈ (0, d_out/2)`` entirely, and in the self-mirrored
rows u = 0 and u = d_out/2 (even d_out) only ``0 < v < d_in/2``. The four self-conjugate points
(DC, Nyquist; they would need real coefficients) are **excluded** (choice), so |H| =
(d_out·d_in − #self-conjugate)/2. H is sorted by ρ (stable, ties by enumeration order) and cut into
E rings of equal count (sizes differ by at most one); expert e draws n distinct positions from ring
e with a generator seeded by ``module_seed(seed, name)`` (:mod:`frame_peft.core.seeds`). The
positions (E, n, 2) (centered labels u, v) are a persistent buffer, so a reload uses exactly the
saved positions. Expert e owns complex coefficients ``c_{e,j} = coef_real[e,j] +
i·coef_imag[e,j]`` (zero at init), and::

    S_e = Σ_j c_{e,j} δ_{(u_j, v_j)} + conj(c_{e,j}) δ_{(−u_j, −v_j)}      (Hermitian)
    ΔW_e = α · IDFT2(S_e) = (2α / (d_out d_in)) Σ_j Re(c_{e,j} e^{2πi(u_j p/d_out + v_j q/d_in)})

is real by construction.

**Activation path (no ΔW is ever built).** With ``X̂ = fft(x)`` (length d_in, unnormalised) and
real x, ``Σ_q x_q e^{2πi v q/d_in} = X̂[−v]``, so for ΔW = α·IDFT2(S)::

    (ΔW x)[p] = α/(d_out d_in) · Σ_u e^{2πi u p/d_out} Z[u],      Z[u] = Σ_v S[u, v] X̂[−v]

an inverse DFT along the output axis of S applied to the DFT of x along the input axis. Z is
Hermitian (Z[−u] = conj Z[u]), so only ``u ∈ [0, ⌊d_out/2⌋]`` is needed and ``irfft(Z, norm=
"forward")`` does the sum. For the gated mixture, per token t::

    Z_t = Σ_{e ∈ top-k(t)} ĝ_{t,e} · A_e X̂_t,      A_e[u_j mod d_out, (−v_j) mod d_in] = c_{e,j}

(a sparse (⌊d_out/2⌋+1) × d_in matrix with n entries per expert: gather X̂_t[−v_j], scale by c,
add into bin u_j). In the self-mirrored rows (u_j = 0 or d_out/2) the mirror conj(c) at
(u_j, −v_j) lands in the same row and adds the conjugate, i.e. 2·Re of the term (entry 2c, the
imaginary part of the bin dropped). Cost per token: one FFT, k·n complex multiply-adds, one irfft;
the FFTs are shared by all experts by linearity. The middle step (:mod:`.spectral_mix`) groups the
tokens by expert and applies each ``A_e`` as one CSR sparse × dense product, with a hand-written
backward (the adjoint product, and an SDDMM for the coefficients), so a step's extra memory is
O(T·(d_in + d_out)) (X̂ is saved for backward, Z and the gradients are transient) plus
O(T_e·(d_in + d_out)) per expert while it runs: no (T, k·n) table. The sparse structure is derived
from ``positions`` and cached until the buffer changes.

**Frequency-adaptive router.** ``φ(x)_b = log(ε + E_b(x))`` with ``E_b`` the energy of x's
unitary spectrum in 1-D band b: the rfft bins ``|v| ∈ [0, ⌊d_in/2⌋]`` are cut into E contiguous
bands of equal count, bin v counted with multiplicity 2 unless v is 0 or d_in/2 (so
``Σ_b E_b = ‖x‖²``, Parseval). ``logits = W_x x + W_f φ(x)`` (fp32; W_x (E, d_in) and W_f (E, E)
init N(0, 0.02)), then :func:`~frame_peft.routing.select_experts` (softmax, top-k, renormalise)
and the Switch / z losses of MoE-LoRA, recorded as an :class:`~frame_peft.routing.AuxTerm`.

**Relation to PEFT FourierFT.** PEFT builds ``s · Re(ifft2(D))`` with *real* D at uncentered
positions. For real D, ``Re(ifft2(D)) = ifft2((D + D^R)/2)`` with ``D^R[u,v] = D[−u,−v]``. Hence a
one-expert FourierMoE with real coefficients c_j (imag = 0) equals FourierFT with the same values at
(u_j, v_j) (or at (−u_j, −v_j)) and ``s = 2α``. FourierFT's updates are always centrosymmetric,
``ΔW[−p, −q] = ΔW[p, q]`` (cosines only); the imaginary parts here add the odd (sine) half.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.adapter import LayerContext, NotMergeableError
from ...core.routed import RoutedAdapter
from ...core.seeds import module_seed
from ...routing import Routing, select_experts
from .config import FourierMoEConfig
from .spectral_mix import Dispatch, SpectralPattern, build_pattern, spectral_mix


def centered_label(index: torch.Tensor, n: int) -> torch.Tensor:
    """Plain DFT index (0..n-1) -> centered label in [−⌊n/2⌋, ⌈n/2⌉ − 1]."""
    return (index + n // 2) % n - n // 2


@functools.lru_cache(maxsize=4)
def frequency_rings(d_out: int, d_in: int, num_rings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-plane H sorted by radial frequency, and ring boundaries.

    Returns ``(uv, bounds)``: ``uv`` (|H|, 2) int64 centered labels sorted by ρ (stable), and
    ``bounds`` (num_rings + 1,) with ring e = ``uv[bounds[e]:bounds[e+1]]``,
    ``bounds[e] = ⌊e·|H|/E⌋``. Cached per shape (modules of one shape share it).
    """
    a = torch.arange(d_out // 2 + 1)
    b = torch.arange(d_in)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    self_row = (aa == 0) | (2 * aa == d_out)
    keep = ~self_row | ((bb > 0) & (2 * bb < d_in))
    u = centered_label(aa[keep], d_out)
    v = centered_label(bb[keep], d_in)
    rho = torch.sqrt((u.double() / d_out) ** 2 + (v.double() / d_in) ** 2)
    order = torch.sort(rho, stable=True).indices
    uv = torch.stack([u[order], v[order]], dim=-1)
    size = uv.shape[0]
    bounds = torch.tensor([(e * size) // num_rings for e in range(num_rings + 1)])
    return uv, bounds


def half_plane_size(d_out: int, d_in: int) -> int:
    """|H| = (d_out·d_in − number of self-conjugate points) / 2."""
    n_self = (2 if d_out % 2 == 0 else 1) * (2 if d_in % 2 == 0 else 1)
    return (d_out * d_in - n_self) // 2


def draw_positions(d_out: int, d_in: int, num_experts: int, n: int, seed: int) -> torch.Tensor:
    """(E, n, 2) centered (u, v) labels: n distinct positions per expert from its ring."""
    uv, bounds = frequency_rings(d_out, d_in, num_experts)
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(num_experts):  # once at construction, not per step
        lo, hi = int(bounds[e]), int(bounds[e + 1])
        pick = torch.randperm(hi - lo, generator=g)[:n]
        out.append(uv[lo + pick])
    return torch.stack(out)


def band_of_bins(d_in: int, num_bands: int) -> torch.Tensor:
    """(⌊d_in/2⌋+1,) band index of each rfft bin: E contiguous bands of equal count."""
    bins = d_in // 2 + 1
    return (torch.arange(bins) * num_bands) // bins


def band_energies(x: torch.Tensor, num_bands: int) -> torch.Tensor:
    """Energy of x's unitary spectrum in each band: (T, d_in) -> (T, E), float32 or float64.

    ``E_b = Σ_{bins v in band b} m_v |X̂_v|²``, ``X̂ = rfft(x, norm="ortho")``, ``m_v = 1`` for
    v = 0 and v = d_in/2, else 2. ``Σ_b E_b = ‖x‖²``.
    """
    d_in = x.shape[-1]
    xf = x if x.dtype == torch.float64 else x.float()
    spec = torch.fft.rfft(xf, dim=-1, norm="ortho")
    power = spec.real.square() + spec.imag.square()
    mult = torch.full((power.shape[-1],), 2.0, dtype=power.dtype, device=power.device)
    mult[0] = 1.0
    if d_in % 2 == 0:
        mult[-1] = 1.0
    band = band_of_bins(d_in, num_bands).to(power.device)
    out = torch.zeros(*power.shape[:-1], num_bands, dtype=power.dtype, device=power.device)
    return out.index_add_(-1, band, power * mult)


class FourierMoEAdapter(RoutedAdapter):
    """E sparse spectral experts, frequency-adaptive top-k router, explicit aux losses.

    Parameters: ``coef_real``, ``coef_imag`` (E, n); ``router.weight`` (E, d_in) = W_x;
    ``freq_router.weight`` (E, E) = W_f. Buffer: ``positions`` (E, n, 2) int64 (persistent).
    """

    fp32_parameters = ("router.weight", "freq_router.weight")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: FourierMoEConfig,
        context: LayerContext,
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        e, name = self.num_experts, context.name
        self.alpha = float(config.alpha)
        self.eps = float(config.feature_eps)
        ring = half_plane_size(out_features, in_features) // e
        if ring < 1:
            raise ValueError(
                f"{name}: a {out_features}×{in_features} layer has only "
                f"{half_plane_size(out_features, in_features)} half-plane frequencies, fewer "
                f"than num_experts={e}; use fewer experts for this module (overrides)"
            )
        n = config.num_coefficients
        if n is None:
            n = min(math.ceil(config.rank * (in_features + out_features) / 2), ring)
        elif n > ring:
            raise ValueError(
                f"{name}: num_coefficients={n} exceeds the {ring} frequencies of each of the "
                f"{e} rings of a {out_features}×{in_features} layer; lower num_coefficients "
                "or num_experts for this module (overrides), or leave it None (auto)"
            )
        self.num_coefficients = n
        seed = module_seed(int(config.seed), name)
        self.register_buffer("positions", draw_positions(out_features, in_features, e, n, seed))
        self._pattern_cache: tuple[torch.Tensor, int, SpectralPattern] | None = None
        self.coef_real = nn.Parameter(torch.zeros(e, n))
        self.coef_imag = nn.Parameter(torch.zeros(e, n))
        self.router = self.make_router()
        self.freq_router = nn.Linear(e, e, bias=False)
        with torch.no_grad():
            self.freq_router.weight.normal_(0.0, 0.02)

    # Routing ---------------------------------------------------------------------------------
    def router_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) = log(ε + band energies): (T, d_in) -> (T, E) float32."""
        return torch.log(self.eps + band_energies(x.float(), self.num_experts))

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``W_x x + W_f φ(x)``: (T, d_in) -> (T, E), float32."""
        return self.router.logits(x) + F.linear(
            self.router_features(x), self.freq_router.weight.float()
        )

    def routing(
        self, route_x: torch.Tensor, lead: torch.Size, mask: torch.Tensor | None
    ) -> Routing:
        """Top-k of ``softmax(W_x x + W_f φ(x))`` for flat tokens (T, d_in)."""
        return select_experts(self.router_logits(route_x), self.top_k)

    # Spectral experts ------------------------------------------------------------------------
    def spectral_pattern(self) -> SpectralPattern:
        """CSR structure of the experts (from ``positions``), rebuilt when the buffer changes.

        The cache key is the buffer object and its in-place version counter, so ``.to()``,
        ``load_state_dict`` and in-place edits of ``positions`` all invalidate it.
        """
        pos = self.positions
        cached = self._pattern_cache
        if cached is None or cached[0] is not pos or cached[1] != pos._version:
            cached = (pos, pos._version, build_pattern(pos, self.out_features, self.in_features))
            self._pattern_cache = cached
        return cached[2]

    def spectral_mixture(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """``Σ_e ĝ_e ΔW_e x`` by FFT → per-expert sparse product → irfft: (T, d_in) -> (T, d_out).

        Runs in float32 (float64 for float64 input) whatever the model dtype.
        """
        ftype = torch.float64 if x.dtype == torch.float64 else torch.float32
        spec = torch.fft.fft(x.to(ftype), dim=-1)  # X̂, unnormalised; A_e reads X̂[−v]
        coef = torch.complex(self.coef_real.to(ftype), self.coef_imag.to(ftype))
        dispatch = Dispatch.from_indices(routing.indices, self.num_experts)
        gates = routing.gates.gather(-1, routing.indices).to(ftype).reshape(-1)[dispatch.slots]
        z = spectral_mix(
            spec, coef, gates, self.spectral_pattern(), dispatch, self.out_features
        )  # (T, ⌊d_out/2⌋+1)
        y = torch.fft.irfft(z, n=self.out_features, norm="forward")
        return y * (self.alpha / (self.out_features * self.in_features))

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """x, route_x (..., d_in) -> Δy (..., d_out) in x's dtype."""
        lead = x.shape[:-1]
        routing = self.route(route_x)
        out = self.spectral_mixture(x.reshape(-1, self.in_features), routing)
        return out.to(x.dtype).reshape(*lead, self.out_features)

    # Dense reference (tests, merging) --------------------------------------------------------
    def dense_spectra(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(E, d_out, d_in) complex Hermitian spectra S_e at plain DFT indices (u mod d_out)."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        e, n = self.coef_real.shape
        c = torch.complex(self.coef_real.to(dtype), self.coef_imag.to(dtype))
        u = self.positions[..., 0] % self.out_features
        v = self.positions[..., 1] % self.in_features
        ex = torch.arange(e, device=c.device).unsqueeze(-1).expand(e, n)
        s = torch.zeros(e, self.out_features, self.in_features, dtype=cdtype, device=c.device)
        s = s.index_put((ex, u, v), c, accumulate=True)
        return s.index_put(
            (ex, (-u) % self.out_features, (-v) % self.in_features), c.conj(), accumulate=True
        )

    def dense_delta_weights(
        self, dtype: torch.dtype = torch.float64, complex_result: bool = False
    ) -> torch.Tensor:
        """``ΔW_e = α · IDFT2(S_e)``, (E, d_out, d_in); real part unless ``complex_result``."""
        dw = self.alpha * torch.fft.ifft2(self.dense_spectra(dtype))
        return dw if complex_result else dw.real

    def reference_forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        """Dense path: ``Σ_e ĝ_e ΔW_e x`` with explicit float64 ΔW_e (tests only)."""
        lead = x.shape[:-1]
        gates = select_experts(
            self.router_logits(route_x.reshape(-1, self.in_features)), self.top_k
        ).gates
        dw = self.dense_delta_weights(torch.float64)
        per_expert = torch.einsum("eoi,ti->teo", dw, x.reshape(-1, self.in_features).double())
        out = (gates.double().unsqueeze(-1) * per_expert).sum(1)
        return out.reshape(*lead, self.out_features)

    def expert_deltas(self) -> torch.Tensor:
        """``α · IDFT2(S_e)`` for every expert, (E, d_out, d_in) float64 (dense: small layers)."""
        return self.dense_delta_weights(torch.float64)

    def delta_weight(self) -> torch.Tensor:
        if self.num_experts != 1:
            raise NotMergeableError(
                f"{self.name}: a mixture of {self.num_experts} spectral experts routes each "
                "token differently, so it has no single ΔW; only one-expert FourierMoE merges"
            )
        return self.dense_delta_weights(torch.float64)[0].to(self.coef_real.dtype)

    def active_parameters(self) -> int:
        k = min(self.top_k, self.num_experts)
        per_expert = 2 * self.num_coefficients
        return k * per_expert + self.router.weight.numel() + self.freq_router.weight.numel()
