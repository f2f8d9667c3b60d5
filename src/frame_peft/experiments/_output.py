"""Write an experiment's outputs: ``results.json``, ``results.md`` and PNG plots in one folder.

The JSON holds only deterministic values (no timings), so two runs with the same seed give
byte-identical files; the runtime goes into the markdown only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import write_json, write_text
from ..analysis.plotting import pyplot, save_figure

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, None/NaN as an en dash (the ``fmt`` the
    experiments pass to :func:`frame_peft._tables.markdown_table`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_outputs(
    output_dir: Path,
    results: dict[str, Any],
    markdown: str,
    plots: dict[str, Callable[[Any], Any]],
) -> dict[str, Path]:
    """Write ``results.json`` (sorted keys, 2-space indent), ``results.md`` and one PNG per entry
    of ``plots`` (``{file stem: draw(plt) -> figure}``); return ``{kind or stem: path}``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": output_dir / RESULTS_JSON, "markdown": output_dir / RESULTS_MD}
    write_json(written["json"], results, sort_keys=True)
    write_text(written["markdown"], markdown.rstrip() + "\n")
    plt = pyplot()
    for stem, draw in plots.items():
        written[stem] = save_figure(draw(plt), output_dir / f"{stem}.png")
    return written
