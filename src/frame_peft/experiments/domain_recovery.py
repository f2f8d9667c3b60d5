"""``domain-recovery``: do FRAME's experts find the fractional domain a task lives in?

Set-up (:mod:`.synthetic`): a frozen random d × d layer, T tasks whose teacher update is rank r_t
in the fractional domain of order a_t (default d = 64, a_t ∈ {0, 0.3, 0.6, 1}, r_t = 4, chirp
teachers), each task with its own input mean so a router can tell the tasks apart.

Three parts, all on the same tasks, repeated for each seed (``--seeds N``; tables give mean ±
std over seeds, and ``results.json`` keeps every seed):

1. **Methods** (multi-task, union of the tasks; :data:`.synthetic.METHOD_INFO`): FRAME as shipped,
   FRAME with gradient-only orders, with the order scan, with orders fixed at the spread init;
   MoE-LoRA (E = 8, k = 2, r = 2) and MoE-LoRA with rank 2r per expert (FRAME's per-token FLOPs:
   the control FRAME must beat), LoRA (r = k·r = 4) and FourierMoE (E = 8, k = 2,
   n = r·(d_in + d_out)/2 coefficients per expert). Per task: relative error to the teacher on
   held-out inputs and the floor of the method's per-token budget (Eckart–Young at spatial rank
   k·r for MoE-LoRA and LoRA, 2k·r for MoE-LoRA-2r; best k rings for FourierMoE; for FRAME 0
   when its orders equal the teacher's). r_t = k·r is chosen so that two
   FRAME experts at the teacher's order can represent the teacher exactly while MoE-LoRA's
   per-token spatial rank k·r is below the teacher's 2·r_t whenever a_t ≠ 0 (with r_t = r, two
   spatial experts together would reach rank 2r and need no domain at all). For FRAME, per task:
   the experts that serve it (mean renormalised gates), their orders before and after training,
   the order error of the top expert and the gate-weighted order error of all serving experts.
2. **FRAME variants** (the "order learning" investigation): order lr 1e-2 and 1e-1, orders
   initialised near the teachers' (each pair of experts at a_t ± 1/d), all at 0.5, the exact
   transform (teachers and student exact), orders frozen for the first quarter of training, and
   the ORACLE (orders fixed at the teachers': what the parametrisation can do when the orders are
   right; routing is still learned). Routing remedies: oracle routing (router fixed to the task
   means, :func:`.synthetic_train.task_router`) with learned orders, which isolates order
   learning; routing held back for the first quarter (:func:`.synthetic_train.delayed_router`:
   router frozen at its random init with dense gates, so the experts specialise before routing
   is decided), with oracle or learned orders; and, with oracle orders, a 10x balance loss or
   router jitter.
   The ``scan-*`` variants vary the order scan: sketch basis shared or per expert, Switch balance
   loss, one scan only, orders held after the scan, oracle routing, and teachers built with the
   exact FrFT (found by the chirp surrogate, or by the exact transform).
3. **Order basin** (no routing): one FRAME expert (E = k = 1, rank r_t) trained on one task from
   an initial order a_t ± δ (δ in units of 1/d, moved into (0, 1)); does its order converge to
   a_t? This measures the width of the basin of the teacher's order directly.

Tolerance: an order is "recovered" when |a − a_t| ≤ ``tolerance_units``/d (default 0.5/d). The
transform's decorrelation width is about 4/d (METHODS §1; the ``coherence`` experiment measures
it), and the error to the teacher of an expert 4/d off is already as large as at a random order
(part 3), so the tolerance must be a fraction of 1/d; 0.5/d is half the smallest basin offset, so
a run whose order does not move cannot count as recovered. For mixtures the criterion is the
gate-weighted order error of the experts serving the task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ._multi import configured, mean_std, scalar_mean_std, seed_list
from ._output import write_outputs
from ._plots import plot_basin, plot_method_errors, plot_order_traces
from .domain_recovery_report import markdown_report
from .synthetic import (
    DEFAULT_METHODS,
    FRAME_METHODS,
    METHOD_INFO,
    METHODS,
    Budget,
    TaskSpec,
    adapter_config,
    build_tasks,
    rank_floor,
    spectral_floor,
)
from .synthetic_train import (
    RunResult,
    TrainConfig,
    delayed_router,
    task_router,
    train_adapter,
)

NAME = "domain-recovery"

#: FRAME variants: name -> one-line description. The order-learning ones use FRAME with
#: gradient-only orders, the ``scan-*`` ones FRAME with the order scan.
VARIANTS = {
    "order-lr-1e-2": "order lr 1e-2 (default 1e-3)",
    "order-lr-1e-1": "order lr 1e-1",
    "init-near": "orders start at a_t ± 1/d (two experts per task)",
    "init-mid": "all orders start at 0.5",
    "exact": "exact FrFT for teachers and FRAME",
    "warmup-fixed": "orders frozen for the first 25% of steps",
    "oracle": "orders fixed at the teachers' (two experts per task), router learned",
    "oracle-routed": "orders fixed at the teachers' and router fixed to the task means",
    "learned-routed": "orders learned from the spread init, router fixed to the task means",
    "init-near-routed": "orders learned from a_t ± 1/d, router fixed to the task means",
    "oracle-router-delay": "orders fixed at the teachers'; router frozen at its random init and "
    "dense (gates ≈ 1/E) for the first 25% of steps, then top-k and learned",
    "router-delay": "orders learned from the spread init; router delayed as in oracle-router-delay",
    "oracle-aux-0.1": "orders fixed at the teachers', router learned, balance loss coef 0.1 "
    "(default 0.01)",
    "oracle-jitter-0.1": "orders fixed at the teachers', router learned, router input jitter 0.1",
    "scan-shared": "order scan with one sketch basis shared by a module's experts",
    "scan-grouped": "order scan with the order-grouped Switch balance loss (the per-expert one is "
    "the scan's default)",
    "scan-rescans": "rescans at 25 % and 40 % after the scan at 10 % (the first design)",
    "scan-from-zero": "every expert starts held at order 0 (MoE-LoRA); the scan moves only those "
    "whose update fits 5 % better elsewhere",
    "scan-fixed": "order scan, orders then held (no gradient refinement)",
    "scan-more-tokens": "order scan on 4096 recorded tokens over 16 batches (default 1024 over 8)",
    "scan-routed": "order scan with the router fixed to the task means (isolates the scan)",
    "scan-exact-teachers": "teachers built with the exact FrFT, FRAME (chirp) with the order scan",
    "scan-exact": "exact FrFT for teachers and FRAME, with the order scan",
}
SCAN_VARIANTS = {
    "scan-shared": {"scan_basis": "shared"},
    "scan-grouped": {"aux_loss": "grouped"},
    "scan-rescans": {"scan_at": [0.1, 0.25, 0.4]},
    "scan-from-zero": {"init_orders": "zeros"},
    "scan-fixed": {"order_mode": "fixed"},
    "scan-more-tokens": {"scan_tokens": 4096, "scan_batches": 16},
    "scan-routed": {},
    "scan-exact-teachers": {},
    "scan-exact": {"transform": "exact"},
}


@dataclass
class DomainRecoveryConfig:
    """Sizes of the experiment. ``for_size("quick")`` is the reduced size the tests run.

    Args:
        tasks, budget, train: the task set, the matched budget and the training loop.
        methods: methods of part 1 (subset of ``METHODS``).
        variants: FRAME variants of part 2 (keys of ``VARIANTS``).
        basin_offsets: initial offsets δ·d of part 3 (positive integers, units of 1/d).
        basin_tasks: tasks of part 3 (indices; ``None``: all).
        basin_steps: training steps of each part-3 run.
        tolerance_units: recovery tolerance in units of 1/d (> 0).
    """

    tasks: TaskSpec = field(default_factory=TaskSpec)
    budget: Budget = field(default_factory=Budget)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    methods: tuple[str, ...] = DEFAULT_METHODS
    variants: tuple[str, ...] = tuple(VARIANTS)
    basin_offsets: tuple[int, ...] = (1, 2, 4, 8)
    basin_tasks: tuple[int, ...] | None = None
    basin_steps: int = 1000
    tolerance_units: float = 0.5

    def __post_init__(self) -> None:
        self.methods, self.variants = tuple(self.methods), tuple(self.variants)
        self.basin_offsets = tuple(self.basin_offsets)
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants {bad} unknown; choose from {list(VARIANTS)}")
        if any(not isinstance(o, int) or o <= 0 for o in self.basin_offsets):
            raise ValueError(f"basin_offsets must be positive integers, got {self.basin_offsets}")
        if self.basin_tasks is not None:
            self.basin_tasks = tuple(self.basin_tasks)
            if any(not 0 <= t < len(self.tasks.task_orders) for t in self.basin_tasks):
                raise ValueError(
                    f"basin_tasks must index the {len(self.tasks.task_orders)} tasks, "
                    f"got {self.basin_tasks}"
                )
        if self.basin_steps < 1:
            raise ValueError(f"basin_steps must be >= 1, got {self.basin_steps}")
        if not self.tolerance_units > 0:
            raise ValueError(f"tolerance_units must be > 0, got {self.tolerance_units}")

    @classmethod
    def for_size(cls, size: str) -> DomainRecoveryConfig:
        if size == "full":
            return cls()
        if size == "quick":
            return cls(
                tasks=TaskSpec(dim=16, eval_inputs=256),
                train=TrainConfig(steps=100, batch_per_task=32, log_every=10),
                methods=("frame-scan", "moe-lora", "moe-lora-2r", "lora"),
                variants=("oracle-routed", "scan-rescans"),
                basin_offsets=(1, 8),
                basin_tasks=(1, 2),
                basin_steps=100,
            )
        raise ValueError(f"size must be 'full' or 'quick', got {size!r}")


def expert_orders(task_orders: tuple[float, ...], num_experts: int, offset: float) -> list[float]:
    """Expert e -> the order of task ``e·T // E`` plus ``offset`` with alternating sign, moved into
    [0.01, 0.99] when ``offset`` is nonzero (learned orders must lie in (0, 1))."""
    out = []
    for e in range(num_experts):
        a = task_orders[e * len(task_orders) // num_experts] + offset * (-1) ** e
        out.append(min(max(a, 0.01), 0.99) if offset else a)
    return out


def _variant_run(name: str, cfg: DomainRecoveryConfig, seed: int) -> tuple[dict, RunResult]:
    spec, train, frame, method = cfg.tasks, cfg.train, {}, "frame-gradient"
    d, e = spec.dim, cfg.budget.num_experts
    if name.startswith("scan-"):
        method, frame = "frame-scan", dict(SCAN_VARIANTS[name])
        if name in ("scan-exact-teachers", "scan-exact"):
            spec = replace(spec, teacher_transform="exact")
    elif name.startswith("order-lr-"):
        train = replace(train, order_lr=float(name.removeprefix("order-lr-")))
    elif name.startswith("init-near"):
        frame["init_orders"] = expert_orders(spec.task_orders, e, 1.0 / d)
    elif name == "init-mid":
        frame["init_orders"] = [0.5] * e
    elif name == "exact":
        spec, frame["transform"] = replace(spec, teacher_transform="exact"), "exact"
    elif name == "warmup-fixed":
        train = replace(train, order_freeze_steps=train.steps // 4)
    elif name.startswith("oracle"):
        frame.update(order_mode="fixed", init_orders=expert_orders(spec.task_orders, e, 0.0))
        if name.startswith("oracle-aux-"):
            frame["aux_loss_coef"] = float(name.removeprefix("oracle-aux-"))
        elif name.startswith("oracle-jitter-"):
            frame["router_jitter"] = float(name.removeprefix("oracle-jitter-"))
    tasks = build_tasks(spec, seed)
    config = adapter_config(method, cfg.budget, **frame)
    # Oracle routing: expert i serves task i·T // E, the task whose order expert_orders gives it.
    prepare = on_step = None
    if name.endswith("-routed"):
        prepare = task_router(tasks, [i * tasks.num_tasks // e for i in range(e)])
    if name.endswith("router-delay"):
        on_step = delayed_router(train.steps // 4)
    all_tasks = list(range(tasks.num_tasks))
    run_ = train_adapter(tasks, config, train, all_tasks, seed, prepare, on_step)
    return frame, run_


def order_report(run: RunResult, task_orders: tuple[float, ...], tol: float) -> list[dict]:
    """Per task: serving experts, the top expert's order error and the gate-weighted order error
    of all serving experts (before and after training, with the final gates)."""
    rows = []
    for t, gates in enumerate(run.gates):
        a_t = task_orders[t]
        top = max(range(len(gates)), key=gates.__getitem__)
        served = sorted(range(len(gates)), key=lambda e: -gates[e])[:2]
        weighted = sum(g * abs(a - a_t) for g, a in zip(gates, run.orders, strict=True))
        weighted0 = sum(g * abs(a - a_t) for g, a in zip(gates, run.initial_orders, strict=True))
        rows.append(
            {
                "task": t,
                "teacher_order": a_t,
                "served_experts": served,
                "served_gates": [gates[e] for e in served],
                "served_orders_initial": [run.initial_orders[e] for e in served],
                "served_orders_final": [run.orders[e] for e in served],
                "top_order_error": round(abs(run.orders[top] - a_t), 6),
                "served_order_error": round(weighted, 6),
                "served_order_error_initial": round(weighted0, 6),
                "gate_weighted_order": round(
                    sum(g * a for g, a in zip(gates, run.orders, strict=True)), 6
                ),
                "recovered": bool(weighted <= tol),
            }
        )
    return rows


def _basin(cfg: DomainRecoveryConfig, tasks, seed: int, tol: float) -> list[dict]:
    d, rows = cfg.tasks.dim, []
    train = replace(cfg.train, steps=cfg.basin_steps)
    chosen = range(len(cfg.tasks.task_orders)) if cfg.basin_tasks is None else cfg.basin_tasks
    for t in chosen:
        a_t = cfg.tasks.task_orders[t]
        for units in cfg.basin_offsets:
            sign = 1.0 if a_t < 0.5 else -1.0
            start = min(max(a_t + sign * units / d, 0.01), 0.99)
            budget = Budget(1, 1, cfg.tasks.teacher_rank)
            config = adapter_config("frame", budget, init_orders=[start])
            run = train_adapter(tasks, config, train, [t], seed)
            final = run.orders[0]
            rows.append(
                {
                    "task": t,
                    "teacher_order": a_t,
                    "offset_units": units,
                    "initial_order": round(start, 6),
                    "final_order": final,
                    "order_error": round(abs(final - a_t), 6),
                    "error": run.errors[0],
                    "recovered": bool(abs(final - a_t) <= tol),
                }
            )
    return rows


def _one_seed(cfg: DomainRecoveryConfig, seed: int, say) -> dict[str, Any]:
    """Every part of the experiment for one seed."""
    tasks = build_tasks(cfg.tasks, seed)
    tol = cfg.tolerance_units / cfg.tasks.dim
    all_tasks = list(range(tasks.num_tasks))
    methods: dict[str, Any] = {}
    traces: dict[str, Any] = {}
    for method in cfg.methods:
        run_ = train_adapter(tasks, adapter_config(method, cfg.budget), cfg.train, all_tasks, seed)
        methods[method] = {
            "active_parameters": run_.active_parameters,
            "errors": run_.errors,
            "floor": _floor(method, tasks, cfg.budget),
            "gates": run_.gates,
        }
        if method in FRAME_METHODS:
            methods[method]["orders"] = _orders_entry(run_, cfg, tol)
            traces[method] = methods[method]["orders"]
        say(f"[{NAME}] seed {seed} {method}: active={run_.active_parameters} errors={run_.errors}")
    variants: dict[str, Any] = {}
    for name in cfg.variants:
        frame_kwargs, run_ = _variant_run(name, cfg, seed)
        variants[name] = {
            "description": VARIANTS[name],
            "frame_options": frame_kwargs,
            "errors": run_.errors,
            **_orders_entry(run_, cfg, tol),
        }
        say(f"[{NAME}] seed {seed} variant {name}: errors={run_.errors} orders={run_.orders}")
    basin = _basin(cfg, tasks, seed, tol)
    recovered = [(r["task"], r["offset_units"]) for r in basin if r["recovered"]]
    say(f"[{NAME}] seed {seed} basin: recovered (task, offset·d) = {recovered}")
    return {"methods": methods, "variants": variants, "basin": basin}


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of one method's (or variant's) per-task errors and order recovery."""
    errors = [e["errors"] for e in entries]
    mean, std = mean_std(errors)
    task_means = [sum(row) / len(row) for row in errors]
    out: dict[str, Any] = {
        "errors": mean,
        "errors_std": std,
        "errors_per_seed": errors,
        "mean_error": scalar_mean_std(task_means)[0],
        "mean_error_std": scalar_mean_std(task_means)[1],
    }
    orders = [e.get("orders", e) for e in entries]
    if "num_recovered" in orders[0]:
        out["num_recovered_per_seed"] = [o["num_recovered"] for o in orders]
        served = [o["mean_served_order_error"] for o in orders]
        out["mean_served_order_error"], out["mean_served_order_error_std"] = scalar_mean_std(served)
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
    """Run the experiment at ``size`` ("full" | "quick") for ``seeds`` consecutive seeds from
    ``seed``, write outputs, return the results. ``methods`` replaces the methods of part 1,
    ``sets`` overrides config fields (``{"tasks.dim": 128, ...}``, see :mod:`._multi`)."""
    import time

    cfg = configured(DomainRecoveryConfig, size, sets, methods)
    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    seed_values = seed_list(seed, seeds)
    per_seed = {s: _one_seed(cfg, s, say) for s in seed_values}
    first = per_seed[seed_values[0]]
    k_rank = cfg.budget.top_k * cfg.budget.expert_rank
    results: dict[str, Any] = {
        "experiment": NAME,
        "size": size,
        "seeds": seed_values,
        "config": asdict(cfg),
        "tolerance": cfg.tolerance_units / cfg.tasks.dim,
        "floor_kinds": {
            "frame*": "0 at the teachers' orders (oracle parametrisation)",
            "moe-lora": f"Eckart-Young, spatial rank {k_rank}",
            "moe-lora-2r": f"Eckart-Young, spatial rank {2 * k_rank}",
            "lora": f"Eckart-Young, spatial rank {k_rank}",
            "fouriermoe": f"best {cfg.budget.top_k} rings, Frobenius norm (approximate)",
        },
        "methods": {
            m: {
                "description": METHOD_INFO[m],
                "active_parameters": first["methods"][m]["active_parameters"],
                "floor": mean_std([per_seed[s]["methods"][m]["floor"] for s in seed_values])[0],
                **_aggregate([per_seed[s]["methods"][m] for s in seed_values]),
            }
            for m in cfg.methods
        },
        "variants": {
            v: {
                "description": VARIANTS[v],
                "frame_options": first["variants"][v]["frame_options"],
                **_aggregate([per_seed[s]["variants"][v] for s in seed_values]),
            }
            for v in cfg.variants
        },
        "per_seed": {str(s): per_seed[s] for s in seed_values},
    }
    elapsed = time.perf_counter() - start
    tol = results["tolerance"]
    plots = {"errors": lambda plt: plot_method_errors(plt, results, cfg.tasks.task_orders)}
    if first["basin"]:
        plots["basin"] = lambda plt: plot_basin(plt, first["basin"], cfg.tasks.dim, tol)
    traces = {f"FRAME {n}": first["methods"][n]["orders"] for n in cfg.methods
              if n in FRAME_METHODS}  # fmt: skip
    traces.update({f"FRAME {n}": v for n, v in first["variants"].items()
                   if v["frame_options"].get("order_mode") != "fixed"})  # fmt: skip
    if traces:
        plots["orders"] = lambda plt: plot_order_traces(plt, traces, cfg.tasks.task_orders)
    write_outputs(output_dir, results, markdown_report(results, cfg, elapsed), plots)
    return results


def _floor(method: str, tasks, budget: Budget) -> list[float]:
    k_rank = budget.top_k * budget.expert_rank
    if method in ("moe-lora", "lora", "moe-lora-2r"):
        rank = 2 * k_rank if method == "moe-lora-2r" else k_rank
        return [round(f, 6) for f in rank_floor(tasks, rank)]
    if method == "fouriermoe":
        return [
            round(f, 6)
            for f in spectral_floor(tasks, fouriermoe_positions(tasks, budget), budget.top_k)
        ]
    return [0.0] * tasks.num_tasks


def fouriermoe_positions(tasks, budget: Budget):
    """The (E, n, 2) frequency positions FourierMoE draws for the ``proj`` layer at ``budget``."""
    import frame_peft as fp

    from .synthetic import FrozenBase

    model = fp.inject(FrozenBase(tasks.w0), adapter_config("fouriermoe", budget))
    return fp.adapted_layers(model)["proj"].adapter.positions


def _orders_entry(run_: RunResult, cfg: DomainRecoveryConfig, tol: float) -> dict[str, Any]:
    per_task = order_report(run_, cfg.tasks.task_orders, tol)
    return {
        "initial_orders": run_.initial_orders,
        "final_orders": run_.orders,
        "gates": run_.gates,
        "scans": run_.scans,
        "per_task": per_task,
        "num_recovered": sum(r["recovered"] for r in per_task),
        "mean_served_order_error": round(
            sum(r["served_order_error"] for r in per_task) / len(per_task), 6
        ),
        "logged_steps": run_.logged_steps,
        "order_history": run_.order_history,
    }
