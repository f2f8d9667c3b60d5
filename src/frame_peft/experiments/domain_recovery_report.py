"""The ``domain-recovery`` Markdown report (``results.md``): its tables from the results dict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._tables import markdown_table
from ._multi import pm
from ._output import fmt

if TYPE_CHECKING:
    from .domain_recovery import DomainRecoveryConfig


def _error_rows(entries: dict[str, Any], with_floor: bool) -> list[list[Any]]:
    rows = []
    for name, e in entries.items():
        cells = [pm(m, s) for m, s in zip(e["errors"], e["errors_std"], strict=True)]
        if with_floor:
            cells = [f"{c} ({f:.3f})" for c, f in zip(cells, e["floor"], strict=True)]
        rows.append([name, *cells, pm(e["mean_error"], e["mean_error_std"])])
    return rows


def _recovery(entry: dict[str, Any]) -> list[Any]:
    if "num_recovered_per_seed" not in entry:
        return ["–", "–"]
    served = pm(entry["mean_served_order_error"], entry["mean_served_order_error_std"], 4)
    return [served, ", ".join(str(n) for n in entry["num_recovered_per_seed"])]


def _scan_lines(results: dict[str, Any]) -> list[str]:
    """Every scan of the first seed's scan runs: orders before -> after, and which moved."""
    seed = str(results["seeds"][0])
    runs = {f"method {n}": m["orders"] for n, m in results["per_seed"][seed]["methods"].items()
            if m.get("orders", {}).get("scans")}  # fmt: skip
    runs.update({f"variant {n}": v for n, v in results["per_seed"][seed]["variants"].items()
                 if v.get("scans")})  # fmt: skip
    lines = []
    for label, entry in runs.items():
        for scan in entry["scans"]:
            moved = [e for e, j in enumerate(scan["jumped"]) if j]
            lines.append(
                f"- {label}, step {scan['step']} ({'first' if scan['first'] else 'rescan'}): "
                f"{', '.join(f'{a:.3f}' for a in scan['orders_before'])} -> "
                f"{', '.join(f'{a:.3f}' for a in scan['orders_after'])}; moved {moved or 'none'}"
            )
    return lines


def markdown_report(results: dict[str, Any], cfg: DomainRecoveryConfig, elapsed: float) -> str:
    """The report: errors per method, order recovery, scans, variants, basin; mean ± std."""
    orders = cfg.tasks.task_orders
    task_cols = [f"a={a:g}" for a in orders]
    seeds = results["seeds"]
    out = [
        f"# {results['experiment']} ({results['size']}, seeds {', '.join(map(str, seeds))})",
        "",
        f"d = {cfg.tasks.dim}, teacher rank {cfg.tasks.teacher_rank} in its own domain "
        f"({cfg.tasks.teacher_transform}), {cfg.train.steps} steps x {cfg.train.batch_per_task} "
        f"inputs per task; budget E = {cfg.budget.num_experts}, k = {cfg.budget.top_k}, "
        f"r = {cfg.budget.expert_rank}. Runtime {elapsed:.0f} s. Cells: mean ± std over "
        f"{len(seeds)} seed(s).",
        "",
        "## Relative error to the teacher per task (floor of the method's budget in brackets)",
        "",
        markdown_table(
            ["method", *task_cols, "mean over tasks"],
            _error_rows(results["methods"], with_floor=True),
            fmt=fmt,
        ),
        "",
        markdown_table(
            ["method", "what", "active params"],
            [[n, m["description"], m["active_parameters"]] for n, m in results["methods"].items()],
            fmt=fmt,
        ),
        "",
        "## Mean error over tasks, per seed",
        "",
        markdown_table(
            ["method", *[f"seed {s}" for s in seeds]],
            [
                [n, *[sum(r) / len(r) for r in m["errors_per_seed"]]]
                for n, m in results["methods"].items()
            ],
            fmt=fmt,
        ),
    ]
    frame_rows = [[n, *_recovery(m)] for n, m in results["methods"].items()
                  if "num_recovered_per_seed" in m]  # fmt: skip
    frame_rows += [[f"variant {n}", *_recovery(v)] for n, v in results["variants"].items()]
    if frame_rows:
        out += [
            "",
            f"## FRAME orders: mean gate-weighted order error of the experts serving each task, "
            f"and tasks recovered (within {results['tolerance']:.4f} = "
            f"{cfg.tolerance_units:g}/d) per seed",
            "",
            markdown_table(
                ["run", "served order error", "recovered per seed"], frame_rows, fmt=fmt
            ),
        ]
    scans = _scan_lines(results)
    if scans:
        out += ["", f"## Order scans of seed {seeds[0]} (expert orders before -> after)", ""]
        out += scans
    if results["variants"]:
        out += [
            "",
            "## FRAME variants: relative error per task",
            "",
            markdown_table(
                ["variant", *task_cols, "mean over tasks"],
                _error_rows(results["variants"], with_floor=False),
                fmt=fmt,
            ),
            "",
            markdown_table(
                ["variant", "what"],
                [[n, v["description"]] for n, v in results["variants"].items()],
                fmt=fmt,
            ),
        ]
    basin = results["per_seed"][str(seeds[0])]["basin"]
    if basin:
        offsets = sorted({r["offset_units"] for r in basin})
        rows = []
        for t in sorted({r["task"] for r in basin}):
            a, cells = orders[t], []
            for units in offsets:
                r = next(x for x in basin if x["task"] == t and x["offset_units"] == units)
                hits = sum(
                    next(x for x in results["per_seed"][str(s)]["basin"]
                         if x["task"] == t and x["offset_units"] == units)["recovered"]
                    for s in seeds
                )  # fmt: skip
                cells.append(
                    f"{r['initial_order']:.3f}->{r['final_order']:.3f} (err {r['error']:.2f}); "
                    f"recovered {hits}/{len(seeds)}"
                )
            rows.append([f"{a:g}", *cells])
        out += [
            "",
            f"## Order basin: one expert, no routing; seed {seeds[0]} initial -> final order "
            "(relative error), and seeds recovered",
            "",
            markdown_table(["a_t", *[f"start {u}/d away" for u in offsets]], rows, fmt=fmt),
        ]
    return "\n".join(out)
