"""The one markdown-table writer: every GitHub-markdown table the library prints or saves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["markdown_table"]


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    align: str = "",
    fmt: Callable[[Any], str] = str,
) -> str:
    """A GitHub markdown table (no trailing newline)::

        | a | b |
        |---|---:|
        | 1 | 2 |

    Args:
        headers: the column names, written as they are.
        rows: one sequence of cells per row; each cell is written as ``fmt(cell)``.
        align: one letter per column, ``"l"`` (``---``) or ``"r"`` (right-aligned, ``---:``);
            columns past its end are ``"l"``.
    """
    if any(c not in "lr" for c in align):
        raise ValueError(f"align takes 'l' and 'r' only, got {align!r}")
    rule = "".join("---:|" if align[i : i + 1] == "r" else "---|" for i in range(len(headers)))
    lines = ["| " + " | ".join(headers) + " |", "|" + rule]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
