r"""Frequency energy of weight updates: FourierMoE's premise, measured on any update.

For an update ΔW (d_out × d_in; a LoRA/MoE-LoRA/FRAME/FourierMoE module's update, a full
fine-tune delta, or the difference of two checkpoints) the 2-D DFT ``F = fft2(ΔW)`` is cut into
**radial bands**, using exactly the bands FourierMoE's experts own
(:func:`frame_peft.methods.fouriermoe.layer.frequency_rings`, imported, not copied): the
half-plane H of the centered frequency plane (one representative of each conjugate pair
{(u, v), (−u, −v)}), sorted by the radial frequency ``ρ(u, v) = sqrt((u/d_out)² + (v/d_in)²)``
and cut into B rings of **equal count**. Band b of ΔW holds both members of every pair of ring b.
The self-conjugate points (DC, the Nyquist rows/columns' crossings: at most 4) belong to no ring;
their energy is reported as ``excluded``. By Parseval::

    Σ_b E_b + E_excluded = ‖ΔW‖_F²,   E_b = Σ_{(u,v) ∈ ring b ∪ −ring b} |F_uv|² / (d_out d_in)

Because the rings hold equal numbers of frequencies, a matrix of i.i.d. entries has the flat
profile 1/B in expectation, and so does a rank-r product of i.i.d. Gaussian factors (its
distribution is invariant under the unitary DFT up to the factor structure): "energy in the low
bands" is measured against that. :func:`null_profiles` draws both nulls for a given shape, so a
profile is called distinct only beyond the spread shape alone gives.

Summary numbers of a profile p (the band energies over Σ_b E_b, excluded points left out):

- ``centroid`` = Σ_b p_b (b + ½)/B ∈ (0, 1): ½ for a flat profile, low for low-frequency updates;
- ``low_fraction`` = Σ_{b < ⌈B/4⌉} p_b: the share of the lowest quarter of the bands (¼ if flat).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..methods.fouriermoe.layer import frequency_rings
from .modules import group_by_kind

__all__ = [
    "DEFAULT_BANDS",
    "band_map",
    "band_profile",
    "checkpoint_deltas",
    "module_updates",
    "null_profiles",
    "profile_summary",
    "spectral_profiles",
]

#: Bands used when none are asked for (FourierMoE's default expert count, E = 8).
DEFAULT_BANDS = 8


@functools.lru_cache(maxsize=16)
def band_map(d_out: int, d_in: int, num_bands: int) -> torch.Tensor:
    """(d_out, d_in) int64: the band of every plain-index DFT bin (−1: self-conjugate point).

    Bin (p, q) of ``torch.fft.fft2`` has centered label (u, v) = (p, q) shifted into
    [−⌊n/2⌋, ⌈n/2⌉ − 1]; it belongs to ring b of :func:`frequency_rings` if (u, v) or (−u, −v)
    is in that ring.
    """
    if num_bands < 1:
        raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    if d_out < 1 or d_in < 1 or d_out * d_in < 2 * num_bands + 4:
        raise ValueError(
            f"a {d_out}×{d_in} update has too few frequencies for {num_bands} bands; "
            "use fewer bands (--bands)"
        )
    uv, bounds = frequency_rings(d_out, d_in, num_bands)
    out = torch.full((d_out, d_in), -1, dtype=torch.long)
    for b in range(num_bands):
        ring = uv[int(bounds[b]) : int(bounds[b + 1])]
        u, v = ring[:, 0], ring[:, 1]
        out[u % d_out, v % d_in] = b
        out[(-u) % d_out, (-v) % d_in] = b
    return out


def band_profile(delta: torch.Tensor, num_bands: int = DEFAULT_BANDS) -> dict[str, Any]:
    """Band energies of one real update (d_out, d_in).

    Returns ``{"bands": [p_b] (sum 1 over the bands), "excluded": share of ‖ΔW‖² at the
    self-conjugate points, "energy": ‖ΔW‖², "centroid", "low_fraction"}``. A zero update has
    ``bands`` None (no profile) rather than NaNs.
    """
    if delta.dim() != 2:
        raise ValueError(f"an update is a (d_out, d_in) matrix, got shape {tuple(delta.shape)}")
    if delta.is_complex():
        raise ValueError("band_profile takes a real update (ΔW), not a spectrum")
    w = delta.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError("the update has NaN or inf entries: no frequency profile")
    d_out, d_in = w.shape
    bands = band_map(d_out, d_in, num_bands)
    power = torch.fft.fft2(w).abs().square() / (d_out * d_in)
    total = float(power.sum())
    inside = bands >= 0
    per_band = torch.zeros(num_bands, dtype=torch.float64).index_add_(
        0, bands[inside], power[inside]
    )
    band_total = float(per_band.sum())
    if not total > 0 or not band_total > 0:
        return {"bands": None, "excluded": None, "energy": total, "centroid": None,
                "low_fraction": None}  # fmt: skip
    profile = (per_band / band_total).tolist()
    return {
        "bands": profile,
        "excluded": 1.0 - band_total / total,
        "energy": total,
        **profile_summary(profile),
    }


def profile_summary(profile: list[float]) -> dict[str, float]:
    """``centroid`` and ``low_fraction`` of a normalised band profile (module docstring)."""
    b = len(profile)
    low = max(1, math.ceil(b / 4))
    return {
        "centroid": sum(p * (i + 0.5) / b for i, p in enumerate(profile)),
        "low_fraction": sum(profile[:low]),
    }


def null_profiles(
    d_out: int,
    d_in: int,
    num_bands: int = DEFAULT_BANDS,
    rank: int = 8,
    draws: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """The profiles shape alone gives: ``draws`` random dense matrices (i.i.d. N(0, 1)) and
    ``draws`` random rank-``rank`` LoRA updates ``B A`` (B, A i.i.d. N(0, 1)) of this shape.

    Returns ``{"dense": stats, "lora": stats, "rank": r, "draws": n}`` with, per null, the mean
    profile, its per-band 2.5 % / 97.5 % quantiles, and the mean, 2.5 % and 97.5 % quantile of
    ``centroid`` and ``low_fraction``.
    """
    if draws < 2:
        raise ValueError(f"draws must be >= 2 (a spread needs two draws), got {draws}")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"rank": rank, "draws": draws}
    for kind in ("dense", "lora"):
        rows = []
        for _ in range(draws):
            if kind == "dense":
                m = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
            else:
                b = torch.randn(d_out, rank, generator=gen, dtype=torch.float64)
                m = b @ torch.randn(rank, d_in, generator=gen, dtype=torch.float64)
            rows.append(band_profile(m, num_bands))
        prof = torch.tensor([r["bands"] for r in rows], dtype=torch.float64)
        stats: dict[str, Any] = {
            "mean": prof.mean(0).tolist(),
            "lo": prof.quantile(0.025, dim=0).tolist(),
            "hi": prof.quantile(0.975, dim=0).tolist(),
        }
        for key in ("centroid", "low_fraction"):
            vals = torch.tensor([r[key] for r in rows], dtype=torch.float64)
            stats[key] = {"mean": float(vals.mean()), "lo": float(vals.quantile(0.025)),
                          "hi": float(vals.quantile(0.975))}  # fmt: skip
        out[kind] = stats
    return out


def module_updates(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({module name: ΔW (d_out, d_in) float64}, {module name: why skipped})``.

    A mergeable adapter gives its ``delta_weight()``. A routed one (experts) gives the sum of its
    experts' updates ``Σ_e ΔW_e`` (each expert at gate 1; routing weights every token differently,
    so there is no single ΔW, and the sum shows which frequencies training put energy into). Asked
    of the adapter protocol, never of the method name.
    """
    from ..core.adapter import NotMergeableError
    from ..core.inject import require_injection

    updates: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for name, layer in require_injection(model).layers.items():
        adapter = layer.adapter
        try:
            with torch.no_grad():
                try:
                    dw = adapter.delta_weight()
                except NotMergeableError:
                    dw = adapter.expert_deltas().sum(0)
        except (NotImplementedError, NotMergeableError, AttributeError) as err:
            skipped[name] = f"no update matrix ({type(err).__name__}: {err})"
            continue
        updates[name] = dw.detach().to("cpu", torch.float64)
    return updates, skipped


def checkpoint_deltas(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], suffix: str = "weight"
) -> dict[str, torch.Tensor]:
    """``{module name: after − before}`` for every 2-D ``*.weight`` both state dicts hold with the
    same shape (a full fine-tune delta, or two checkpoints of a model). Embeddings and the LM
    head are matrices too and are included; filter the names for projections only."""
    out = {}
    for key, w1 in after.items():
        if not key.endswith(suffix) or key not in before:
            continue
        w0 = before[key]
        if w1.dim() != 2 or w0.shape != w1.shape:
            continue
        out[key[: -len(suffix) - 1]] = (w1.double() - w0.double()).cpu()
    if not out:
        raise ValueError("the two state dicts share no 2-D weight of the same shape")
    return out


def spectral_profiles(
    updates: Mapping[str, torch.Tensor],
    num_bands: int = DEFAULT_BANDS,
    null_rank: int = 8,
    null_draws: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Band profiles of every update, the same by (kind, layer), and the null of every shape.

    Returns ``{"num_bands", "modules": {name: band_profile}, "by_kind": {kind: {"layers": [...],
    "names": [...], "profiles": layer × band, "centroid": [...], "low_fraction": [...]}},
    "nulls": {"<d_out>x<d_in>": null_profiles}, "summary": {...}}``; zero updates have no
    profile and are listed in ``"zero"``.
    """
    modules = {name: band_profile(dw, num_bands) for name, dw in updates.items()}
    by_kind: dict[str, Any] = {}
    for kind, infos in group_by_kind(modules).items():
        rows = [(i, modules[i.name]) for i in infos if modules[i.name]["bands"] is not None]
        by_kind[kind] = {
            "layers": [i.layer for i, _ in rows],
            "names": [i.name for i, _ in rows],
            "profiles": [p["bands"] for _, p in rows],
            "centroid": [p["centroid"] for _, p in rows],
            "low_fraction": [p["low_fraction"] for _, p in rows],
        }
    nulls = {}
    for dw in updates.values():
        key = f"{dw.shape[0]}x{dw.shape[1]}"
        if key not in nulls:
            nulls[key] = null_profiles(*dw.shape, num_bands, null_rank, null_draws, seed)
    live = [p for p in modules.values() if p["bands"] is not None]
    summary = {}
    if live:
        mean = torch.tensor([p["bands"] for p in live], dtype=torch.float64).mean(0).tolist()
        summary = {"mean_profile": mean, **profile_summary(mean), "modules": len(live)}
    return {
        "num_bands": num_bands,
        "band_definition": "FourierMoE rings: frequency_rings(d_out, d_in, num_bands)",
        "modules": modules,
        "shapes": {n: list(dw.shape) for n, dw in updates.items()},
        "by_kind": by_kind,
        "nulls": nulls,
        "summary": summary,
        "zero": [n for n, p in modules.items() if p["bands"] is None],
    }
