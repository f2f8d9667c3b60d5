"""The controlled experiments (``frame-peft experiment NAME``) at their quick sizes, plus the
mathematical facts they rest on."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from frame_peft.experiments import EXPERIMENTS, run_experiment
from frame_peft.experiments.cli import add_experiment_parser
from frame_peft.experiments.cli import run_experiment as cli_run
from frame_peft.experiments.coherence_sweep import CoherenceConfig
from frame_peft.experiments.domain_recovery import DomainRecoveryConfig, expert_orders
from frame_peft.experiments.synthetic import (
    Budget,
    TaskSpec,
    adapter_config,
    build_tasks,
    rank_floor,
)
from frame_peft.experiments.synthetic_train import TrainConfig, delayed_router, train_adapter
from frame_peft.transforms import coherence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frame-peft")
    add_experiment_parser(parser.add_subparsers(dest="command"))
    return parser


# The maths ---------------------------------------------------------------------------------


def test_teacher_has_rank_r_in_its_domain_and_up_to_2r_in_space() -> None:
    spec = TaskSpec(dim=32, task_orders=(0.0, 0.5), teacher_rank=3, eval_inputs=64)
    tasks = build_tasks(spec, seed=0)
    ranks = [int(torch.linalg.matrix_rank(w.double(), rtol=1e-5)) for w in tasks.teachers]
    assert ranks == [3, 6]
    norms = tasks.teachers.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((2,), spec.teacher_scale * math.sqrt(32)), rtol=1e-5)
    # The floor is exactly 0 at the teacher's spatial rank and positive below it.
    assert rank_floor(tasks, 3)[0] < 1e-5 and rank_floor(tasks, 3)[1] > 0.1
    assert rank_floor(tasks, 6)[1] < 1e-5


def test_fixed_order_frame_fits_a_teacher_that_a_same_rank_spatial_expert_cannot() -> None:
    """One rank-r expert at the teacher's order represents Re(T^H B A T) exactly; a spatial
    rank-r expert is bound by the Eckart-Young floor (spatial rank 2r teacher); rank 2r LoRA fits.
    """
    spec = TaskSpec(dim=32, task_orders=(0.5,), teacher_rank=2, eval_inputs=256)
    tasks = build_tasks(spec, seed=0)
    train = TrainConfig(steps=300, batch_per_task=64, lr=3e-2)
    floor = rank_floor(tasks, 2)[0]
    assert floor > 0.3  # what "MoE-LoRA lacks the domain" means quantitatively here
    frame = adapter_config("frame", Budget(1, 1, 2), order_mode="fixed", init_orders=[0.5])
    assert train_adapter(tasks, frame, train, [0], seed=0).errors[0] < 0.02
    moe = train_adapter(tasks, adapter_config("moe-lora", Budget(1, 1, 2)), train, [0], seed=0)
    assert moe.errors[0] >= floor - 1e-6
    lora = train_adapter(tasks, adapter_config("lora", Budget(2, 2, 2)), train, [0], seed=0)
    assert lora.errors[0] < 0.02  # LoRA rank k·r = 4 = 2r_t


def test_delayed_router_is_frozen_and_dense_then_top_k_and_learned() -> None:
    import frame_peft as fp

    tasks = build_tasks(TaskSpec(dim=16, task_orders=(0.0, 0.5), eval_inputs=32), seed=0)
    hook, seen = delayed_router(3), []

    def on_step(model, step: int) -> None:
        hook(model, step)
        router = fp.adapted_layers(model)["proj"].adapter.router
        seen.append((router.top_k, router.weight.detach().clone()))

    config = adapter_config("frame", Budget(4, 2, 1))
    train = TrainConfig(steps=6, batch_per_task=8, log_every=1)
    train_adapter(tasks, config, train, [0, 1], seed=0, on_step=on_step)
    assert [k for k, _ in seen] == [None, None, None, 2, 2, 2]
    # Frozen: no gradient, so neither an update nor weight decay before step 3; learned after.
    assert all(torch.equal(seen[0][1], w) for _, w in seen[:4])
    assert not torch.equal(seen[3][1], seen[5][1])


@pytest.mark.parametrize("n", [16, 32])
def test_coherence_facts(n: int) -> None:
    assert coherence(0.3, 0.3, n, "exact") == pytest.approx(1.0, abs=1e-9)
    assert coherence(0.3, 0.3, n, "chirp") == pytest.approx(1.0, abs=1e-9)
    assert coherence(0.0, 1.0, n, "exact") == pytest.approx(1 / math.sqrt(n), abs=1e-9)
    assert coherence(0.0, 1.0, n, "chirp") == pytest.approx(1 / math.sqrt(n), abs=1e-9)


# The experiments at quick size ---------------------------------------------------------------


def test_coherence_quick(tmp_path) -> None:
    res = run_experiment("coherence", tmp_path, size="quick", progress=False)
    cfg = CoherenceConfig.for_size("quick")
    assert res["deltas"][0] == 0.0 and res["deltas"][-1] == 1.0
    for label, by_n in res["curves"].items():
        for n, values in by_n.items():
            floor = 1 / math.sqrt(int(n))
            assert values[0] == pytest.approx(1.0, abs=1e-6)  # Δa = 0
            assert min(values) >= floor - 1e-6  # the unitary floor, always
            if label in ("exact", "chirp@0"):
                assert values[-1] == pytest.approx(floor, abs=1e-6)  # (0, 1): DFT vs identity
            cross = res["crossings"][label][n]["0.5"]
            assert cross is None or 0 < cross <= 1
    assert set(res["crossings"]) == {"exact", *(f"chirp@{a:g}" for a in cfg.chirp_bases)}
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.json", "results.md", "coherence.png", "crossings.png"
    }  # fmt: skip


def test_domain_recovery_quick_is_deterministic_and_complete(tmp_path) -> None:
    a = run_experiment("domain-recovery", tmp_path / "a", size="quick", progress=False)
    run_experiment("domain-recovery", tmp_path / "b", size="quick", progress=False)
    assert (tmp_path / "a/results.json").read_bytes() == (tmp_path / "b/results.json").read_bytes()
    assert json.loads((tmp_path / "a/results.json").read_text()) == json.loads(json.dumps(a))
    assert {"results.json", "results.md", "errors.png", "basin.png", "orders.png"} <= {
        p.name for p in (tmp_path / "a").iterdir()
    }
    cfg = DomainRecoveryConfig.for_size("quick")
    num_tasks = len(cfg.tasks.task_orders)
    assert set(a["methods"]) == set(cfg.methods) and a["seeds"] == [0]
    for entry in a["methods"].values():
        assert len(entry["errors"]) == len(entry["floor"]) == num_tasks
        assert all(math.isfinite(e) and e >= 0 for e in entry["errors"])
        assert entry["errors_per_seed"] == [entry["errors"]] and entry["errors_std"] == [0.0] * 4
    # A fixed rank-q update cannot beat the Eckart-Young floor of rank q (a theorem).
    for name in ("lora", "moe-lora-2r"):
        m = a["methods"][name]
        assert m["floor"] != a["methods"]["moe-lora"]["floor"] or name == "lora"
    lora = a["methods"]["lora"]
    assert all(e >= f - 1e-6 for e, f in zip(lora["errors"], lora["floor"], strict=True))
    # Active parameters are matched: FRAME and MoE-LoRA within 10 %; MoE-LoRA-2r has twice.
    frame, moe = (a["methods"][m]["active_parameters"] for m in ("frame-scan", "moe-lora"))
    assert max(frame, moe) <= 1.1 * min(frame, moe)
    seed0 = a["per_seed"]["0"]
    orders = seed0["methods"]["frame-scan"]["orders"]
    assert len(orders["per_task"]) == num_tasks and len(orders["scans"]) == 1
    assert orders["scans"][0]["first"] and all(orders["scans"][0]["jumped"])
    assert all(0 <= x <= 1 for x in orders["final_orders"])
    for row in orders["per_task"]:
        assert row["recovered"] == (row["served_order_error"] <= a["tolerance"])
    oracle = seed0["variants"]["oracle-routed"]
    assert oracle["final_orders"] == expert_orders(cfg.tasks.task_orders, 8, 0.0)
    assert oracle["mean_served_order_error"] == pytest.approx(0.0, abs=1e-6)
    assert len(seed0["variants"]["scan-rescans"]["scans"]) == 3
    assert len(seed0["basin"]) == len(cfg.basin_tasks) * len(cfg.basin_offsets)
    md = (tmp_path / "a/results.md").read_text()
    assert "Relative error to the teacher" in md and "Order basin" in md and "Order scans" in md


def test_seeds_methods_and_sets_reach_the_results(tmp_path) -> None:
    res = run_experiment(
        "domain-recovery", tmp_path, size="quick", progress=False, seeds=2,
        methods=["moe-lora", "lora"],
        sets={"tasks.task_orders": [0.0, 0.5], "basin_tasks": [0, 1], "train.steps": 40},
    )  # fmt: skip
    assert res["seeds"] == [0, 1] and list(res["methods"]) == ["moe-lora", "lora"]
    assert list(res["config"]["tasks"]["task_orders"]) == [0.0, 0.5]
    assert res["config"]["train"]["steps"] == 40
    m = res["methods"]["moe-lora"]
    per_seed = m["errors_per_seed"]
    assert len(per_seed) == 2 and per_seed[0] != per_seed[1]
    for t in range(2):  # mean and population std of the two seeds
        mean = (per_seed[0][t] + per_seed[1][t]) / 2
        assert m["errors"][t] == pytest.approx(mean, abs=1e-6)
        assert m["errors_std"][t] == pytest.approx(abs(per_seed[0][t] - mean), abs=1e-6)
    assert "±" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown field 'dims'"):
        run_experiment("domain-recovery", tmp_path, size="quick", sets={"tasks.dims": 8})
    with pytest.raises(ValueError, match="teacher_transform"):
        run_experiment("domain-recovery", tmp_path, size="quick",
                       sets={"tasks.teacher_transform": "fft"})  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        run_experiment("interference", tmp_path, size="quick", methods=["frame-plus"])
    with pytest.raises(ValueError, match="takes no seeds"):
        run_experiment("coherence", tmp_path, size="quick", seeds=3)


def test_mean_std_fixture() -> None:
    from frame_peft.experiments._multi import mean_std, parse_sets

    mean, std = mean_std([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    assert mean == [3.0, 2.0] and std == [pytest.approx(math.sqrt(8 / 3)), 0.0]
    assert parse_sets(["tasks.dim=128", "tasks.task_orders=[0, 0.3]", "x=exact"]) == {
        "tasks.dim": 128, "tasks.task_orders": [0, 0.3], "x": "exact"
    }  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_sets(["tasks.dim"])


def test_interference_quick(tmp_path) -> None:
    res = run_experiment("interference", tmp_path, size="quick", progress=False)
    for entry in res["methods"].values():
        assert entry["gap"] == [
            pytest.approx(m - s, abs=1e-5)
            for m, s in zip(entry["multi"], entry["single"], strict=True)
        ]
    lora, floor = res["methods"]["lora"], res["rank_floor"]
    assert all(e >= f - 1e-6 for e, f in zip(lora["multi"], floor, strict=True))
    assert all(e >= f - 1e-6 for e, f in zip(lora["single"], floor, strict=True))
    assert {"results.json", "results.md", "gap.png"} <= {p.name for p in tmp_path.iterdir()}


# CLI and configs -----------------------------------------------------------------------------


def test_cli_lists_and_runs(tmp_path, capsys) -> None:
    parser = _parser()
    assert cli_run(parser.parse_args(["experiment", "--list"])) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    assert cli_run(parser.parse_args(["experiment"])) == 0
    assert "coherence" in capsys.readouterr().out
    args = parser.parse_args(["experiment", "coherence", "--quick", "--quiet", "--output",
                              str(tmp_path), "--seed", "3"])  # fmt: skip
    assert cli_run(args) == 0
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "no-such-experiment"])
    out = tmp_path / "dr"
    args = parser.parse_args(["experiment", "interference", "--quick", "--quiet", "--output",
                              str(out), "--seeds", "2", "--methods", "moe-lora,lora",
                              "--set", "train.steps=20"])  # fmt: skip
    assert cli_run(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1] and set(res["methods"]) == {"moe-lora", "lora"}
    bad = parser.parse_args(["experiment", "interference", "--quick", "--set", "train.nope=1"])
    assert cli_run(bad) == 2
    assert "unknown field 'nope'" in capsys.readouterr().err


def test_help_describes_every_experiment(capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["experiment", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS) and "--quick" in out


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TaskSpec(dim=15), "dim"),
        (lambda: TaskSpec(task_orders=(0.2, 1.5)), "task_orders"),
        (lambda: TaskSpec(teacher_transform="fft"), "teacher_transform"),
        (lambda: Budget(num_experts=2, top_k=3), "top_k"),
        (lambda: TrainConfig(steps=0), "steps"),
        (lambda: TrainConfig(order_freeze_steps=5, steps=4), "order_freeze_steps"),
        (lambda: DomainRecoveryConfig(variants=("nope",)), "variants"),
        (lambda: DomainRecoveryConfig(basin_offsets=(0,)), "basin_offsets"),
        (lambda: CoherenceConfig(lengths=(15,)), "lengths"),
        (lambda: DomainRecoveryConfig.for_size("huge"), "size"),
    ],
)
def test_configs_reject_bad_values(build, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_run_experiment_rejects_unknown_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("nope", tmp_path)
    with pytest.raises(ValueError, match="size"):
        run_experiment("coherence", tmp_path, size="medium")


def test_domain_recovery_without_basin_or_variants_still_writes_its_outputs(tmp_path) -> None:
    res = run_experiment(
        "domain-recovery", tmp_path, size="quick", progress=False, methods=["moe-lora"],
        sets={"variants": [], "basin_tasks": [], "train.steps": 20},
    )  # fmt: skip
    assert res["per_seed"]["0"]["basin"] == [] and res["variants"] == {}
    assert {"results.json", "results.md", "errors.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "basin.png" not in {p.name for p in tmp_path.iterdir()}
