"""Figures of the spectral analysis: band heat maps, centroids against the nulls, compactness
curves and band × expert routing maps (PNG, matplotlib Agg via :mod:`.plotting`).

Keys of :func:`spectral_figures` are ``"spectral/<run label>/<name>"`` so that the report puts
each figure under its run in the "Spectral analysis" section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import slug
from .plotting import heatmap, pyplot, save_figure

__all__ = [
    "band_heatmap_figure",
    "band_routing_figure",
    "centroid_figure",
    "compactness_figure",
    "spectral_figures",
]


def band_heatmap_figure(
    panels: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """One layer × band heat map per panel (``{title: by_kind entry}``: its ``layers`` and
    ``profiles``) of B · p_b, the band share relative to a flat profile (1 = what a random
    matrix gives): red above, blue below, one colour scale symmetric about 1 for all panels."""
    plt = pyplot()
    items = [(k, v) for k, v in panels.items() if v.get("profiles")]
    if not items:
        raise ValueError("no band profile to draw")
    rel = {k: [[len(r) * x for x in r] for r in v["profiles"]] for k, v in items}
    dev = max(abs(x - 1.0) for m in rel.values() for r in m for x in r) or 0.1
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items) + 1.2, 4.2), squeeze=False,
                             layout="constrained")  # fmt: skip
    image = None
    for ax, (name, v) in zip(axes[0], items, strict=True):
        bands = len(v["profiles"][0])
        image = heatmap(ax, rel[name], xlabels=[str(b) for b in range(bands)],
                        ylabels=[str(x) for x in v["layers"]], xlabel="band (low → high)",
                        ylabel="layer", title=name, vmin=1.0 - dev, vmax=1.0 + dev,
                        cmap="RdBu_r", colorbar=False, annotate=False)  # fmt: skip
    fig.colorbar(image, ax=list(axes[0]), label="B × band share (1 = flat, as random)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def centroid_figure(
    series: Mapping[str, Mapping[str, Any]],
    null: Mapping[str, Any] | None,
    path: str | Path,
    key: str = "centroid",
    title: str = "",
) -> Path:
    """``key`` (``centroid`` or ``low_fraction``) per layer, one line per series, over the 95 %
    bands of the random-dense and random-LoRA nulls (``null`` from
    :func:`.spectral.null_profiles`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    layers: list[Any] = []
    for name, v in series.items():
        ax.plot(v["layers"], v[key], marker="o", ms=3, label=name)
        layers += list(v["layers"])
    if null is not None and layers:
        lo, hi = min(x for x in layers if x is not None), max(x for x in layers if x is not None)
        for kind, colour in (("dense", "grey"), ("lora", "tab:red")):
            s = null[kind][key]
            ax.fill_between([lo, hi], s["lo"], s["hi"], color=colour, alpha=0.15,
                            label=f"null: random {kind} (95 %)")  # fmt: skip
    ax.set_xlabel("layer")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def compactness_figure(
    curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """One panel per curve (``{title: compactness_curve result}``): the fitted energy of a rank-r
    FRAME expert against the order, LoRA r and 2r as horizontal lines, the best order marked."""
    plt = pyplot()
    items = [(k, c) for k, c in curves.items() if "fitted" in c]
    if not items:
        raise ValueError("no compactness curve to draw")
    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.flat, items, strict=False):
        r = c["rank"]
        ax.plot(c["orders"], c["fitted"], lw=1.2, label=f"FRAME expert, rank {r}")
        ax.axhline(c["lora_r"], color="tab:orange", ls="--", lw=1, label=f"LoRA r={r}")
        ax.axhline(c["lora_2r"], color="tab:green", ls=":", lw=1, label=f"LoRA 2r={2 * r}")
        ax.plot([c["best_order"]], [c["best_fitted"]], "r*", ms=9,
                label=f"best a={c['best_order']:.3f}")  # fmt: skip
        ax.set_xlabel("order a")
        ax.set_ylabel("energy captured")
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def band_routing_figure(
    routing: Mapping[str, Mapping[str, Any]],
    coverage: Mapping[str, Any] | None,
    names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Per module of ``names``: P(expert | token's dominant band) (band × expert) and, when
    ``coverage`` has it, each expert's own update profile (expert × band)."""
    plt = pyplot()
    cov = (coverage or {}).get("modules", {})
    cols = 2 if any(n in cov for n in names) else 1
    fig, axes = plt.subplots(len(names), cols, figsize=(4.6 * cols, 3.4 * len(names)),
                             squeeze=False)  # fmt: skip
    for row, name in zip(axes, names, strict=True):
        r = routing[name]
        matrix = [[None] * len(r["load"]) if x is None else x for x in r["band_expert"]]
        heatmap(row[0], matrix, xlabel="expert", ylabel="token's dominant band",
                title=f"{name}\nP(expert | band), MI {r['mutual_information']:.3f} nats",
                vmin=0.0, vmax=1.0, annotate=False)  # fmt: skip
        if cols == 2:
            if name in cov:
                m = [[None] * cov[name]["bands"] if x is None else x for x in cov[name]["matrix"]]
                heatmap(row[1], m, xlabel="band of ΔW_e", ylabel="expert",
                        title="expert update energy by band", vmin=0.0, vmax=1.0,
                        annotate=False)  # fmt: skip
            else:
                row[1].axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def spectral_figures(analysis: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Every figure of the runs' ``"spectral"`` entries, keyed ``"spectral/<run>/<name>"``."""
    out = Path(out_dir)
    figures: dict[str, Path] = {}
    for entry in analysis.get("runs", []):
        spec = entry.get("spectral")
        if not spec:
            continue
        run = entry["label"]
        prof = spec["profiles"]
        if any(v["profiles"] for v in prof["by_kind"].values()):
            figures[f"spectral/{run}/bands"] = band_heatmap_figure(
                prof["by_kind"], out / f"{slug(run)}_spectral_bands.png",
                f"{run}: update energy by band (FourierMoE rings, B = {prof['num_bands']})",
            )  # fmt: skip
            null = next(iter(prof["nulls"].values()), None)
            figures[f"spectral/{run}/centroid"] = centroid_figure(
                prof["by_kind"], null, out / f"{slug(run)}_spectral_centroid.png",
                title=f"{run}: spectral centroid per layer vs nulls",
            )  # fmt: skip
        curves = {n: c for n, c in spec.get("compactness", {}).get("modules", {}).items()
                  if "fitted" in c}  # fmt: skip
        if curves:
            figures[f"spectral/{run}/compactness"] = compactness_figure(
                curves, out / f"{slug(run)}_spectral_compactness.png",
                f"{run}: energy a rank-r FRAME expert captures vs order",
            )  # fmt: skip
        routing = spec.get("band_routing") or {}
        if routing:
            names = list(routing)
            picked = sorted({names[0], names[len(names) // 2], names[-1]}, key=names.index)
            figures[f"spectral/{run}/band_routing"] = band_routing_figure(
                routing, spec.get("coverage"), picked,
                out / f"{slug(run)}_spectral_band_routing.png", f"{run}: routing by band",
            )  # fmt: skip
    return figures
