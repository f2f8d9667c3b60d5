"""The issue-7 benchmark scripts at --quick: e2e training steps, width scaling, decoding, and the
profile of one FRAME step."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_decode
import bench_e2e
import bench_scaling
import profile_step
from _lm import LINEARS, build_method, match_model_budgets, tiny_llama
from frame_peft.peft_bridge import count_parameters


def test_e2e_quick_writes_page_json_and_targets(tmp_path):
    out = tmp_path / "e2e.md"
    bench_e2e.main(["--quick", "--no-memory", "--repeats", "2", "--out", str(out)])
    text = out.read_text()
    assert "## Targets" in text and "## Results" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert list(data["times"]) == bench_e2e.NAMES
    for t in data["times"].values():
        assert len(t["step"]) == 2
        assert all(
            0 < f <= b <= s for f, b, s in zip(t["fwd"], t["fwd_bwd"], t["step"], strict=True)
        )
    assert [c["target"].split(" ")[0] for c in data["targets"]] == ["FRAME", "FRAME", "our"]
    assert data["knobs"]["lora"] == data["knobs"]["peft_lora"] == 8  # equal active rank k·r


def test_e2e_budgets_cover_all_linears_and_match_moe_lora():
    model = tiny_llama()
    knobs, target = match_model_budgets(model, ["moe_lora", "flylora", "hmora", "peft_lora"])
    moe = build_method(model, "moe_lora", None)
    assert count_parameters(moe)["active_per_token"] == target
    adapted = [n for n, _ in moe.named_modules() if n.endswith(tuple(LINEARS))]
    assert len(adapted) == 2 * len(LINEARS)  # every Linear of both blocks
    for name in ("flylora", "hmora"):
        got = count_parameters(build_method(model, name, knobs[name]))["active_per_token"]
        assert abs(got - target) / target < 0.1, (name, got, target)
    peft = build_method(model, "peft_lora", knobs["peft_lora"])
    assert count_parameters(peft)["trainable"] == 8 * sum(
        m.in_features + m.out_features
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith(tuple(LINEARS))
    )
    base_w = model.model.layers[0].self_attn.q_proj.weight
    assert moe.model.layers[0].self_attn.q_proj.base_layer.weight is base_w  # shared, not copied


def test_e2e_memory_worker_reports_each_method():
    job = {"quick": True, "batch": 1, "seq_len": 8, "warmup": 1,
           "knobs": {"base": None, "frame_chirp": None}}  # fmt: skip
    mem = bench_e2e.memory_worker(job)
    assert set(mem) == {"base", "frame_chirp"}
    for v in mem.values():
        assert v["peak_rss"] > 0 and v["step_extra"] >= 0


def test_scaling_fit_recovers_exponents():
    ds = [256, 512, 1024, 2048]
    p, c, n = bench_scaling.fit_exponent(ds, [3.0 * d**2 for d in ds])
    assert p == pytest.approx(2.0) and math.exp(c) == pytest.approx(3.0) and n == 4
    p, _, n = bench_scaling.fit_exponent(ds, [-1.0, 5.0 * 512, 5.0 * 1024, 5.0 * 2048])
    assert p == pytest.approx(1.0) and n == 3  # the non-positive point is left out
    assert bench_scaling.fit_exponent(ds, [-1.0, -1.0, 0.0, 2.0]) is None


def test_scaling_quick_writes_page_json_and_png(tmp_path):
    out = tmp_path / "scaling.md"
    bench_scaling.main(["--quick", "--dims", "32,64,128", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["d"] for r in data["rows"]] == [32, 64, 128]
    assert set(data["fits"]) == set(bench_scaling.SERIES)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Fitted exponents" in out.read_text()


def test_decode_cache_bypass_recomputes_and_restores():
    model = build_method(tiny_llama(), "frame_chirp", None).eval()
    ids = torch.randint(2, 200, (1, 6))
    frame = next(m for m in model.modules() if isinstance(m, bench_decode.FrameAdapter))
    calls = []
    original = frame._transformed_factors
    frame._transformed_factors = lambda: calls.append(1) or original()
    with torch.no_grad():
        model(ids)
        model(ids)
        assert len(calls) == 1  # cached: computed once
        with bench_decode.factor_cache_bypassed(model):
            model(ids)
            model(ids)
        assert len(calls) == 3  # bypassed: every forward
        model(ids)
    assert len(calls) == 4  # cache back on, refilled once (the bypass cleared it)
    assert "_moving_factors" not in frame.__dict__


def test_decode_quick_writes_page_and_json(tmp_path):
    out = tmp_path / "decode.md"
    argv = ["--quick", "--dims", "32", "--rounds", "2", "--new-tokens", "3", "--out", str(out)]
    bench_decode.main(argv)
    data = json.loads(out.with_suffix(".json").read_text())
    layer = data["layers"]["32"]
    assert set(layer["times"]) == set(bench_decode.LABELS)
    assert layer["max_diff"] < 1e-5  # cached and recomputed factors give the same output
    assert set(data["generate"]["tokens_per_s"]) == {"base", "frame_cached", "frame_recomputed"}
    assert "## generate" in out.read_text()


def test_profile_step_quick_writes_page_and_json(tmp_path):
    out = tmp_path / "profile.md"
    profile_step.main(["--quick", "--repeats", "2", "--rows", "5", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["steps"]) == {"moe_lora", "frame_chirp", "frame_fixed"}
    assert all(len(v) == 2 and min(v) > 0 for v in data["steps"].values())
    assert all(len(v) == 2 and min(v) > 0 for v in data["transforms"].values())
    assert len(data["profile"]) == 5 and data["profile"][0]["self_ms"] > 0
    assert data["num_layers"] == 2 * len(LINEARS)
    assert "## Top operators" in out.read_text()


def test_scan_cost_quick_writes_page_and_json(tmp_path):
    import bench_scan

    out = tmp_path / "scan_cost.md"
    assert bench_scan.main(["--quick", "--out", str(out)]) == 0
    page = out.read_text()
    assert "| shared | 8 |" in page and "| expert | 8 |" in page and "LLaMA-3.1-8B" in page
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["results"]) == {"shared/q8", "expert/q8", "grid_check"}
    assert all(t > 0 for r in data["results"].values() if "seconds" in r for t in r["seconds"])
    grids = data["results"]["grid_check"]["grids"]
    assert set(grids) == {"0.5", "1.0", "2.0"} and grids["1.0"]["found"] == 1.0


def test_scan_lm_quick_resumes_and_aggregates(tmp_path):
    import scan_lm

    out = tmp_path / "scan_lm"
    argv = ["--quick", "--methods", "moe-lora,frame-scan", "--seeds", "1", "--out-dir", str(out)]
    assert scan_lm.main(argv) == 0
    cells = sorted(p.parent.name for p in (out / "cells").glob("*/cell.json"))
    assert cells == ["frame-scan-seed0", "moe-lora-seed0"]
    first = (out / "cells" / "moe-lora-seed0" / "cell.json").read_bytes()
    assert scan_lm.main(argv) == 0  # complete cells are skipped, not rerun
    assert (out / "cells" / "moe-lora-seed0" / "cell.json").read_bytes() == first
    data = json.loads(out.with_suffix(".json").read_text())
    scan = data["aggregate"]["methods"]["frame-scan"]
    assert scan["minus_moe_lora"] is not None and "orders" in scan
    assert [s["first"] for s in data["cells"][0]["scans"]] == [True]  # one scan by default
    page = out.with_suffix(".md").read_text()
    assert "held-out" in page.lower() and "frame-scan: final orders per layer" in page
    assert set(data["aggregate"]["scan_orders_by_layer"]) == {"frame-scan"}
    assert " of " in next(line for line in page.splitlines() if line.startswith("| frame-scan | 0"))
