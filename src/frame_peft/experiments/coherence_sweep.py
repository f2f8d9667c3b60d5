"""``coherence``: how fast do fractional-Fourier bases decorrelate as the order changes?

``μ(a, b) = max_{i,j} |(T_a^H T_b)_{ij}|`` (:func:`frame_peft.transforms.coherence`) for the exact
FrFT (additive, so it depends on Δa = b − a only; computed from a = 0) and for the chirp surrogate
(not additive; from several base orders a), for lengths n and order differences Δa on a
geometric grid. The floor for unitary n × n bases is 1/√n (reached by the exact pair (0, 1)).
For each curve and n: the first grid Δa at which μ falls below 0.5 and below 2/√n, refined by
bisection between that grid point and the previous one (assuming μ is monotone there; the grid is
dense enough that the refinement moves the answer by less than one grid step). METHODS §1 states
that ``F^a x`` decorrelates from ``F^{a+δ} x`` already at δ ≈ 4/N; the table compares
``n · Δa_{0.5}`` with 4.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._tables import markdown_table
from ..transforms import coherence
from ._output import fmt, write_outputs

NAME = "coherence"


@dataclass
class CoherenceConfig:
    """Args:
    lengths: transform lengths n (even integers >= 4).
    num_deltas: points of the geometric Δa grid in [min_delta, 1] (Δa = 0 is added).
    min_delta: smallest nonzero Δa (> 0).
    chirp_bases: base orders a of the chirp curves (in [0, 1]).
    bisection_steps: refinement steps of each threshold crossing (>= 0).
    """

    lengths: tuple[int, ...] = (16, 64, 256, 1024)
    num_deltas: int = 33
    min_delta: float = 1e-4
    chirp_bases: tuple[float, ...] = (0.0, 0.25, 0.5)
    bisection_steps: int = 6

    def __post_init__(self) -> None:
        self.lengths, self.chirp_bases = tuple(self.lengths), tuple(self.chirp_bases)
        if not self.lengths or any(not isinstance(n, int) or n < 4 or n % 2 for n in self.lengths):
            raise ValueError(f"lengths must be even integers >= 4, got {self.lengths}")
        if self.num_deltas < 2:
            raise ValueError(f"num_deltas must be >= 2, got {self.num_deltas}")
        if not 0 < self.min_delta < 1:
            raise ValueError(f"min_delta must be in (0, 1), got {self.min_delta}")
        if any(not 0 <= a <= 1 for a in self.chirp_bases):
            raise ValueError(f"chirp_bases must lie in [0, 1], got {self.chirp_bases}")
        if self.bisection_steps < 0:
            raise ValueError(f"bisection_steps must be >= 0, got {self.bisection_steps}")

    @classmethod
    def for_size(cls, size: str) -> CoherenceConfig:
        if size == "full":
            return cls()
        if size == "quick":
            return cls(lengths=(16, 32), num_deltas=13, min_delta=1e-3, bisection_steps=3)
        raise ValueError(f"size must be 'full' or 'quick', got {size!r}")

    def deltas(self) -> list[float]:
        ratio = (1.0 / self.min_delta) ** (1.0 / (self.num_deltas - 1))
        grid = [self.min_delta * ratio**i for i in range(self.num_deltas - 1)]
        return [0.0, *(round(v, 8) for v in grid), 1.0]


def _curves(cfg: CoherenceConfig) -> dict[str, tuple[str, float]]:
    """Curve label -> (transform, base order)."""
    out = {"exact": ("exact", 0.0)}
    out.update({f"chirp@{a:g}": ("chirp", a) for a in cfg.chirp_bases})
    return out


def _crossing(mu, deltas: list[float], values: list[float], level: float, steps: int):
    """First Δa where μ < level (refined by bisection), or None if it never falls below."""
    for i, v in enumerate(values):
        if v < level:
            if i == 0:
                return deltas[0]
            lo, hi = deltas[i - 1], deltas[i]
            for _ in range(steps):
                mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
                lo, hi = (lo, mid) if mu(mid) < level else (mid, hi)
            return round(hi, 8)
    return None


def run(
    output_dir: Path, *, size: str = "full", seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Run the sweep at ``size`` ("full" | "quick"); ``seed`` is recorded only (no randomness)."""
    cfg = CoherenceConfig.for_size(size)
    start = time.perf_counter()
    deltas = cfg.deltas()
    curves: dict[str, dict[str, list[float]]] = {}
    crossings: dict[str, dict[str, dict[str, float | None]]] = {}
    for label, (transform, base) in _curves(cfg).items():
        curves[label], crossings[label] = {}, {}
        for n in cfg.lengths:

            def mu(delta: float, n: int = n, transform: str = transform, base: float = base):
                return coherence(base, base + delta, n, transform)

            values = [round(mu(d), 8) for d in deltas]
            curves[label][str(n)] = values
            crossings[label][str(n)] = {
                "0.5": _crossing(mu, deltas, values, 0.5, cfg.bisection_steps),
                "2/sqrt(n)": _crossing(mu, deltas, values, 2 / math.sqrt(n), cfg.bisection_steps),
            }
            if progress:
                print(f"[{NAME}] {label} n={n}: crossings {crossings[label][str(n)]}")
    results = {
        "experiment": NAME,
        "size": size,
        "seed": seed,
        "config": asdict(cfg),
        "deltas": deltas,
        "floor": {str(n): round(1 / math.sqrt(n), 8) for n in cfg.lengths},
        "curves": curves,
        "crossings": crossings,
        "min_over_grid": {
            label: {n: min(v) for n, v in by_n.items()} for label, by_n in curves.items()
        },
    }
    elapsed = time.perf_counter() - start
    plots = {
        "coherence": lambda plt: _plot_curves(plt, results),
        "crossings": lambda plt: _plot_crossings(plt, results),
    }
    write_outputs(output_dir, results, _markdown(results, cfg, elapsed), plots)
    return results


def _markdown(results: dict[str, Any], cfg: CoherenceConfig, elapsed: float) -> str:
    rows = []
    for label, by_n in results["crossings"].items():
        for n, c in by_n.items():
            half, floor2 = c["0.5"], c["2/sqrt(n)"]
            rows.append([
                label, n, results["floor"][n], results["min_over_grid"][label][n],
                half, None if half is None else half * int(n),
                floor2, None if floor2 is None else floor2 * int(n),
            ])  # fmt: skip
    return "\n".join(
        [
            f"# {NAME} ({results['size']})",
            "",
            f"{len(results['deltas'])} order differences in [0, 1] (geometric from "
            f"{cfg.min_delta:g}), bisection {cfg.bisection_steps} steps. Runtime {elapsed:.0f} s.",
            "",
            "## First Δa at which μ falls below 0.5 and below 2/sqrt(n)",
            "",
            markdown_table(
                [
                    "curve",
                    "n",
                    "1/sqrt(n)",
                    "min μ on grid",
                    "Δa(μ<0.5)",
                    "n·Δa(0.5)",
                    "Δa(μ<2/sqrt n)",
                    "n·Δa(2/sqrt n)",
                ],
                rows,
                fmt=fmt,
            ),
        ]
    )


def _plot_curves(plt: Any, results: dict[str, Any]) -> Any:
    labels = list(results["curves"])
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 3.4), squeeze=False)
    xs = results["deltas"][1:]
    for ax, label in zip(axes[0], labels, strict=True):
        for n, values in results["curves"][label].items():
            line = ax.plot(xs, values[1:], label=f"n={n}")[0]
            ax.axhline(results["floor"][n], color=line.get_color(), ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Δa")
        ax.set_title(label)
    axes[0][0].set_ylabel("coherence μ (dotted: 1/sqrt n)")
    axes[0][-1].legend(fontsize=7)
    return fig


def _plot_crossings(plt: Any, results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    lengths = [int(n) for n in results["floor"]]
    for label, by_n in results["crossings"].items():
        pts = [(int(n), c["0.5"]) for n, c in by_n.items() if c["0.5"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{label}: μ < 0.5")
    ax.plot(lengths, [4 / n for n in lengths], color="black", ls="--", label="4/n (METHODS)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel("Δa at which μ first < 0.5")
    ax.legend(fontsize=7)
    return fig
