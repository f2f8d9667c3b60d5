"""Small matplotlib helpers shared by the analysis report and the experiments.

Every figure is drawn off-screen (the ``Agg`` backend), with labelled axes, a colour bar on every
heatmap, and saved as PNG at a fixed DPI. matplotlib is a dependency of frame-peft; should it be
missing from an environment, :func:`pyplot` raises an error that says how to install it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_write_bytes

DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the off-screen Agg backend, or an ImportError saying what to do."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "plots need matplotlib, a frame-peft dependency missing here: pip install matplotlib"
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    ax: Any,
    matrix: Sequence[Sequence[float]],
    *,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    cbar_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    annotate: bool | None = None,
    colorbar: bool = True,
) -> Any:
    """Draw ``matrix`` (rows × columns) on ``ax`` with a colour bar; returns the image.

    ``annotate`` writes each value in its cell (default: only when there are at most 12×12 cells).
    Missing values (None/NaN) are left blank. ``colorbar=False`` leaves the colour bar to the
    caller (one shared bar for a grid of panels: ``fig.colorbar(image, ax=axes)``).
    """
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix])
    image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if colorbar:
        cbar = ax.figure.colorbar(image, ax=ax)
        if cbar_label:
            cbar.set_label(cbar_label)
    rows, cols = data.shape
    if xlabels is not None:
        step = max(1, cols // 16)
        ax.set_xticks(range(0, cols, step), [str(v) for v in list(xlabels)[::step]])
    if ylabels is not None:
        step = max(1, rows // 24)
        ax.set_yticks(range(0, rows, step), [str(v) for v in list(ylabels)[::step]])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = rows <= 12 and cols <= 12
    if annotate:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(data[i, j]):
                    # dark text on light cells, whatever the colour map (diverging ones included)
                    r, g, b, _ = image.cmap(image.norm(data[i, j]))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color=colour)  # fmt: skip
    return image


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at :data:`DPI` (parents created), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # figures made with layout="constrained" keep it
        fig.tight_layout()
    buffer = io.BytesIO()  # rendered whole first: a failed draw leaves the old PNG
    fig.savefig(buffer, dpi=DPI, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
