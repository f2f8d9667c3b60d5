"""Evaluation results: per-task metrics, family and overall averages, JSON, markdown tables.

Every metric is a fraction in [0, 1] (tables print it ×100 with one decimal). Each task has one
*primary* metric by kind: ``acc`` for multiple choice (``acc_norm`` is reported beside it),
``exact_match`` for math, ``pass@1`` for code. Averages use primary metrics only:

- a family average (``commonsense``, ``math``, ``code``, ``knowledge``, or ``other``) is the
  unweighted mean over the family's tasks;
- the overall average is the unweighted mean over *tasks* (not over families, not weighted by
  example count), so a family with more tasks weighs more, as in the papers' "Avg." columns.

``metadata`` is free-form JSON; :func:`frame_peft.evaluation.evaluate` fills ``method``,
``model_id``, ``parameters`` (``total``, ``trainable``, ``active_per_token``, ``base``),
``settings`` and ``timings``, and keeps whatever the caller passes (``seed``, ``splits``, ...).
The "active %" column is ``100 · active_per_token / base`` (base = parameters of the model
without adapters).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import write_json, write_json_lines
from .._tables import markdown_table
from ..data.types import FAMILIES, TaskKind

__all__ = ["PRIMARY_METRIC", "EvalResults", "TaskResult", "comparison_table"]

PRIMARY_METRIC: dict[str, str] = {
    TaskKind.MULTIPLE_CHOICE.value: "acc",
    TaskKind.MATH.value: "exact_match",
    TaskKind.CODE.value: "pass@1",
}
FORMAT = "frame-peft-eval/1"


@dataclass
class TaskResult:
    """Metrics of one task: ``metrics`` holds fractions, ``n`` the number of examples scored."""

    task: str
    kind: str
    family: str
    n: int
    metrics: dict[str, float]
    seconds: float | None = None

    def __post_init__(self) -> None:
        self.kind = str(self.kind)
        if self.kind not in PRIMARY_METRIC:
            raise ValueError(
                f"TaskResult {self.task}: kind {self.kind!r} is not one of {list(PRIMARY_METRIC)}"
            )
        if self.n < 0:
            raise ValueError(f"TaskResult {self.task}: n must be >= 0, got {self.n}")
        if self.primary_metric not in self.metrics:
            raise ValueError(
                f"TaskResult {self.task}: metrics {sorted(self.metrics)} lack the primary "
                f"metric {self.primary_metric!r} of kind {self.kind!r}"
            )

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]


def _family_order(families: Sequence[str]) -> list[str]:
    known = [f for f in FAMILIES if f in families]
    return known + sorted(set(families) - set(FAMILIES))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class EvalResults:
    """Results of one model on several tasks (see the module docstring for the averages)."""

    tasks: dict[str, TaskResult] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per-example records by task (not part of to_dict/save_json; see save_predictions).
    predictions: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def primary(self) -> dict[str, float]:
        """``{task: primary metric}``."""
        return {name: t.primary for name, t in self.tasks.items()}

    def family_averages(self) -> dict[str, float]:
        """``{family: mean primary metric of its tasks}``, families in ``FAMILIES`` order."""
        by_family: dict[str, list[float]] = {}
        for t in self.tasks.values():
            by_family.setdefault(t.family, []).append(t.primary)
        return {f: sum(by_family[f]) / len(by_family[f]) for f in _family_order(list(by_family))}

    @property
    def overall(self) -> float | None:
        """Unweighted mean of the primary metrics over tasks (None without tasks)."""
        return _mean(list(self.primary().values()))

    @property
    def active_params_pct(self) -> float | None:
        """``100 · active_per_token / base`` from ``metadata["parameters"]``, if recorded."""
        params = self.metadata.get("parameters") or {}
        active, base = params.get("active_per_token"), params.get("base")
        if active is None or not base:
            return None
        return 100.0 * active / base

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the averages are included for readers and recomputed on load."""
        return {
            "format": FORMAT,
            "tasks": {
                name: {
                    "kind": t.kind,
                    "family": t.family,
                    "n": t.n,
                    "primary_metric": t.primary_metric,
                    "metrics": dict(t.metrics),
                    "seconds": t.seconds,
                }
                for name, t in self.tasks.items()
            },
            "family_averages": self.family_averages(),
            "overall": self.overall,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResults:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a frame-peft results dict: format {data.get('format')!r}")
        tasks = {
            name: TaskResult(
                task=name,
                kind=t["kind"],
                family=t["family"],
                n=int(t["n"]),
                metrics={k: float(v) for k, v in t["metrics"].items()},
                seconds=t.get("seconds"),
            )
            for name, t in data["tasks"].items()
        }
        return cls(tasks=tasks, metadata=dict(data.get("metadata") or {}))

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> EvalResults:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_predictions(self, path: str | Path) -> Path:
        """Write one JSON line per example: ``{"task": ..., **record}``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_lines(
            path,
            ({"task": task, **record} for task, records in self.predictions.items()
             for record in records),
        )  # fmt: skip

    # -- tables ----------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """A header with the run's metadata, one row per task, then the averages."""
        meta = self.metadata
        lines = [f"**method**: {meta.get('method', '?')} · **model**: {meta.get('model_id', '?')}"]
        params = meta.get("parameters") or {}
        if params:
            pct = self.active_params_pct
            share = f" ({pct:.3f}% of base)" if pct is not None else ""
            lines.append(
                f"**parameters**: total {params.get('total')}, trainable "
                f"{params.get('trainable')}, active per token {params.get('active_per_token')}"
                + share
            )
        rows = [
            [
                name,
                t.family,
                t.kind,
                t.n,
                t.primary_metric,
                _pct(t.primary),
                ", ".join(f"{k} {_pct(v)}" for k, v in t.metrics.items() if k != t.primary_metric),
            ]
            for name, t in self.tasks.items()
        ]
        rows += [
            [f"**{family} avg**", "", "", "", "", _pct(value), ""]
            for family, value in self.family_averages().items()
        ]
        rows.append(["**overall avg** (mean over tasks)", "", "", "", "", _pct(self.overall), ""])
        headers = ["task", "family", "kind", "n", "primary", "score", "other metrics"]
        lines += ["", markdown_table(headers, rows, align="lllrlrl")]
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"


def comparison_table(results: Sequence[EvalResults], names: Sequence[str] | None = None) -> str:
    """One markdown table: a row per run (named by ``names``, else ``metadata["method"]``),
    columns = every task seen (primary metric), family averages, overall, active params %.
    A task or family a run lacks shows "–"."""
    if names is not None and len(names) != len(results):
        raise ValueError(f"got {len(names)} names for {len(results)} results")
    tasks: list[str] = []
    families: list[str] = []
    for r in results:
        tasks += [t for t in r.tasks if t not in tasks]
        families += [f for f in r.family_averages() if f not in families]
    families = _family_order(families)
    header = ["method", *tasks, *(f"{f} avg" for f in families), "overall", "active %"]
    rows = []
    for i, r in enumerate(results):
        name = names[i] if names is not None else str(r.metadata.get("method", f"run {i}"))
        fam = r.family_averages()
        pct = r.active_params_pct
        cells = [
            name,
            *(_pct(r.tasks[t].primary) if t in r.tasks else "–" for t in tasks),
            *(_pct(fam.get(f)) for f in families),
            _pct(r.overall),
            f"{pct:.3f}" if pct is not None else "–",
        ]
        rows.append(cells)
    return markdown_table(header, rows, align="l" + "r" * (len(header) - 1)) + "\n"
