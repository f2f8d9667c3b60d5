"""FRAME's fractional orders: where they started, where they ended, and how they moved.

Every FRAME module has E orders ``a_e = sigmoid(θ_e)`` (learned) or a fixed buffer. The starting
orders come from the module's settings (``FrameConfig.init_orders`` after per-module overrides,
:meth:`Adapter.expert_domain`); the trajectory, when a run wrote one,
from its ``orders.jsonl`` (:mod:`frame_peft.training.logging`: one ``{"step", "orders": {module:
[a_1 … a_E]}}`` object per logged step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from ..core.inject import find_injection
from .modules import group_by_kind, module_info


def read_order_log(path: str | Path) -> dict[str, Any]:
    """Read an ``orders.jsonl`` into ``{"steps": [int], "modules": {name: [[E floats] per step]}}``.

    Records keep their order in the file. A torn last line (a crash mid-write) is dropped; a bad
    line anywhere else, or a module missing at some step that others have, raises ``ValueError``.
    """
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break  # a torn last line from an interrupted run
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err})") from err
    steps: list[int] = []
    modules: dict[str, list[list[float]]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "step" not in record or "orders" not in record:
            raise ValueError(f"{path}: record {i + 1} lacks 'step' or 'orders': {record!r:.200}")
        step, orders = int(record["step"]), record["orders"]
        if i == 0:
            modules = {name: [] for name in orders}
        missing = sorted(set(modules) - set(orders))
        extra = sorted(set(orders) - set(modules))
        if missing or extra:
            where = f"missing at step {step}: {missing}" if missing else ""
            if extra:
                where += ("; " if where else "") + f"absent before step {step}: {extra}"
            raise ValueError(f"{path}: every step must list the same modules; {where}")
        for name, values in orders.items():
            modules[name].append([float(a) for a in values])
        steps.append(step)
    return {"steps": steps, "modules": modules}


def read_scan_log(path: str | Path) -> list[dict[str, Any]]:
    """The order scans a run made (its ``scans.jsonl``, one report per scan), summarised::

        [{"step", "first", "num_jumps", "experts", "at_zero", "note"}]

    ``at_zero``: experts at order 0 after the scan. A torn last line is dropped; any other bad line
    raises ``ValueError``.
    """
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err})") from err
        if not isinstance(rec, dict) or "step" not in rec or "modules" not in rec:
            raise ValueError(f"{path}: record {i + 1} is not an order-scan report")
        experts = [e for m in rec["modules"] for e in m["experts"]]
        out.append(
            {
                "step": int(rec["step"]),
                "first": bool(rec.get("first")),
                "num_jumps": sum(bool(e.get("jumped")) for e in experts),
                "experts": len(experts),
                "at_zero": sum(e.get("order_after") == 0 for e in experts),
                "note": rec.get("note", ""),
            }
        )
    return out


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)  # population std, as the logs
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def order_statistics(
    model: nn.Module, order_log: str | Path | None = None, scan_log: str | Path | None = None
) -> dict | None:
    """Final and initial orders of every FRAME module, per kind, per layer and overall.

    Returns None when ``model`` has no FRAME module. Otherwise::

        {"modules": {name: {"layer": int|None, "kind": str, "orders": [E], "initial": [E],
                            "learned": bool}},
         "by_kind": {kind: {"layers": [int|None], "names": [str], "orders": [[E] per module]}},
         "per_layer": [{"layer": int, "mean", "std", "min", "max"}],
         "summary": {"mean", "std", "min", "max", "mean_abs_change"},
         "trajectory": read_order_log(order_log) or None,
         "scans": read_scan_log(scan_log) or []}

    ``by_kind`` rows are the modules of that kind sorted by layer (a layer × expert heatmap; a
    layer appears twice only when two modules of one layer share a kind, e.g. GPT-2's
    ``attn.c_proj`` and ``mlp.c_proj``, hence ``names``). ``per_layer`` pools the orders of all
    FRAME modules of a layer (modules without a layer index only enter ``summary``); stds are
    population stds; ``mean_abs_change`` is the mean of ``|final − initial|`` over all orders.
    Fixed-order modules are included (their initial and final orders are equal).
    """
    inj = find_injection(model)
    if inj is None:
        return None
    domains = {n: layer.adapter.expert_domain() for n, layer in inj.layers.items()}
    domains = {n: d for n, d in domains.items() if d is not None}
    if not domains:
        return None
    modules = {}
    for name, domain in domains.items():
        info = module_info(name)
        modules[name] = {
            "layer": info.layer,
            "kind": info.kind,
            "orders": [float(a) for a in domain.orders.float().cpu()],
            "initial": list(domain.initial),
            "learned": domain.learned,
        }
    by_kind = {
        kind: {
            "layers": [i.layer for i in infos],
            "names": [i.name for i in infos],
            "orders": [modules[i.name]["orders"] for i in infos],
        }
        for kind, infos in group_by_kind(modules).items()
    }
    pooled: dict[int, list[float]] = {}
    for m in modules.values():
        if m["layer"] is not None:
            pooled.setdefault(m["layer"], []).extend(m["orders"])
    per_layer = [{"layer": layer, **_stats(pooled[layer])} for layer in sorted(pooled)]
    final = [a for m in modules.values() for a in m["orders"]]
    change = [abs(a - b) for m in modules.values() for a, b in zip(m["orders"], m["initial"],
                                                                     strict=True)]  # fmt: skip
    summary = {**_stats(final), "mean_abs_change": sum(change) / len(change)}
    trajectory = read_order_log(order_log) if order_log is not None else None
    return {
        "modules": modules,
        "by_kind": by_kind,
        "per_layer": per_layer,
        "summary": summary,
        "trajectory": trajectory,
        "scans": read_scan_log(scan_log) if scan_log is not None else [],
    }
