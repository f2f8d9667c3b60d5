"""FourierMoE (docs/methods.md §3) specifics: saved positions, the spectral maths (real ΔW,
activation path = dense IDFT2), the exact relation to PEFT's FourierFT, the frequency-adaptive
router and config validation.

The adapter-core matrix (identity at init, disable, trainable set, aux loss per module, bf16 with
float32 routers and int64 positions, save/load with positions in a fresh process) and the
active-parameter formula k·2n + E·d_in + E² run in ``test_adapters_matrix.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frame_peft as fp
from _adapters import inputs, perturb
from _models import MODELS
from frame_peft.core.adapter import build_adapter
from frame_peft.core.inject import find_injection
from frame_peft.methods.fouriermoe import FourierMoEAdapter, FourierMoEConfig
from frame_peft.methods.fouriermoe.layer import (
    band_energies,
    centered_label,
    frequency_rings,
    half_plane_size,
)
from frame_peft.methods.fouriermoe.spectral_mix import Dispatch, build_pattern, spectral_mix


def make_config(t):
    return FourierMoEConfig(
        target_modules=t, num_experts=4, top_k=2, num_coefficients=16, dropout=0.0
    )


def build(model_name: str):
    return fp.inject(MODELS[model_name](), make_config("all-linear"))


def adapter(d_in=16, d_out=24, **kw) -> FourierMoEAdapter:
    cfg = FourierMoEConfig(**{"num_experts": 4, "top_k": 2, "num_coefficients": 8, **kw})
    a = build_adapter(cfg, d_in, d_out, "m")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        a.coef_real.normal_(generator=g)
        a.coef_imag.normal_(generator=g)
    return a


# --- positions are saved ---------------------------------------------------------------------


def test_positions_are_loaded_from_the_file_not_rederived(tmp_path):
    model = build("llama")
    perturb(model)
    name, layer = next(iter(fp.adapted_layers(model).items()))
    with torch.no_grad():  # swap two experts' positions: a valid but non-default layout
        layer.adapter.positions.copy_(layer.adapter.positions.flip(0))
        expected = model(**inputs()).logits
    fp.save_adapter(model, tmp_path / "ad")
    loaded = fp.load_adapter(MODELS["llama"](), tmp_path / "ad")
    got = fp.adapted_layers(loaded)[name].adapter.positions
    assert torch.equal(got, layer.adapter.positions)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs()).logits, expected)


# --- positions and bands ---------------------------------------------------------------------


@pytest.mark.parametrize(("d_out", "d_in"), [(24, 16), (15, 33), (32, 32), (17, 17)])
def test_half_plane_and_rings(d_out, d_in):
    uv, bounds = frequency_rings(d_out, d_in, 4)
    assert uv.shape[0] == half_plane_size(d_out, d_in)
    u, v = uv[:, 0] % d_out, uv[:, 1] % d_in
    keys = set(zip(u.tolist(), v.tolist(), strict=True))
    mirrors = set(zip(((-u) % d_out).tolist(), ((-v) % d_in).tolist(), strict=True))
    assert len(keys) == uv.shape[0]  # distinct
    assert not keys & mirrors  # never both (u, v) and (−u, −v), never self-conjugate
    assert len(keys | mirrors) + (d_out * d_in - 2 * len(keys)) == d_out * d_in
    rho = (uv[:, 0].double() / d_out) ** 2 + (uv[:, 1].double() / d_in) ** 2
    assert torch.all(rho[1:] >= rho[:-1])  # sorted by radial frequency
    sizes = bounds.diff()
    assert sizes.max() - sizes.min() <= 1  # equal-count rings


def test_each_expert_draws_distinct_positions_in_its_ring():
    a = adapter(16, 24, num_coefficients=10)
    uv, bounds = frequency_rings(24, 16, 4)
    ring_of = {tuple(p): e for e in range(4) for p in uv[bounds[e] : bounds[e + 1]].tolist()}
    for e in range(4):
        pts = [tuple(p) for p in a.positions[e].tolist()]
        assert len(set(pts)) == 10
        assert all(ring_of[p] == e for p in pts)
    b = build_adapter(a_config(), 16, 24, "other.module")
    c = build_adapter(a_config(), 16, 24, "m")
    assert not torch.equal(b.positions, a.positions)  # the name enters the seed
    assert torch.equal(c.positions, a.positions)  # and is stable


def a_config():
    return FourierMoEConfig(num_experts=4, top_k=2, num_coefficients=10)


def test_centered_label():
    assert centered_label(torch.arange(4), 4).tolist() == [0, 1, -2, -1]
    assert centered_label(torch.arange(5), 5).tolist() == [0, 1, 2, -2, -1]


# --- the spectral maths ----------------------------------------------------------------------


@pytest.mark.parametrize(("d_out", "d_in"), [(24, 16), (15, 33), (32, 32)])
def test_dense_delta_weight_is_real(d_out, d_in):
    a = adapter(d_in, d_out)
    dw = a.dense_delta_weights(torch.float64, complex_result=True)
    assert dw.real.abs().max() > 1e-2
    assert dw.imag.abs().max() < 1e-12
    s = a.dense_spectra()  # Hermitian: S[−u, −v] = conj S[u, v]
    mirror = torch.roll(s.flip(-1).flip(-2), shifts=(1, 1), dims=(-2, -1))
    assert torch.equal(mirror, s.conj())


@pytest.mark.parametrize(("d_out", "d_in", "top_k"), [(24, 16, 2), (15, 33, 4), (32, 32, 1)])
def test_activation_path_equals_dense_idft2(d_out, d_in, top_k):
    a = adapter(d_in, d_out, top_k=top_k)
    x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(1))
    fast = a(x, x)
    dense = a.reference_forward(x, x)
    assert fast.shape == (3, 5, d_out) and fast.dtype == torch.float32
    assert (fast.double() - dense).abs().max() <= 1e-5 * dense.abs().max()
    # also against the hand-built gated sum of explicit IDFT2 weights
    gates = a.route(x.reshape(-1, d_in)).gates.double()
    dw = a.alpha * torch.fft.ifft2(a.dense_spectra()).real
    manual = torch.einsum("te,eoi,ti->to", gates, dw, x.reshape(-1, d_in).double())
    assert torch.allclose(dense.reshape(-1, d_out), manual, atol=1e-12)


def test_delta_weight_only_for_one_expert():
    with pytest.raises(fp.NotMergeableError):
        adapter().delta_weight()
    a = adapter(16, 24, num_experts=1, top_k=1)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a(x, x), x @ a.delta_weight().T, atol=1e-5)


def _peft_fourierft(d_in, d_out, n, scaling):
    peft = pytest.importorskip("peft")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(d_in, d_out, bias=False)

    cfg = peft.FourierFTConfig(target_modules=["lin"], n_frequency=n, scaling=scaling)
    return peft.get_peft_model(Net(), cfg).base_model.model.lin


@pytest.mark.parametrize("mirror", [False, True])
def test_one_expert_real_coefficients_equal_peft_fourierft(mirror):
    """Re(ifft2(D)) = ifft2((D + D^R)/2) for real D, so FourierMoE with real c at (u, v) and
    conj(c) = c at (−u, −v) equals FourierFT with c at (u, v) (or at (−u, −v)) and s = 2α."""
    d_in, d_out, n = 16, 24, 40
    a = adapter(d_in, d_out, num_experts=1, top_k=1, num_coefficients=n)
    with torch.no_grad():
        a.coef_imag.zero_()
    layer = _peft_fourierft(d_in, d_out, n, scaling=2 * a.alpha)
    sign = -1 if mirror else 1
    u = (sign * a.positions[0, :, 0]) % d_out
    v = (sign * a.positions[0, :, 1]) % d_in
    layer.indices["default"] = torch.stack([u, v])
    with torch.no_grad():
        layer.fourierft_spectrum["default"].copy_(a.coef_real[0])
    peft_dw = layer.get_delta_weight("default")
    assert torch.allclose(a.delta_weight(), peft_dw, atol=1e-6)
    x = torch.randn(5, d_in, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(a(x, x), layer(x) - layer.base_layer(x), atol=1e-5)


def test_imaginary_parts_add_the_odd_half_fourierft_cannot_express():
    """FourierFT's real spectrum gives centrosymmetric ΔW (cosines); imaginary c gives sines."""
    d_in, d_out = 16, 24
    layer = _peft_fourierft(d_in, d_out, 30, scaling=150.0)
    with torch.no_grad():
        layer.fourierft_spectrum["default"].normal_()
    dw = layer.get_delta_weight("default")
    point_mirror = torch.roll(dw.flip(0, 1), shifts=(1, 1), dims=(0, 1))  # ΔW[−p, −q]
    assert torch.allclose(dw, point_mirror, atol=1e-6)
    a = adapter(d_in, d_out, num_experts=1, top_k=1)
    with torch.no_grad():
        a.coef_real.zero_()
    dw = a.delta_weight()
    point_mirror = torch.roll(dw.flip(0, 1), shifts=(1, 1), dims=(0, 1))
    assert torch.allclose(dw, -point_mirror, atol=1e-6)  # purely odd
    assert dw.abs().max() > 1e-3


# --- the activation path: gradients, memory, structure ------------------------------------


def _params(a: FourierMoEAdapter) -> dict[str, torch.Tensor]:
    return dict(a.named_parameters())


def _grads(a: FourierMoEAdapter, path, x: torch.Tensor, upstream: torch.Tensor):
    """Gradients of ⟨path(x, x), upstream⟩ w.r.t. x and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    out = path(x, x)
    names = list(_params(a))
    grads = torch.autograd.grad((out * upstream).sum(), [x, *_params(a).values()])
    return dict(zip(["x", *names], grads, strict=True))


@pytest.mark.parametrize(("d_out", "d_in", "top_k"), [(24, 16, 2), (15, 33, 4), (32, 32, 1)])
def test_activation_path_gradients_equal_dense_idft2(d_out, d_in, top_k):
    """Coefficients, both routers and the input (adapter input and router input) get the
    gradients of the dense float64 IDFT2 path."""
    a = adapter(d_in, d_out, top_k=top_k).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, d_in, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 6, d_out, generator=g, dtype=torch.float64)
    fast = _grads(a, a, x, upstream)
    dense = _grads(a, a.reference_forward, x, upstream)
    assert set(fast) == {"x", "coef_real", "coef_imag", "router.weight", "freq_router.weight"}
    for name, want in dense.items():
        assert want.abs().max() > 1e-6, name  # the comparison is not vacuous
        assert torch.allclose(fast[name], want, rtol=1e-9, atol=1e-9 * want.abs().max()), name


def test_activation_path_gradcheck():
    """float64 gradcheck of the adapter in its input and coefficients (routing fixed: the
    routers run in float32 by design, too coarse for finite differences), and of the mixing
    Function in free gate values."""
    a = adapter(12, 10, num_experts=3, top_k=2, num_coefficients=5).double()
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(5, 12, generator=g, dtype=torch.float64)

    def adapted(x, coef_real, coef_imag):
        params = {"coef_real": coef_real, "coef_imag": coef_imag}
        return torch.func.functional_call(a, params, (x, x0))

    coefs = (a.coef_real.detach().clone(), a.coef_imag.detach().clone())
    inputs = tuple(t.requires_grad_(True) for t in (x0.clone(), *coefs))
    assert torch.autograd.gradcheck(adapted, inputs)

    indices = a.route(x0).indices
    dispatch = Dispatch.from_indices(indices, a.num_experts)
    pattern = a.spectral_pattern()

    def mixed(x, coef_real, coef_imag, gates):  # the one-sided spectrum Z itself
        return spectral_mix(
            torch.fft.fft(x),
            torch.complex(coef_real, coef_imag),
            gates.reshape(-1)[dispatch.slots],
            pattern,
            dispatch,
            a.out_features,
        )

    with torch.no_grad():
        z = mixed(x0, *coefs, a.route(x0).gates.gather(-1, indices).double())
        dense = a.reference_forward(x0, x0) * (a.in_features / a.alpha)  # rfft(dense) = Z
    assert torch.allclose(z, torch.fft.rfft(dense), atol=1e-9 * float(dense.abs().max()))
    assert z.imag[:, 0].abs().max() == 0 and z.imag[:, -1].abs().max() == 0  # DC, Nyquist
    gates = torch.rand(5, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(mixed, (*inputs, gates))


def test_experts_without_tokens_and_float32_gradients():
    """A router that sends every token to expert 0 (top-1) leaves the other experts without
    tokens and with zero gradients; float32 gradients match the float64 dense path."""
    a = adapter(16, 24, top_k=1)
    with torch.no_grad():
        a.router.weight.zero_()
        a.router.weight[0] = 10.0  # logit_0 = 10·Σx > 0 = the other logits for positive-mean x
        a.freq_router.weight.zero_()
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(8)) + 3.0
    upstream = torch.randn(7, 24, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.route(x).indices, torch.zeros(7, 1, dtype=torch.long))
    fast = _grads(a, a, x, upstream)
    dense = _grads(a, a.reference_forward, x, upstream.double())
    assert fast["coef_real"][1:].abs().max() == 0 and fast["coef_real"][0].abs().max() > 0
    for name in ("x", "coef_real", "coef_imag"):
        want = dense[name].double()
        assert torch.allclose(fast[name].double(), want, atol=1e-5 * want.abs().max()), name


def test_activation_path_saves_no_per_coefficient_tables():
    """Backward keeps O(T·(d_in + d_out)) values: no saved tensor grows with T·k·n."""
    d_in, d_out, t = 64, 48, 32
    a = build_adapter(FourierMoEConfig(num_experts=4, top_k=2), d_in, d_out, "m")
    n = a.num_coefficients
    assert 2 * n > d_in + d_out  # so that a (T, k·n) table would be the largest saved tensor
    saved = []
    x = torch.randn(t, d_in, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda v: saved.append(v.numel()) or v, lambda v: v
    ):
        a(x, x).sum().backward()
    assert max(saved) <= max(t * max(d_in, d_out), a.num_experts * n)
    # O(T·(d_in + d_out)) in all, parameters aside (the old path saved ten (T, k·n) tables)
    assert sum(saved) <= 8 * t * (d_in + d_out) + 4 * a.num_experts * n


def test_new_positions_take_effect_and_pattern_checks():
    a = adapter(16, 24)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        a(x, x)  # builds and caches the sparse structure
        a.positions.copy_(a.positions.flip(0))  # valid layout, other rings per expert
        assert torch.allclose(a(x, x).double(), a.reference_forward(x, x), atol=1e-5)
    bad = a.positions.clone()
    bad[0, 0, 0] = 13  # row 13 of 24 lies in the lower half plane
    with pytest.raises(ValueError, match="half-plane rows"):
        build_pattern(bad, 24, 16)
    bad = a.positions.clone()
    bad[1, 1] = bad[1, 0]
    with pytest.raises(ValueError, match="twice"):
        build_pattern(bad, 24, 16)


# --- the frequency-adaptive router -----------------------------------------------------------


def test_band_energies_on_pure_tones():
    d_in, bands = 32, 4  # 17 rfft bins -> bands {0..4}, {5..8}, {9..12}, {13..16}
    q = torch.arange(d_in, dtype=torch.float64)
    for f, band in [(0, 0), (3, 0), (5, 1), (8, 1), (11, 2), (13, 3), (16, 3)]:
        x = torch.cos(2 * torch.pi * f * q / d_in + 0.3).unsqueeze(0)
        if f == 0:
            x = torch.ones(1, d_in, dtype=torch.float64)
        e = band_energies(x, bands)[0]
        total = float(x.square().sum())  # Parseval
        assert abs(float(e[band]) - total) < 1e-9 * total, (f, e)
        assert float(e.sum() - e[band]) < 1e-9 * total, (f, e)
    a = adapter(d_in, 8, feature_eps=1e-6)
    x = torch.sin(2 * torch.pi * 11 * q / d_in).float().unsqueeze(0)
    phi = a.router_features(x)[0]
    assert torch.allclose(phi[2], torch.log(torch.tensor(1e-6 + 16.0)), atol=1e-4)
    assert torch.allclose(phi[[0, 1, 3]], torch.log(torch.tensor(1e-6)), atol=1e-2)


def test_router_uses_band_features():
    a = adapter(32, 8)
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a.router.weight.zero_()
        want = a.router_features(x) @ a.freq_router.weight.T
        assert torch.allclose(a.router_logits(x), want)
        a.freq_router.weight.zero_()
        assert torch.equal(a.router_logits(x), torch.zeros(6, 4))


def test_z_loss_and_no_aux():
    a = adapter(z_loss_coef=0.1)
    x = torch.randn(4, 16)
    a(x, x)
    assert set(a.state.current.terms[0].losses) == {"balance", "z"}
    b = adapter(aux_loss="none")
    b(x, x)
    assert b.state.current.terms == []


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_coefficients": 0}, "num_coefficients"),
        ({"num_coefficients": 2.5}, "num_coefficients"),
        ({"alpha": None}, "explicit alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"feature_eps": 0.0}, "feature_eps"),
        ({"top_k": 9}, "top_k"),
        ({"aux_loss": "grouped"}, "aux_loss"),
        ({"overrides": {"q_proj": {"num_coefficients": -3}}}, "num_coefficients"),
        ({"overrides": {"q_proj": {"seed": 3}}}, "cannot be set per module"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FourierMoEConfig(**kwargs)


def test_config_defaults_roundtrip_and_too_many_coefficients():
    cfg = FourierMoEConfig()
    assert (cfg.num_experts, cfg.top_k, cfg.rank, cfg.alpha, cfg.dropout) == (8, 2, 4, 150.0, 0.05)
    assert fp.config_from_dict(cfg.to_dict()) == cfg
    a = build_adapter(cfg, 64, 96, "m")
    assert a.num_coefficients == 4 * (64 + 96) // 2  # rank-matched: 2n = r (d_in + d_out)
    small = build_adapter(cfg, 8, 8, "m")
    assert small.num_coefficients == half_plane_size(8, 8) // 8  # capped at the ring size
    too_many = FourierMoEConfig(num_coefficients=10_000, target_modules=["q_proj"])
    base = MODELS["llama"]()
    with pytest.raises(ValueError, match="exceeds"):
        fp.inject(base, too_many)
    assert find_injection(base) is None
