"""The experiments' figures (matplotlib through :mod:`frame_peft.analysis.plotting`).

Each function takes ``plt`` (from :func:`~frame_peft.analysis.plotting.pyplot`) and results
dicts as the experiments store them, draws one figure and returns it (the caller saves it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def plot_method_errors(plt: Any, results: dict[str, Any], task_orders: Sequence[float]) -> Any:
    """Grouped bars: relative error per task and method (mean over seeds, ± std as an error bar),
    the method's floor as a black tick."""
    methods = list(results["methods"])
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(methods) + 3), 3.8))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        entry = results["methods"][method]
        xs = [t + (i - (len(methods) - 1) / 2) * width for t in range(len(task_orders))]
        ax.bar(xs, entry["errors"], width, yerr=entry.get("errors_std"), capsize=2, label=method)
        ax.scatter(xs, entry["floor"], marker="_", s=120, color="black", zorder=3)
    ax.set_xticks(range(len(task_orders)), [f"a_t = {a:g}" for a in task_orders])
    ax.set_ylabel("relative error to teacher")
    seeds = len(results.get("seeds", [0]))
    ax.set_title(f"Error per task, mean ± std over {seeds} seed(s) (black tick: budget floor)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_order_traces(
    plt: Any, runs: dict[str, dict[str, Any]], task_orders: Sequence[float]
) -> Any:
    """One panel per FRAME run: every expert's order over training; teachers' orders dashed."""
    n = len(runs)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (label, entry) in zip(axes.flat, runs.items(), strict=False):
        history = entry["order_history"]
        for e in range(len(history[0])):
            ax.plot(entry["logged_steps"], [h[e] for h in history], lw=1)
        for a in task_orders:
            ax.axhline(a, color="black", ls="--", lw=0.7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("order a_e")
        ax.set_ylim(-0.05, 1.05)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig


def plot_basin(plt: Any, rows: list[dict[str, Any]], dim: int, tol: float) -> Any:
    """Final |a − a_t|·d against the initial offset (units of 1/d), one line per task."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for t in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == t]
        ax.plot(
            [r["offset_units"] for r in mine],
            [max(r["order_error"] * dim, 1e-3) for r in mine],
            marker="o",
            label=f"a_t = {mine[0]['teacher_order']:g}",
        )
    offsets = sorted({r["offset_units"] for r in rows})
    ax.plot(offsets, offsets, color="grey", ls=":", label="no movement")
    ax.axhline(tol * dim, color="black", ls="--", lw=0.8, label="tolerance")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("initial |a - a_t| (units of 1/d)")
    ax.set_ylabel("final |a - a_t| (units of 1/d)")
    ax.set_title("Order basin: one expert, no routing")
    ax.legend(fontsize=8)
    return fig
