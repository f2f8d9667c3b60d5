"""The ``domain-recovery`` Markdown report (``results.md``): its tables from the results dict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._output import markdown_table

if TYPE_CHECKING:
    from .domain_recovery import DomainRecoveryConfig


def markdown_report(
    results: dict[str, Any], cfg: DomainRecoveryConfig, seed: int, elapsed: float
) -> str:
    """The report of one run: errors per method, FRAME orders per task, variants, basin."""
    orders = cfg.tasks.task_orders
    task_cols = [f"a={a:g}" for a in orders]
    rows = []
    for method, entry in results["methods"].items():
        cells = [f"{e:.3f} ({f:.3f})" for e, f in zip(entry["errors"], entry["floor"], strict=True)]
        rows.append([method, entry["active_parameters"], *cells])
    out = [
        f"# {results['experiment']} ({results['size']}, seed {seed})",
        "",
        f"d = {cfg.tasks.dim}, teacher rank {cfg.tasks.teacher_rank} in its own domain "
        f"({cfg.tasks.teacher_transform}), {cfg.train.steps} steps x {cfg.train.batch_per_task} "
        f"inputs per task. Runtime {elapsed:.0f} s.",
        "",
        "## Relative error to the teacher per task (floor of the method's budget in brackets)",
        "",
        markdown_table(["method", "active params", *task_cols], rows),
    ]
    sections = []
    if "frame_orders" in results:
        sections.append(("FRAME (default)", results["frame_orders"]))
    sections += [(f"FRAME {n}", v) for n, v in results["variants"].items()]
    if sections:
        rows = []
        for label, entry in sections:
            for r in entry["per_task"]:
                rows.append(
                    [
                        label,
                        f"{r['teacher_order']:g}",
                        ", ".join(str(e) for e in r["served_experts"]),
                        ", ".join(f"{a:.3f}" for a in r["served_orders_initial"]),
                        ", ".join(f"{a:.3f}" for a in r["served_orders_final"]),
                        r["top_order_error"],
                        r["served_order_error_initial"],
                        r["served_order_error"],
                        "yes" if r["recovered"] else "no",
                    ]
                )
        out += [
            "",
            f"## FRAME orders per task (tolerance {results['tolerance']:.4f} = "
            f"{cfg.tolerance_units:g}/d)",
            "",
            markdown_table(
                [
                    "run",
                    "a_t",
                    "top-2 experts",
                    "their orders (init)",
                    "(final)",
                    "top err",
                    "served err (init)",
                    "served err (final)",
                    "recovered",
                ],
                rows,
            ),
        ]
    if results["variants"]:
        rows = [
            [
                f"FRAME {n}",
                v["description"],
                *v["errors"],
                v["mean_served_order_error"],
                v["num_recovered"],
            ]
            for n, v in results["variants"].items()
        ]
        if "frame_orders" in results:
            f = results["frame_orders"]
            rows.insert(
                0,
                [
                    "FRAME default",
                    "spread init, order lr 1e-3, chirp",
                    *results["methods"]["frame"]["errors"],
                    f["mean_served_order_error"],
                    f["num_recovered"],
                ],
            )
        out += [
            "",
            "## FRAME variants: relative error per task, mean served order error, tasks recovered",
            "",
            markdown_table(["run", "what", *task_cols, "order err", "recovered"], rows),
        ]
    basin = results["basin"]
    if basin:
        offsets = sorted({r["offset_units"] for r in basin})
        rows = []
        for t in sorted({r["task"] for r in basin}):
            a, cells = orders[t], []
            for units in offsets:
                r = next(x for x in basin if x["task"] == t and x["offset_units"] == units)
                cells.append(
                    f"{r['initial_order']:.3f}->{r['final_order']:.3f} (err {r['error']:.2f})"
                    + (" ok" if r["recovered"] else "")
                )
            rows.append([f"{a:g}", *cells])
        out += [
            "",
            "## Order basin: one expert, no routing; initial -> final order (relative error)",
            "",
            markdown_table(["a_t", *[f"start {u}/d away" for u in offsets]], rows),
        ]
    return "\n".join(out)
