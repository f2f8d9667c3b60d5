"""Controlled experiments that test FRAME's claims on synthetic tasks (``frame-peft experiment``).

Each experiment is a module with ``run(output_dir, *, size="full"|"quick", seed=0, progress=True)
-> dict`` that writes ``results.json``, ``results.md`` and PNG plots into ``output_dir``; the
"quick" size is the reduced one the test suite runs. :data:`EXPERIMENTS` maps each name to its
one-line description and runner; see docs/experiments.md for the measured results.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIZES = ("full", "quick")


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``name``, one-line ``description`` and the module holding
    ``run`` (imported on first use, so listing the registry stays cheap)."""

    name: str
    description: str
    module: str

    @property
    def run(self) -> Callable[..., dict[str, Any]]:
        return importlib.import_module(f"{__name__}.{self.module}").run


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "domain-recovery",
            "FRAME vs MoE-LoRA, LoRA, FourierMoE on teachers low-rank in known fractional "
            "domains: error per task, and whether FRAME's orders move to the teachers' orders",
            "domain_recovery",
        ),
        Experiment(
            "interference",
            "single-task vs multi-task training of the same synthetic tasks: the gap per method",
            "interference",
        ),
        Experiment(
            "coherence",
            "mutual coherence of exact and chirp fractional bases vs order difference and length, "
            "against the 1/sqrt(n) floor",
            "coherence_sweep",
        ),
    )
}


#: Experiments on the synthetic tasks: they take ``seeds``, ``methods`` and ``sets``.
SYNTHETIC = ("domain-recovery", "interference")


def run_experiment(
    name: str,
    output_dir: str | Path,
    *,
    size: str = "full",
    seed: int = 0,
    progress: bool = True,
    seeds: int = 1,
    methods: list[str] | None = None,
    sets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) and return its results.

    ``seeds`` (consecutive seeds from ``seed``), ``methods`` (which methods to compare) and
    ``sets`` (``{"tasks.dim": 128, ...}`` config overrides) apply to the synthetic-task
    experiments (:data:`SYNTHETIC`) only.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if name not in SYNTHETIC:
        if seeds != 1 or methods is not None or sets:
            raise ValueError(
                f"{name} takes no seeds, methods or --set overrides (only {list(SYNTHETIC)} do)"
            )
        return EXPERIMENTS[name].run(Path(output_dir), size=size, seed=seed, progress=progress)
    if methods is not None:
        from .synthetic import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return EXPERIMENTS[name].run(
        Path(output_dir), size=size, seed=seed, progress=progress, seeds=seeds,
        methods=methods, sets=sets,
    )  # fmt: skip


__all__ = ["EXPERIMENTS", "SIZES", "SYNTHETIC", "Experiment", "run_experiment"]
