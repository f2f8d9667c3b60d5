"""Checkpoints: exact resume (FRAME with dropout, FlyLoRA, PEFT LoRA), atomicity, pruning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import frame_peft as fp
from _models import tiny_llama
from _training_data import Crash, RandomTokens, frame_config, randomise_lora_b
from frame_peft.training import (
    TrainConfig,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
)
from frame_peft.training.checkpoint import rng_state, set_rng_state

STEPS = 7  # 16 items / global batch 4 = 4 steps per epoch: the run crosses an epoch boundary


def run_config(out, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out), max_steps=STEPS, per_device_batch_size=2,
        gradient_accumulation_steps=2, lr=1e-2, order_lr=1e-2, warmup_steps=2, save_every=2,
        keep_checkpoints=None, progress=False, report_to="none", log_every=1, seed=7,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def build(adapter, seed: int = 0):
    """The same base model every time; ``seed`` changes only the adapter's initial values."""
    model = tiny_llama()
    torch.manual_seed(seed)
    if adapter == "peft-lora":
        return fp.peft_baseline(model, "lora", r=4, target_modules=["q_proj", "v_proj"])
    fp.inject(model, adapter)
    randomise_lora_b(model, seed=seed + 5)
    return model


def tensors(model) -> dict[str, torch.Tensor]:
    if fp.is_peft_model(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    return {k: v.detach().clone() for k, v in fp.adapter_state_dict(model).items()}


ADAPTERS = {
    "frame": frame_config(dropout=0.05),
    "flylora": fp.FlyLoRAConfig(target_modules=["q_proj", "v_proj"], rank=8, top_k=2, dropout=0.05),
    "peft-lora": "peft-lora",
}


@pytest.mark.parametrize(("name", "crash_at"), [("frame", 5), ("flylora", 3), ("peft-lora", 3)])
def test_exact_resume_matches_an_uninterrupted_run(tmp_path, name, crash_at):
    adapter = ADAPTERS[name]
    full_model = build(adapter)
    full = Trainer(full_model, RandomTokens(16), run_config(tmp_path / "full")).train()
    expected = tensors(full_model)

    with pytest.raises(KeyboardInterrupt):
        Trainer(build(adapter), RandomTokens(16), run_config(tmp_path / "cut"),
                callbacks=[Crash(crash_at)]).train()  # fmt: skip
    last_saved = crash_at - crash_at % 2
    assert latest_checkpoint(tmp_path / "cut").name == f"checkpoint-{last_saved}"

    # A new model (other adapter init) and a new Trainer: the adapter state comes from disk.
    resumed_model = build(adapter, seed=1)
    resumed = Trainer(resumed_model, RandomTokens(16), run_config(tmp_path / "cut")).train()
    assert resumed.resumed_from.name == f"checkpoint-{last_saved}"
    assert resumed.global_step == full.global_step == STEPS
    assert resumed.tokens_seen == full.tokens_seen
    got = tensors(resumed_model)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    if name == "frame":
        orders = [v for k, v in got.items() if k.endswith("order_logits")]
        start = [v for k, v in tensors(build(adapter)).items() if k.endswith("order_logits")]
        assert any(not torch.equal(a, b) for a, b in zip(orders, start, strict=True))
    if name == "flylora":
        assert any(k.endswith("rank_bias") and v.abs().sum() > 0 for k, v in got.items())
    # The log keeps one record per step: the crashed run's records after the checkpoint are gone.
    log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, STEPS + 1))
    assert json.loads(log[-1])["loss"] == pytest.approx(full.loss, rel=1e-12)


def test_resume_auto_ignores_incomplete_checkpoints(tmp_path):
    out = tmp_path / "run"
    Trainer(build(frame_config()), RandomTokens(16), run_config(out, max_steps=2)).train()
    # A crash during a save leaves a .tmp directory; a directory without trainer_state.json is
    # not complete either. Neither may be picked.
    (out / "checkpoint-9.tmp" / "adapter").mkdir(parents=True)
    (out / "checkpoint-9.tmp" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-8").mkdir()
    assert latest_checkpoint(out).name == "checkpoint-2"
    assert [step for step, _ in list_checkpoints(out)] == [2]
    result = Trainer(build(frame_config()), RandomTokens(16), run_config(out, max_steps=3)).train()
    assert result.resumed_from.name == "checkpoint-2" and result.global_step == 3


def test_resume_none_starts_fresh_and_explicit_path_resumes(tmp_path):
    out = tmp_path / "run"
    Trainer(build(frame_config()), RandomTokens(16), run_config(out, max_steps=2)).train()
    fresh = Trainer(build(frame_config()), RandomTokens(16),
                    run_config(tmp_path / "other", max_steps=2, resume=None)).train()  # fmt: skip
    assert fresh.resumed_from is None
    explicit = Trainer(build(frame_config()), RandomTokens(16),
                       run_config(tmp_path / "third", max_steps=3,
                                  resume=str(out / "checkpoint-2"))).train()  # fmt: skip
    assert explicit.resumed_from == out / "checkpoint-2" and explicit.global_step == 3
    with pytest.raises(FileNotFoundError, match="is not a complete checkpoint"):
        Trainer(build(frame_config()), RandomTokens(16),
                run_config(tmp_path / "x", resume=str(tmp_path / "nothing"))).train()  # fmt: skip


def test_resume_refuses_another_global_batch_or_adapter(tmp_path):
    out = tmp_path / "run"
    Trainer(build(frame_config()), RandomTokens(16), run_config(out, max_steps=2)).train()
    with pytest.raises(ValueError, match="global batch of 4 sequences, this run has 8"):
        Trainer(build(frame_config()), RandomTokens(16),
                run_config(out, per_device_batch_size=4)).train()  # fmt: skip
    lora = fp.LoRAConfig(target_modules=["q_proj"], rank=2)
    with pytest.raises(ValueError, match="holds a 'frame' adapter but the model has 'lora'"):
        Trainer(build(lora), RandomTokens(16), run_config(out)).train()


def test_keep_checkpoints_prunes_the_oldest(tmp_path):
    out = tmp_path / "run"
    cfg = run_config(out, max_steps=5, save_every=1, keep_checkpoints=2)
    model = build(frame_config())
    result = Trainer(model, RandomTokens(16), cfg).train()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-4", "checkpoint-5",
    ]  # fmt: skip
    assert result.last_checkpoint == out / "checkpoint-5"
    files = {p.name for p in result.last_checkpoint.iterdir()}
    assert files == {
        "adapter",
        "optimizer.pt",
        "scheduler.pt",
        "rng-rank0.pt",
        "trainer_state.json",
    }
    state = json.loads((result.last_checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["epoch"] == 1 and state["step_in_epoch"] == 1
    assert TrainConfig.from_dict(state["config"]) == cfg
    # the final adapter copy loads into a fresh base model and equals the trained one
    fresh = fp.load_adapter(tiny_llama(), result.adapter_path)
    saved, trained = fp.adapter_state_dict(fresh), fp.adapter_state_dict(model)
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[k], trained[k]) for k in trained)


def test_rng_state_round_trip_is_loadable_with_weights_only(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
