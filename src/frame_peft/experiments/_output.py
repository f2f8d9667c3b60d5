"""Write an experiment's outputs: ``results.json``, ``results.md`` and PNG plots in one folder.

The JSON holds only deterministic values (no timings), so two runs with the same seed give
byte-identical files; the runtime goes into the markdown only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..analysis.plotting import pyplot, save_figure

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; float cells are formatted with :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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
    written["json"].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    written["markdown"].write_text(markdown.rstrip() + "\n")
    plt = pyplot()
    for stem, draw in plots.items():
        written[stem] = save_figure(draw(plt), output_dir / f"{stem}.png")
    return written
