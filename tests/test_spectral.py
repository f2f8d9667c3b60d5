"""The spectral analysis on constructed matrices whose answer is known, its nulls and its test.

Band energies: an update built from frequencies of one FourierMoE ring puts all its energy in that
band; Parseval; a smooth update sits below the random nulls. Compactness: an update that is
rank r at a known order peaks there and captures all its energy, and LoRA r equals the curve at
order 0. The permutation test separates groups that differ and not groups that do not.
"""

from __future__ import annotations

import math

import pytest
import torch

from frame_peft.analysis.spectral import (
    band_map,
    band_profile,
    checkpoint_deltas,
    null_profiles,
    spectral_profiles,
)
from frame_peft.analysis.spectral_compact import compactness_curve, dense_target, lora_energy
from frame_peft.analysis.spectral_stats import permutation_test, profile_distance
from frame_peft.methods.fouriermoe.layer import frequency_rings
from frame_peft.methods.frame.order_fit import order_map


def _ring_update(d_out: int, d_in: int, bands: int, band: int, seed: int = 0) -> torch.Tensor:
    """A real ΔW whose spectrum lives on ring ``band`` of FourierMoE's rings (Hermitian fill)."""
    g = torch.Generator().manual_seed(seed)
    uv, bounds = frequency_rings(d_out, d_in, bands)
    ring = uv[int(bounds[band]) : int(bounds[band + 1])]
    c = torch.randn(len(ring), dtype=torch.complex128, generator=g)
    s = torch.zeros(d_out, d_in, dtype=torch.complex128)
    s[ring[:, 0] % d_out, ring[:, 1] % d_in] += c
    s[(-ring[:, 0]) % d_out, (-ring[:, 1]) % d_in] += c.conj()
    w = torch.fft.ifft2(s)
    assert w.imag.abs().max() < 1e-12
    return w.real


@pytest.mark.parametrize("shape", [(32, 32), (24, 40), (15, 33)])
@pytest.mark.parametrize("band", [0, 3, 7])
def test_an_update_in_one_ring_has_all_its_energy_in_that_band(shape, band):
    w = _ring_update(*shape, bands=8, band=band)
    prof = band_profile(w, 8)
    assert prof["bands"][band] == pytest.approx(1.0, abs=1e-12)
    assert sum(prof["bands"]) == pytest.approx(1.0)
    assert prof["excluded"] == pytest.approx(0.0, abs=1e-12)
    assert prof["energy"] == pytest.approx(float(w.square().sum()), rel=1e-10)  # Parseval
    assert prof["centroid"] == pytest.approx((band + 0.5) / 8)
    assert prof["low_fraction"] == pytest.approx(1.0 if band < 2 else 0.0, abs=1e-12)


def test_band_map_is_fouriermoes_rings_and_conjugate_symmetric():
    d_out, d_in, b = 12, 10, 4
    m = band_map(d_out, d_in, b)
    p, q = torch.meshgrid(torch.arange(d_out), torch.arange(d_in), indexing="ij")
    assert torch.equal(m, m[(-p) % d_out, (-q) % d_in])  # a pair shares its band
    assert int((m < 0).sum()) == 4  # DC and the three Nyquist crossings (even × even)
    counts = torch.bincount(m[m >= 0], minlength=b)
    assert counts.max() - counts.min() <= 2  # equal-count rings (pairs: ±1 pair)
    # the lowest band holds the smallest radial frequencies
    u = (p + d_out // 2) % d_out - d_out // 2
    v = (q + d_in // 2) % d_in - d_in // 2
    rho = ((u / d_out) ** 2 + (v / d_in) ** 2).sqrt()
    assert rho[m == 0].max() <= rho[m == b - 1].min()


def test_dc_energy_is_excluded_and_a_constant_update_has_no_profile():
    prof = band_profile(torch.ones(8, 8), 4)
    assert prof["bands"] is None and prof["energy"] == pytest.approx(64.0)
    w = _ring_update(8, 8, 4, 1) + 0.5
    prof = band_profile(w, 4)
    assert prof["excluded"] == pytest.approx(16.0 / float(w.square().sum()), rel=1e-9)
    with pytest.raises(ValueError, match="NaN"):
        band_profile(torch.full((4, 4), math.nan), 2)
    with pytest.raises(ValueError, match="too few frequencies"):
        band_profile(torch.randn(2, 2), 8)


def test_nulls_are_flat_and_a_smooth_update_falls_outside_them():
    null = null_profiles(32, 48, 8, rank=4, draws=30, seed=0)
    for kind in ("dense", "lora"):
        assert null[kind]["mean"] == pytest.approx([1 / 8] * 8, abs=0.03)
        c = null[kind]["centroid"]
        assert c["lo"] < 0.5 < c["hi"]
    # the random-factor LoRA null is wider than the dense one (fewer degrees of freedom)
    width = {k: null[k]["centroid"]["hi"] - null[k]["centroid"]["lo"] for k in ("dense", "lora")}
    assert width["lora"] > width["dense"]
    x = torch.linspace(0, 2 * math.pi, 32).unsqueeze(1)
    y = torch.linspace(0, 2 * math.pi, 48).unsqueeze(0)
    smooth = torch.cos(x) * torch.sin(2 * y) + 0.3 * torch.cos(2 * x + y)  # low frequencies
    prof = band_profile(smooth, 8)
    assert prof["centroid"] < null["lora"]["centroid"]["lo"]
    assert prof["low_fraction"] > null["lora"]["low_fraction"]["hi"]


def test_spectral_profiles_group_by_kind_and_layer():
    updates = {f"model.layers.{i}.self_attn.{k}": _ring_update(16, 16, 4, i % 4, seed=i)
               for i in range(4) for k in ("q_proj", "v_proj")}  # fmt: skip
    updates["model.layers.9.self_attn.q_proj"] = torch.zeros(16, 16)
    out = spectral_profiles(updates, num_bands=4, null_draws=4)
    q = out["by_kind"]["q_proj"]
    assert q["layers"] == [0, 1, 2, 3]
    for i, row in enumerate(q["profiles"]):
        assert row[i] == pytest.approx(1.0)
    assert out["zero"] == ["model.layers.9.self_attn.q_proj"]
    assert set(out["nulls"]) == {"16x16"}


def test_checkpoint_deltas():
    a = {"l.weight": torch.zeros(3, 4), "l.bias": torch.zeros(3), "e.weight": torch.zeros(5, 2)}
    b = {"l.weight": torch.ones(3, 4), "l.bias": torch.ones(3), "e.weight": torch.ones(5, 3)}
    out = checkpoint_deltas(a, b)
    assert list(out) == ["l"] and torch.equal(out["l"], torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="share no"):
        checkpoint_deltas({"x.weight": torch.zeros(2, 2)}, {"y.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("order", [0.3, 0.65])
def test_an_update_low_rank_at_a_known_order_peaks_there(order):
    d, r = 32, 2
    g = torch.Generator().manual_seed(1)
    m = torch.randn(d, r, generator=g, dtype=torch.float64) @ torch.randn(
        r, d, generator=g, dtype=torch.float64
    )
    w = order_map(m, order)
    c = compactness_curve(w, r, points=16)
    assert abs(c["best_order"] - order) <= 1.0 / (8 * d) + 1e-9
    assert c["best_fitted"] > 0.99
    assert c["lora_r"] < 0.9 and c["lora_r"] <= c["lora_2r"]  # not compact in the spatial basis
    assert c["fitted"][0] == pytest.approx(c["lora_r"], abs=1e-6)  # FRAME at 0 is LoRA r
    assert c["gain_over_lora"] == pytest.approx(c["best_fitted"] - c["lora_r"])
    assert c["orders"] == sorted(c["orders"])


def test_a_spatial_low_rank_update_is_best_at_order_zero():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 32, generator=g, dtype=torch.float64
    )
    c = compactness_curve(w, 3, points=8)
    assert c["best_order"] == 0.0 and c["best_fitted"] == pytest.approx(1.0, abs=1e-6)
    assert lora_energy(dense_target(w), 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="even widths"):
        compactness_curve(torch.randn(5, 4), 1)
    with pytest.raises(ValueError, match="zero"):
        compactness_curve(torch.zeros(4, 4), 1)


def _profiles(centre: list[float], n: int, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor(centre, dtype=torch.float64) + noise * torch.rand(n, len(centre), generator=g)
    return p / p.sum(-1, keepdim=True)


def test_permutation_test_separates_differing_groups_and_not_equal_ones():
    a = _profiles([4, 2, 1, 1], 3, 0.3, seed=0)
    b = _profiles([1, 1, 2, 4], 3, 0.3, seed=1)
    res = permutation_test(torch.cat([a, b]), ["a"] * 3 + ["b"] * 3, permutations=500)
    assert res["between"] > res["within"] and res["statistic"] > 0
    # 3 vs 3: 20 labelings, 2 as extreme (the true one and its swap): p -> 0.1, the floor
    assert res["labelings"] == 20 and res["p_value"] < 0.15
    a5, b5 = _profiles([4, 2, 1, 1], 5, 0.3, seed=4), _profiles([1, 1, 2, 4], 5, 0.3, seed=5)
    res = permutation_test(torch.cat([a5, b5]), ["a"] * 5 + ["b"] * 5, permutations=2000)
    assert res["labelings"] == 252 and res["p_value"] < 0.02
    same = _profiles([1, 1, 1, 1], 12, 0.5, seed=2)
    res = permutation_test(same, ["a", "b"] * 6, permutations=500, seed=3)
    assert res["p_value"] > 0.05
    # stacks of profiles (runs: layer × band) and strata
    stacks = torch.stack([torch.cat([a, b])] * 2, dim=1)  # (6, 2, 4)
    res = permutation_test(stacks, ["a"] * 3 + ["b"] * 3, strata=[0, 1, 2] * 2, permutations=200)
    assert res["labelings"] == 8 and res["p_value"] >= 2 / 8 - 0.05  # 2^3 within-pair swaps
    assert profile_distance([1, 0], [0, 1]) == 1.0
    with pytest.raises(ValueError, match="replicates"):
        permutation_test(torch.cat([a, b[:1]]), ["a"] * 3 + ["b"])
    with pytest.raises(ValueError, match="NaN"):
        permutation_test(torch.full((4, 2), math.nan), ["a", "a", "b", "b"])
