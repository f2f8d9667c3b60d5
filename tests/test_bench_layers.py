"""The layer benchmark's budget matching, memory cap, step loop and table (benchmarks/)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import address_space_cap, int_list, shape_list
from _layer_methods import (
    METHODS,
    build,
    closest_knob,
    match_budgets,
    meta_counts,
    target_budget,
)
from _layer_report import main_table, targets
from bench_layers import build_all, inputs, main, memory_worker, rounds_for, time_methods
from frame_peft.peft_bridge import count_parameters


def test_closest_knob_matches_brute_force_on_increasing_counts():
    rng = random.Random(0)
    for _ in range(300):
        values = [rng.randint(0, 20)]
        for _ in range(1000):  # strictly increasing, not affine; long enough for any overshoot
            values.append(values[-1] + rng.choice([1, 1, 2, 9, 30]))
        lo = rng.randint(1, 3)
        hi = rng.choice([None, rng.randint(lo, 40)])
        target = rng.randint(0, values[60])
        top = 61 if hi is None else hi
        want = min(range(lo, top + 1), key=lambda v: (abs(values[v] - target), v))
        got = closest_knob(values.__getitem__, target, lo, hi)
        assert got == want, (values[:62], target, lo, hi)


def test_closest_knob_affine_uses_four_counts_and_breaks_ties_low():
    calls = []

    def count(v):
        calls.append(v)
        return 10 + 7 * v

    assert closest_knob(count, 50) == 6  # 45 vs 52
    assert len(set(calls)) <= 4
    assert closest_knob(lambda v: 2 * v, 5) == 2  # 4 and 6 tie: the smaller knob
    assert closest_knob(lambda v: 100 * v, 3) == 1  # below count(lo): lo
    assert closest_knob(lambda v: 10 * v, 1000, hi=7) == 7  # capped
    assert closest_knob(lambda v: 10 * v, 1000, lo=3, hi=3) == 3
    with pytest.raises(ValueError, match="must increase"):
        closest_knob(lambda v: 5, 50)


@pytest.mark.parametrize(("d_in", "d_out"), [(48, 80), (64, 64)])
def test_match_budgets_picks_the_closest_count(d_in, d_out):
    target = target_budget(d_in, d_out)
    assert target == 2 * 4 * (d_in + d_out) + 8 * d_in  # MoE-LoRA E=8 k=2 r=4 + router
    knobs = match_budgets(list(METHODS), d_in, d_out, target)
    for name, knob in knobs.items():
        m = METHODS[name]
        if m.knob is None:
            assert knob is None
            continue

        def miss(v, m=m):
            return abs(meta_counts(m.make(v), d_in, d_out)["active_per_token"] - target)

        hi = m.limit(d_in, d_out) if m.limit else None
        assert knob >= 1 and (hi is None or knob <= hi), name
        if hi is None or knob < hi:
            assert miss(knob) <= miss(knob + 1), name
        if knob > 1:
            assert miss(knob) <= miss(knob - 1), name
    assert knobs["lora"] == knobs["peft_lora"]  # same count r·(d_in + d_out)


def test_meta_counts_equal_real_counts():
    d_in, d_out = 48, 80
    knobs = match_budgets(list(METHODS), d_in, d_out)
    for name, knob in knobs.items():
        cfg = METHODS[name].make(knob)
        real = count_parameters(build(cfg, d_in, d_out))
        assert real == meta_counts(cfg, d_in, d_out), name


def test_every_method_steps_and_shares_the_weight():
    d_in, d_out = 32, 48
    names = list(METHODS)
    knobs = match_budgets(names, d_in, d_out)
    models = build_all(names, knobs, d_in, d_out, log=lambda _: None)
    weights = {
        m: next(
            p for n, p in mod.named_parameters() if n.endswith(("proj.weight", "base_layer.weight"))
        )
        for m, mod in models.items()
    }
    assert all(w.data_ptr() == weights["base"].data_ptr() for w in weights.values())
    x = inputs(d_in, tokens=16, seq_len=8)
    assert x.shape == (2, 8, d_in)
    times, skipped = time_methods(models, x, 2, 1, cap_mb=4096, log=lambda _: None)
    assert skipped == {} and set(times) == set(names)
    assert all(len(t["fwd"]) == len(t["step"]) == 2 for t in times.values())
    assert all(0 < f <= s for t in times.values() for f, s in zip(t["fwd"], t["step"], strict=True))
    for m, mod in models.items():  # grads were cleared after the rounds
        assert all(p.grad is None for p in mod.parameters()), m


def test_address_space_cap_refuses_and_restores():
    with pytest.raises(RuntimeError), address_space_cap(64):
        torch.empty(2**28)  # 1 GiB of address space, never touched
    assert torch.empty(2**28).numel() == 2**28  # the old limit is back


def test_main_table_ratios_mismatch_and_skipped_rows():
    counts = {
        "base": {"trainable": 0, "active_per_token": 0},
        "lora": {"trainable": 110, "active_per_token": 110},
        "moe_lora": {"trainable": 300, "active_per_token": 100},
        "fouriermoe": {"trainable": 300, "active_per_token": 100},
    }
    times = {
        "base": {"fwd": [1.0, 1.0, 1.0], "step": [2.0, 4.0, 3.0]},
        "lora": {"fwd": [2.0, 2.0, 2.0], "step": [5.0, 6.0, 4.0]},
        "moe_lora": {"fwd": [3.0, 3.0, 3.0], "step": [10.0, 8.0, 9.0]},
    }
    knobs = {"lora": 7, "fouriermoe": 12}
    skipped = {"fouriermoe": "one step needs more than the 8 GiB cap"}
    mem = {"base": 6.0, "lora": 12.0, "moe_lora": 24.0}
    rows = main_table(knobs, counts, times, mem, 100, skipped).splitlines()
    lora = next(r for r in rows if r.startswith("| LoRA |"))
    cells = [c.strip() for c in lora.strip("|").split("|")]
    assert cells[1] == "rank=7" and cells[4] == "+10.00 %"
    assert cells[6].startswith("5 [")
    assert cells[7].startswith("+2 [")  # paired differences to the base: 3, 2, 1
    assert cells[8] == f"{5 / 9:.3f}" and cells[9] == f"{5 / 3:.3f}"  # × MoE-LoRA, × base
    assert cells[10] == f"{2 / 1:.3f}"  # fwd × base
    assert cells[11:] == ["12", "0.500", "2.000"]  # peak, × MoE-LoRA, × base
    moe = next(r for r in rows if r.startswith("| MoE-LoRA |"))
    assert "| 1.000 |" in moe
    fm = next(r for r in rows if r.startswith("| FourierMoE |"))
    assert "not timed: one step needs more than the 8 GiB cap" in fm and "num_coefficients=12" in fm


def test_rounds_for_budget_and_bounds():
    assert rounds_for(1000.0, 10.0, 3, 9) == 9  # 10 rounds fit, capped at 9
    assert rounds_for(1000.0, 5.0, 3, 9) == 5
    assert rounds_for(1000.0, 1.0, 3, 9) == 3  # a big cell gets the minimum
    assert rounds_for(1000.0, None, 4, 9) == 4  # no budget: the minimum


def test_grid_arguments_parse_and_reject():
    assert int_list("1024, 4096") == [1024, 4096]
    assert shape_list("4096x11008,8X16") == [(4096, 11008), (8, 16)]
    for bad in ("a,b", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="D_INxD_OUT"):
        shape_list("4096")


def test_targets_pass_fail_and_missing_methods():
    def t(*steps):
        return {"fwd": list(steps), "step": list(steps)}

    cell = {
        "shape": (8, 8), "tokens": 16, "skipped": {"peft_fourierft": "over the cap"},
        "times": {
            "base": t(1, 1, 1), "moe_lora": t(10, 10, 10), "frame_chirp": t(10.5, 11, 10.8),
            "peft_lora_rank": t(8, 8, 8), "lora": t(9, 9, 9), "peft_lora": t(10, 10, 10),
            "fouriermoe": t(3, 3, 3), "peft_fourierft": t(9, 9, 9),
        },
    }  # fmt: skip
    got = {r.name.split(" ")[0] + r.threshold: r for r in targets([cell])}
    frame_moe = got["FRAME<= 1.10"]
    assert frame_moe.ok and frame_moe.measured == pytest.approx(1.08)
    assert not got["FRAME<= 1.25"].ok and got["FRAME<= 1.25"].measured == pytest.approx(1.35)
    assert not got["our0.95 … 1.05"].ok  # 0.9: 10 % faster is outside ±5 % too
    assert len(got) == 3  # FourierFT was over the cap: no FourierMoE check in this cell


def test_memory_worker_reports_every_method_and_token_count():
    job = {
        "d_in": 16, "d_out": 24, "tokens": [32, 8], "seq_len": 8, "cap_mb": 4096,
        "knobs": {"base": None, "lora": 4, "frame_chirp": None},
    }  # fmt: skip
    peaks = memory_worker(job)
    assert set(peaks) == {"8", "32"}
    for per_method in peaks.values():
        assert set(per_method) == {"base", "lora", "frame_chirp"}
        assert all(v is not None and v >= 0 for v in per_method.values())


def test_grid_run_writes_page_and_json(tmp_path):
    out = tmp_path / "layers.md"
    main([
        "--dims", "16", "--shapes", "16x24", "--tokens", "8,16", "--seq-len", "8",
        "--repeats", "2", "--cell-budget-s", "0", "--gap-tokens", "8", "--no-memory",
        "--methods", "lora", "frame_chirp", "fouriermoe", "peft_lora", "peft_lora_rank",
        "peft_fourierft", "--out", str(out),
    ])  # fmt: skip
    text = out.read_text()
    for heading in ("## Targets", "## Summary", "## Results per cell", "## FourierMoE vs PEFT"):
        assert heading in text
    assert "### 16 → 24, 16 tokens" in text and "16×16, T=8" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(c["shape"], c["tokens"]) for c in data["cells"]] == [
        ([16, 16], 8),
        ([16, 16], 16),
        ([16, 24], 8),
        ([16, 24], 16),
    ]
    assert len(data["targets"]) == 4 * 4  # four targets in each of the four cells
    assert all(len(c["times"]["base"]["step"]) == 2 for c in data["cells"])
