"""``interference``: how much does training on the union of the tasks cost each method?

The tasks of ``domain-recovery`` (:mod:`.synthetic`). For every method: one adapter per task
trained on that task alone (single-task) and one adapter trained on the union (multi-task), with
the same steps and the same inputs per task per step (so each task sees the same number of
examples in both settings), then the relative error per task on held-out inputs. The gap is
``multi − single`` per task: positive means the task lost from sharing the adapter. A fixed
update (LoRA) must serve every task at once, so the multi-task error of each task is bounded
below by the Eckart–Young floor of its rank (reported); mixtures can route tasks apart.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._tables import markdown_table
from ._multi import configured, mean_std, pm, scalar_mean_std, seed_list
from ._output import fmt, write_outputs
from .synthetic import (
    DEFAULT_METHODS,
    METHOD_INFO,
    METHODS,
    Budget,
    TaskSpec,
    adapter_config,
    build_tasks,
    rank_floor,
)
from .synthetic_train import TrainConfig, train_adapter

NAME = "interference"


@dataclass
class InterferenceConfig:
    """Sizes of the experiment; ``for_size("quick")`` is the test size.

    Args:
        tasks, budget, train: as in ``domain-recovery`` (the same defaults).
        methods: non-empty subset of ``METHODS``.
    """

    tasks: TaskSpec = field(default_factory=TaskSpec)
    budget: Budget = field(default_factory=Budget)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")

    @classmethod
    def for_size(cls, size: str) -> InterferenceConfig:
        if size == "full":
            return cls()
        if size == "quick":
            return cls(
                tasks=TaskSpec(dim=16, eval_inputs=256),
                train=TrainConfig(steps=60, batch_per_task=32, log_every=10),
                methods=("frame-scan", "moe-lora", "lora"),
            )
        raise ValueError(f"size must be 'full' or 'quick', got {size!r}")


def _one_seed(cfg: InterferenceConfig, seed: int, say) -> dict[str, Any]:
    tasks = build_tasks(cfg.tasks, seed)
    all_tasks = list(range(tasks.num_tasks))
    out: dict[str, Any] = {
        "rank_floor": [
            round(f, 6) for f in rank_floor(tasks, cfg.budget.top_k * cfg.budget.expert_rank)
        ],
        "methods": {},
    }
    for method in cfg.methods:
        config = adapter_config(method, cfg.budget)
        multi = train_adapter(tasks, config, cfg.train, all_tasks, seed)
        single = [train_adapter(tasks, config, cfg.train, [t], seed).errors[0] for t in all_tasks]
        gap = [round(m - s, 6) for m, s in zip(multi.errors, single, strict=True)]
        out["methods"][method] = {
            "active_parameters": multi.active_parameters,
            "single": single,
            "multi": multi.errors,
            "gap": gap,
            "mean_gap": round(sum(gap) / len(gap), 6),
        }
        say(f"[{NAME}] seed {seed} {method}: single={single} multi={multi.errors}")
    return out


def run(
    output_dir: Path,
    *,
    size: str = "full",
    seed: int = 0,
    progress: bool = True,
    seeds: int = 1,
    methods: list[str] | None = None,
    sets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the experiment at ``size`` ("full" | "quick") for ``seeds`` seeds from ``seed``, write
    outputs, return the results (``methods``/``sets`` as in ``domain-recovery``)."""
    cfg = configured(InterferenceConfig, size, sets, methods)
    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    seed_values = seed_list(seed, seeds)
    per_seed = {s: _one_seed(cfg, s, say) for s in seed_values}
    methods_out: dict[str, Any] = {}
    for method in cfg.methods:
        rows = [per_seed[s]["methods"][method] for s in seed_values]
        entry: dict[str, Any] = {
            "description": METHOD_INFO[method],
            "active_parameters": rows[0]["active_parameters"],
        }
        for key in ("single", "multi", "gap"):
            entry[key], entry[f"{key}_std"] = mean_std([r[key] for r in rows])
        entry["mean_gap"], entry["mean_gap_std"] = scalar_mean_std([r["mean_gap"] for r in rows])
        entry["per_seed"] = {str(s): r for s, r in zip(seed_values, rows, strict=True)}
        methods_out[method] = entry
    results = {
        "experiment": NAME,
        "size": size,
        "seeds": seed_values,
        "config": asdict(cfg),
        "rank_floor": mean_std([per_seed[s]["rank_floor"] for s in seed_values])[0],
        "rank_floor_rank": cfg.budget.top_k * cfg.budget.expert_rank,
        "methods": methods_out,
    }
    elapsed = time.perf_counter() - start
    plots = {"gap": lambda plt: _plot_gap(plt, results, cfg.tasks.task_orders)}
    write_outputs(output_dir, results, _markdown(results, cfg, elapsed), plots)
    return results


def _markdown(results: dict[str, Any], cfg: InterferenceConfig, elapsed: float) -> str:
    cols = [f"a={a:g}" for a in cfg.tasks.task_orders]
    rows = []
    for method, m in results["methods"].items():
        cells = [
            f"{s:.3f} / {u:.3f} / {g:+.3f}"
            for s, u, g in zip(m["single"], m["multi"], m["gap"], strict=True)
        ]
        rows.append([method, m["active_parameters"], *cells, pm(m["mean_gap"], m["mean_gap_std"])])
    floor = ", ".join(f"{f:.3f}" for f in results["rank_floor"])
    seeds = results["seeds"]
    return "\n".join(
        [
            f"# {NAME} ({results['size']}, seeds {', '.join(map(str, seeds))})",
            "",
            f"d = {cfg.tasks.dim}, {cfg.train.steps} steps x {cfg.train.batch_per_task} inputs "
            f"per task in both settings. Runtime {elapsed:.0f} s. Means over {len(seeds)} "
            "seed(s); the mean gap also ± std over seeds.",
            "",
            "## Relative error per task: single-task / multi-task / gap (multi - single)",
            "",
            markdown_table(["method", "active params", *cols, "mean gap"], rows, fmt=fmt),
            "",
            f"Eckart-Young floor of a fixed rank-{results['rank_floor_rank']} update per task "
            f"(bounds LoRA in both settings): {floor}.",
        ]
    )


def _plot_gap(plt: Any, results: dict[str, Any], task_orders: tuple[float, ...]) -> Any:
    methods = list(results["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        m = results["methods"][method]
        xs = [t + (i - (len(methods) - 1) / 2) * width for t in range(len(task_orders))]
        axes[0].bar(xs, m["single"], width, label=method)
        axes[1].bar(xs, m["gap"], width, label=method)
    for ax, title in zip(axes, ("single-task error", "gap: multi - single"), strict=True):
        ax.set_xticks(range(len(task_orders)), [f"a_t = {a:g}" for a in task_orders])
        ax.set_title(title)
        ax.axhline(0, color="black", lw=0.6)
    axes[0].set_ylabel("relative error to teacher")
    axes[1].legend(fontsize=8)
    return fig
