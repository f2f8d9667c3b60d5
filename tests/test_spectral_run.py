"""The spectral analysis on tiny real models: updates of injected adapters, routing by band, and
`frame-peft analyze --spectral` end to end on a tiny trained FourierMoE run (report rendered in
headless Chromium when one is installed)."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

import frame_peft as fp
from _models import VOCAB, tiny_llama
from _runs import tiny_recipe, train_tiny_run
from frame_peft.analysis.cli import add_analyze_parser, run_analyze
from frame_peft.analysis.spectral import band_profile, module_updates
from frame_peft.analysis.spectral_compact import compactness_curve, whitened_module_targets
from frame_peft.analysis.spectral_routing import BandRoutingRecorder, expert_band_coverage
from frame_peft.analysis.spectral_run import spectral_analysis
from test_analysis_report import _chromium, _render


def _fouriermoe(experts: int = 4) -> torch.nn.Module:
    model = fp.inject(
        tiny_llama(),
        fp.FourierMoEConfig(target_modules=["q_proj", "v_proj"], num_experts=experts, top_k=1,
                            rank=1, num_coefficients=4),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for la in fp.core.inject.require_injection(model).layers.values():
        with torch.no_grad():
            la.adapter.coef_real.copy_(torch.randn(la.adapter.coef_real.shape, generator=g))
    return model


def test_module_updates_are_the_adapters_deltas():
    model = fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj"], rank=2))
    layers = fp.core.inject.require_injection(model).layers
    for la in layers.values():
        with torch.no_grad():
            la.adapter.B.normal_()
    updates, skipped = module_updates(model)
    assert set(updates) == set(layers) and not skipped
    for name, la in layers.items():
        assert torch.allclose(updates[name], la.adapter.delta_weight().double())
    moe = _fouriermoe()
    updates, _ = module_updates(moe)
    for name, la in fp.core.inject.require_injection(moe).layers.items():
        assert torch.allclose(updates[name], la.adapter.expert_deltas().sum(0))


def test_fouriermoe_experts_cover_their_own_ring():
    coverage = expert_band_coverage(_fouriermoe(experts=4))
    assert coverage["modules"] and not coverage["skipped"]
    for entry in coverage["modules"].values():
        m = torch.tensor(entry["matrix"])
        assert torch.allclose(m, torch.eye(4, dtype=m.dtype), atol=1e-9)  # expert e owns ring e


def test_band_routing_counts_every_valid_token_once_per_slot():
    model = _fouriermoe(experts=4)
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[2, 4:] = 0  # padding is left out
    tasks = torch.tensor([0, 1, 1])
    with (
        BandRoutingRecorder(model, task_names=["a", "b"]) as rec,
        torch.no_grad(),
        fp.routing_context(attention_mask=mask, task_ids=tasks),
    ):
        model(input_ids=ids, attention_mask=mask)
    stats = rec.statistics()
    assert set(stats) == set(fp.core.inject.require_injection(model).layers)
    for s in stats.values():
        assert s["tokens"] == int(mask.sum())
        assert sum(s["band_tokens"]) == s["tokens"]
        assert sum(s["load"]) == pytest.approx(1.0)
        for row in s["band_expert"]:
            assert row is None or sum(row) == pytest.approx(1.0)
        assert sum(s["mean_share"]) == pytest.approx(1.0)
        assert s["mutual_information"] >= -1e-12
        assert set(s["task_share"]) == {"a", "b"}
    # the recorder leaves nothing behind
    layer = next(iter(fp.core.inject.require_injection(model).layers.values()))
    assert not layer._forward_pre_hooks
    with pytest.raises(ValueError, match="no routed adapter"):
        BandRoutingRecorder(fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj"])))


def test_band_routing_sees_the_band_a_token_lives_in():
    """Tokens whose inputs are pure low / pure high frequencies get dominant bands 0 / B-1."""
    model = _fouriermoe(experts=4)
    name, layer = next(iter(fp.core.inject.require_injection(model).layers.items()))
    d = layer.adapter.in_features
    t = torch.arange(d, dtype=torch.float32)
    x = torch.stack(
        [torch.cos(2 * torch.pi * t / d), torch.cos(torch.pi * t * (d // 2 - 1) / d * 2)]
    )
    with BandRoutingRecorder(model) as rec, torch.no_grad():
        layer(x.unsqueeze(0))
    s = rec.statistics()[name]
    assert s["band_tokens"] == [1.0, 0.0, 0.0, 1.0]
    assert band_profile(torch.outer(x[0], x[0]), 4)["bands"][0] == pytest.approx(1.0)


def test_spectral_analysis_of_a_model_without_router():
    model = fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj", "v_proj"], rank=2))
    for la in fp.core.inject.require_injection(model).layers.values():
        with torch.no_grad():
            la.adapter.B.normal_()
    out = spectral_analysis(model, num_bands=4, compact_points=4)
    assert "band_routing" not in out and "coverage" not in out
    assert set(out["profiles"]["by_kind"]) == {"q_proj", "v_proj"}
    curves = out["compactness"]["modules"]
    assert curves and all(c["lora_r"] == pytest.approx(1.0) for c in curves.values())  # rank 2


@pytest.fixture(scope="module")
def fourier_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("spectral")
    recipe = tiny_recipe(
        root, tasks=("arc_easy", "arc_challenge"), max_steps=2,
        extra_adapters={"fouriermoe": {"num_experts": 3, "top_k": 1, "rank": 1}},
    )  # fmt: skip
    return train_tiny_run(recipe, "fouriermoe", root / "run")


def test_analyze_spectral_cli_writes_a_report(fourier_run, tmp_path):
    parser = argparse.ArgumentParser()
    add_analyze_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    argv = ["analyze", str(fourier_run), "--spectral", "--bands", "4", "--max-items", "2"]
    args = parser.parse_args([*argv, "--output", str(out), "--no-progress"])
    assert run_analyze(args) == 0
    data = json.loads((out / "analysis.json").read_text())
    spec = data["runs"][0]["spectral"]
    assert spec["profiles"]["num_bands"] == 4
    assert spec["band_routing"] and spec["coverage"]["modules"]
    assert spec["compactness"]["modules"]
    html = (out / "report.html").read_text()
    assert "Spectral analysis" in html and "FRAME orders" not in html
    images = len(re.findall(r"<img ", html))
    assert images == 4  # bands, centroid, compactness, band routing
    browser = _chromium()
    if browser is not None:
        assert _render(browser, html, tmp_path) == ("loaded", images)
    bad = parser.parse_args(["analyze", str(fourier_run), "--spectral", "--bands", "1"])
    assert run_analyze(bad) == 2


def test_whitened_targets_are_the_order_scans_and_feed_the_curve():
    """The first-scan targets of a 1-expert FRAME adapter: one per module, recorded with the
    adapters off (so the model's outputs and gradients are left as they were)."""
    model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=["q_proj"], num_experts=1,
                                                   top_k=1, rank=2))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]
    targets = whitened_module_targets(model, batches, tokens_per_batch=16)
    names = set(fp.core.inject.require_injection(model).layers)
    assert set(targets) == names
    assert all(p.grad is None for p in model.parameters())
    for ts in targets.values():
        assert len(ts) == 1 and ts[0].tokens == 16 and ts[0].energy > 0
        c = compactness_curve(ts[0], 2, points=4)
        assert c["fitted"][0] == pytest.approx(c["lora_r"], abs=1e-6)
        assert min(c["fitted"]) >= 0.0 and max(c["fitted"]) <= c["sketch_energy"] + 1e-9
