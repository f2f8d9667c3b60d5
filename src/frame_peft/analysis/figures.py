"""PNG figures of the analysis numbers: FRAME orders, routing, expert decorrelation.

Each ``*_figures`` function takes one dict of :mod:`frame_peft.analysis` (formats in
docs/analysis.md: ``order_statistics``, ``RoutingRecorder.statistics``, ``decorrelation``), writes
its figures into ``out_dir`` through :mod:`.plotting` (Agg backend, 110 dpi, titled, labelled axes,
a colour bar on every heatmap) and returns ``{figure name: path}``. Empty or missing inputs give no
figure rather than an empty one. :func:`analysis_figures` draws everything for the ``analysis``
dict of :func:`frame_peft.analysis.run.analyze_run`, keyed ``"<section>/<run label>/<name>"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plotting import heatmap, pyplot, save_figure

__all__ = [
    "SECTIONS",
    "analysis_figures",
    "decorrelation_comparison_figure",
    "decorrelation_figures",
    "order_figures",
    "routing_figures",
]

SECTIONS = ("orders", "routing", "decorrelation")
_DECORRELATION_LINES = (  # per_layer key, legend label
    ("mean_abs_offdiag_cosine", "mean |cos(ΔW_e, ΔW_f)|"),
    ("mean_offdiag_col_overlap", "column-space overlap"),
    ("mean_offdiag_row_overlap", "row-space overlap"),
    ("mean_offdiag_coherence", "transform coherence"),
)


def slug(text: str) -> str:
    """``text`` reduced to a safe file-name stem (letters, digits, ``.-_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _layer_label(layer: Any) -> str:
    return "–" if layer is None else str(layer)


def _kind_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _sort_key(layer: Any, name: str = "") -> tuple:
    return (layer is None, layer if layer is not None else 0, name)


def _title(run: str, text: str) -> str:
    return f"{run}: {text}" if run else text


def _pick(items: Sequence[Any], n: int = 3) -> list[Any]:
    """First, middle and last of ``items`` (fewer when there are fewer; order kept)."""
    if len(items) <= n:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _kind_heatmaps(
    panels: Mapping[str, tuple[Sequence[Any], Sequence[Sequence[float]]]],
    *,
    cbar_label: str,
    vmax: float | None,
    title: str,
    path: Path,
) -> Path:
    """One layer × expert heatmap per module kind, side by side: ``{kind: (layers, rows)}``."""
    plt = pyplot()
    kinds = sorted(panels)
    n_rows = max(len(panels[k][1]) for k in kinds)
    n_exp = max(len(row) for k in kinds for row in panels[k][1])
    width, height = max(4.5, 0.5 * n_exp + 2.5), max(3.2, 0.26 * n_rows + 1.8)
    fig, axes = plt.subplots(1, len(kinds), squeeze=False, figsize=(len(kinds) * width, height))
    for ax, kind in zip(axes[0], kinds, strict=True):
        layers, rows = panels[kind]
        heatmap(
            ax,
            [list(row) + [None] * (n_exp - len(row)) for row in rows],
            xlabels=[str(e) for e in range(n_exp)],
            ylabels=[_layer_label(v) for v in layers],
            xlabel="expert",
            ylabel="layer",
            title=kind,
            cbar_label=cbar_label,
            vmin=0.0,
            vmax=vmax,
        )
    fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------- orders
def order_figures(
    orders: Mapping[str, Any] | None, out_dir: str | Path, *, run: str = ""
) -> dict[str, Path]:
    """Heatmaps of final orders per module kind (layer × expert), trajectories, histogram.

    Trajectories (one panel per kind) draw every expert of the first, middle and last layer (one
    colour per layer) over the mean and min–max band of all that kind's modules, so 30 layers ×
    8 experts stay readable. No figure for ``None`` (no FRAME module).
    """
    if not orders or not orders.get("modules"):
        return {}
    plt, out = pyplot(), Path(out_dir)
    written: dict[str, Path] = {}
    by_kind = orders.get("by_kind") or {}
    kinds = sorted(k for k in by_kind if by_kind[k].get("orders"))
    if kinds:
        written["final_orders"] = _kind_heatmaps(
            {k: (by_kind[k]["layers"], by_kind[k]["orders"]) for k in kinds},
            cbar_label="order a",
            vmax=1.0,
            title=_title(run, "final FRAME orders (layer × expert)"),
            path=out / f"{slug(run)}_orders_final.png",
        )
    trajectory = orders.get("trajectory")
    if trajectory and len(trajectory.get("steps") or []) >= 2 and trajectory.get("modules"):
        written["trajectories"] = _order_trajectories(orders, trajectory, out, run)
    final = _finite(v for m in orders["modules"].values() for v in m.get("orders") or [])
    initial = _finite(v for m in orders["modules"].values() for v in m.get("initial") or [])
    if final:
        import numpy as np

        lo, hi = min(0.0, *final, *initial), max(1.0, *final, *initial)
        bins = np.linspace(lo, hi, 26)
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        if initial:
            ax.hist(initial, bins=bins, alpha=0.55, color="tab:grey", label="initial")
        ax.hist(final, bins=bins, alpha=0.7, color="tab:blue", label="final")
        ax.set_xlabel("order a")
        ax.set_ylabel("number of (module, expert) pairs")
        ax.set_title(_title(run, f"orders before and after training ({len(final)} experts)"))
        ax.legend()
        written["histogram"] = save_figure(fig, out / f"{slug(run)}_orders_histogram.png")
    return written


def _order_trajectories(orders: Mapping, trajectory: Mapping, out: Path, run: str) -> Path:
    import numpy as np

    plt = pyplot()
    info = orders["modules"]
    steps = list(trajectory["steps"])
    groups: dict[str, list[tuple[Any, str]]] = {}
    for name in trajectory["modules"]:
        meta = info.get(name, {})
        groups.setdefault(meta.get("kind") or _kind_of(name), []).append((meta.get("layer"), name))
    kinds = sorted(groups)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.0), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, kind in zip(axes[0], kinds, strict=True):
        members = sorted(groups[kind], key=lambda m: _sort_key(*m))
        stack = np.array([trajectory["modules"][name] for _, name in members], dtype=float)
        per_step = stack.transpose(1, 0, 2).reshape(len(steps), -1)  # (steps, modules·experts)
        ax.fill_between(
            steps, per_step.min(1), per_step.max(1), color="0.85", label="all layers: min–max"
        )
        ax.plot(steps, per_step.mean(1), "k--", lw=1.6, label="all layers: mean")
        for c, (layer, name) in enumerate(_pick(members)):
            series = np.array(trajectory["modules"][name], dtype=float)  # (steps, E)
            for e in range(series.shape[1]):
                ax.plot(
                    steps,
                    series[:, e],
                    color=colours(c),
                    lw=0.9,
                    alpha=0.85,
                    label=f"layer {_layer_label(layer)} ({series.shape[1]} experts)"
                    if e == 0
                    else None,
                )
        for i, scan in enumerate(orders.get("scans") or []):
            ax.axvline(
                scan["step"], color="tab:red", ls=":", lw=1.2,
                label="order scan" if i == 0 else None,
            )  # fmt: skip
        ax.set_xlabel("training step")
        ax.set_ylabel("order a")
        ax.set_title(kind)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(_title(run, "FRAME orders during training"))
    return save_figure(fig, out / f"{slug(run)}_orders_trajectories.png")


# --------------------------------------------------------------------------------------- routing
def routing_figures(
    routing: Mapping[str, Any] | None, out_dir: str | Path, *, run: str = ""
) -> dict[str, Path]:
    """Expert load heatmaps per kind, entropy / top-1 lines per layer, task × expert grid."""
    if not routing or not routing.get("modules"):
        return {}

    plt, out = pyplot(), Path(out_dir)
    written: dict[str, Path] = {}
    groups: dict[str, list[tuple[Any, str, Mapping]]] = {}
    for name, m in routing["modules"].items():
        groups.setdefault(m.get("kind") or _kind_of(name), []).append((m.get("layer"), name, m))
    kinds = sorted(groups)
    for kind in kinds:
        groups[kind].sort(key=lambda t: _sort_key(t[0], t[1]))
    n_exp = max(len(m["load"]) for k in kinds for _, _, m in groups[k])
    written["load"] = _kind_heatmaps(
        {k: ([t[0] for t in groups[k]], [t[2]["load"] for t in groups[k]]) for k in kinds},
        cbar_label=f"load (uniform {1 / n_exp:.2f})",
        vmax=None,
        title=_title(run, "expert load per layer (held-out tokens)"),
        path=out / f"{slug(run)}_routing_load.png",
    )

    fig, (ax_h, ax_p) = plt.subplots(1, 2, figsize=(11.0, 3.9))
    colours = plt.get_cmap("tab10")
    for c, kind in enumerate(kinds):
        rows = groups[kind]
        x = [layer if layer is not None else i for i, (layer, _, _) in enumerate(rows)]
        ax_h.plot(
            x,
            [m["entropy"] for _, _, m in rows],
            "o-",
            color=colours(c),
            ms=3,
            label=f"{kind}: per-token entropy",
        )
        ax_h.plot(
            x,
            [m["load_entropy"] for _, _, m in rows],
            "s--",
            color=colours(c),
            ms=3,
            label=f"{kind}: entropy of the load",
        )
        ax_p.plot(x, [m["top1_prob"] for _, _, m in rows], "o-", color=colours(c), ms=3, label=kind)
    ax_p.axhline(1 / n_exp, color="0.5", ls=":", label=f"uniform 1/E = {1 / n_exp:.3f}")
    ax_h.set(
        xlabel="layer",
        ylabel="entropy / log E",
        ylim=(-0.03, 1.05),
        title="routing entropy (1 = uniform, 0 = one expert)",
    )
    ax_p.set(
        xlabel="layer",
        ylabel="mean top-1 router probability",
        ylim=(0.0, 1.05),
        title="router confidence",
    )
    ax_h.legend(fontsize=7)
    ax_p.legend(fontsize=7)
    _integer_ticks(ax_h, ax_p)
    fig.suptitle(_title(run, "routing entropy and top-1 probability per layer"))
    written["entropy"] = save_figure(fig, out / f"{slug(run)}_routing_entropy.png")

    by_layer = routing.get("by_layer_task") or {}
    panels = [(key, by_layer[key]) for key in sorted(by_layer, key=_numeric_key)]
    panels = [(k, v) for k, v in panels if v.get("load")]
    if panels:
        n = len(panels)
        cols = n if n <= 4 else 4 if n <= 12 else 6
        rows_n = math.ceil(n / cols)
        n_tasks = max(len(v["tasks"]) for _, v in panels)
        values = _finite(x for _, v in panels for row in v["load"] for x in row or [])
        vmax = max(values, default=1.0) or 1.0
        fig, axes = plt.subplots(
            rows_n,
            cols,
            squeeze=False,
            layout="constrained",
            figsize=(
                max(6.4, cols * max(2.6, 0.3 * n_exp + 1.2) + 1.0),
                rows_n * (0.3 * n_tasks + 1.5) + 0.7,
            ),
        )
        image = None
        for i, ax in enumerate(axes.ravel()):
            if i >= n:
                ax.axis("off")
                continue
            key, panel = panels[i]
            first_col = i % cols == 0
            image = heatmap(
                ax,
                [row or [None] * n_exp for row in panel["load"]],
                xlabels=[str(e) for e in range(n_exp)],
                ylabels=[str(t) for t in panel["tasks"]] if first_col else None,
                xlabel="expert",
                title=f"layer {key}",
                vmin=0.0,
                vmax=vmax,
                annotate=n_exp <= 6 and n_tasks <= 6,
                colorbar=False,
            )
            if not first_col:
                ax.set_yticks([])
        fig.colorbar(image, ax=axes.ravel().tolist(), label="load share")
        fig.suptitle(_title(run, "expert load per task, one panel per layer"))
        written["task_load"] = save_figure(fig, out / f"{slug(run)}_routing_tasks.png")
    return written


def _integer_ticks(*axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _numeric_key(key: str) -> tuple:
    return (0, int(key), "") if str(key).lstrip("-").isdigit() else (1, 0, str(key))


# -------------------------------------------------------------------------------- decorrelation
def decorrelation_figures(
    decorrelation: Mapping[str, Any] | None, out_dir: str | Path, *, run: str = ""
) -> dict[str, Path]:
    """E×E matrices of representative modules and the per-layer summary lines.

    Representatives: the modules of the first, middle and last layer of the first module kind
    (sorted by name), one row each, with cosine, column/row overlap and (when computed)
    coherence side by side.
    """
    if not decorrelation or not decorrelation.get("modules"):
        return {}
    plt, out = pyplot(), Path(out_dir)
    written: dict[str, Path] = {}
    modules = decorrelation["modules"]
    by_kind: dict[str, list[str]] = {}
    for name, m in modules.items():
        by_kind.setdefault(m.get("kind") or _kind_of(name), []).append(name)
    kind = sorted(by_kind)[0]
    chosen = _pick(sorted(by_kind[kind], key=lambda n: _sort_key(modules[n].get("layer"), n)))
    panels = [
        ("delta_cosine", "cos(vec ΔW_e, vec ΔW_f)", -1.0, "RdBu_r"),
        ("col_overlap", "column-space overlap", 0.0, "viridis"),
        ("row_overlap", "row-space overlap", 0.0, "viridis"),
    ]
    if any(modules[n].get("coherence") is not None for n in chosen):
        panels.append(("coherence", "transform coherence μ", 0.0, "magma"))
    n_exp = max(len(modules[n]["delta_cosine"]) for n in chosen)
    side = max(3.0, 0.4 * n_exp + 1.4)
    fig, axes = plt.subplots(
        len(chosen),
        len(panels),
        squeeze=False,
        figsize=(len(panels) * (side + 0.9), len(chosen) * side + 0.6),
    )
    labels = [str(e) for e in range(n_exp)]
    for row, name in zip(axes, chosen, strict=True):
        m = modules[name]
        orders = m.get("orders")
        where = f"layer {_layer_label(m.get('layer'))} {kind}"
        for ax, (key, label, vmin, cmap) in zip(row, panels, strict=True):
            if m.get(key) is None:
                ax.axis("off")
                ax.set_title(f"{where}: no {label}", fontsize=8)
                continue
            heatmap(
                ax,
                m[key],
                xlabels=labels,
                ylabels=labels,
                xlabel="expert f",
                ylabel=f"{where}\nexpert e",
                title=label,
                cbar_label=label,
                vmin=vmin,
                vmax=1.0,
                cmap=cmap,
            )
        if orders:
            row[0].set_title(
                f"{panels[0][1]}\norders {', '.join(f'{a:.2f}' for a in orders)}", fontsize=8
            )
    method = modules[chosen[0]].get("method", "?")
    fig.suptitle(_title(run, f"expert-vs-expert matrices ({method}), first/middle/last layer"))
    written["matrices"] = save_figure(fig, out / f"{slug(run)}_decorrelation_matrices.png")
    per_layer = [
        row for row in decorrelation.get("per_layer") or [] if row.get("layer") is not None
    ]
    if per_layer:
        fig, ax = plt.subplots(figsize=(7.2, 4.0))
        _decorrelation_lines(ax, per_layer)
        ax.set_title(_title(run, "expert decorrelation per layer (off-diagonal means)"))
        written["per_layer"] = save_figure(fig, out / f"{slug(run)}_decorrelation_layers.png")
    return written


def _decorrelation_lines(ax: Any, per_layer: Sequence[Mapping], **style: Any) -> None:
    rows = sorted(per_layer, key=lambda r: r["layer"])
    x = [r["layer"] for r in rows]
    for key, label in _DECORRELATION_LINES:
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(x, [math.nan if y is None else y for y in ys], "o-", ms=3, label=label, **style)
    ax.set(xlabel="layer", ylabel="mean over expert pairs e ≠ f", ylim=(-0.03, 1.05))
    ax.legend(fontsize=7)
    _integer_ticks(ax)


def decorrelation_comparison_figure(
    runs: Mapping[str, Mapping[str, Any] | None], out_dir: str | Path
) -> dict[str, Path]:
    """Per-layer decorrelation of several runs side by side: one panel per number, a line per run.

    Runs without decorrelation numbers are left out; fewer than two left: no figure.
    """
    runs = {k: v for k, v in runs.items() if v and v.get("per_layer")}
    if len(runs) < 2:
        return {}
    plt = pyplot()
    keys = [
        (k, label)
        for k, label in _DECORRELATION_LINES
        if any(r.get(k) is not None for v in runs.values() for r in v["per_layer"])
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for run, dec in runs.items():
            rows = sorted(
                (r for r in dec["per_layer"] if r.get("layer") is not None),
                key=lambda r: r["layer"],
            )
            ys = [math.nan if r.get(key) is None else r[key] for r in rows]
            ax.plot([r["layer"] for r in rows], ys, "o-", ms=3, label=run)
        ax.set(xlabel="layer", ylabel=label, title=label, ylim=(-0.03, 1.05))
        ax.legend(fontsize=7)
        _integer_ticks(ax)
    fig.suptitle("expert decorrelation per layer: " + " vs ".join(runs))
    path = save_figure(fig, Path(out_dir) / "comparison_decorrelation_layers.png")
    return {"per_layer": path}


# ---------------------------------------------------------------------------------- everything
def analysis_figures(analysis: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """All figures of an ``analyze_run`` result, keyed ``"<section>/<run label>/<name>"``.

    The comparison of several runs is keyed ``"decorrelation/comparison/per_layer"``.
    """
    figures: dict[str, Path] = {}
    drawers = {
        "orders": order_figures,
        "routing": routing_figures,
        "decorrelation": decorrelation_figures,
    }
    for entry in analysis["runs"]:
        for section in SECTIONS:
            for name, path in drawers[section](
                entry.get(section), out_dir, run=entry["label"]
            ).items():
                figures[f"{section}/{entry['label']}/{name}"] = path
    compared = {e["label"]: e.get("decorrelation") for e in analysis["runs"]}
    for name, path in decorrelation_comparison_figure(compared, out_dir).items():
        figures[f"decorrelation/comparison/{name}"] = path
    return figures
