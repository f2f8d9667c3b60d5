"""The order scan inside the Trainer: on schedule, logged, and resumed bit-exactly after a scan."""

from __future__ import annotations

import json

import pytest
import torch

import frame_peft as fp
from _models import tiny_llama
from _training_data import Crash, RandomTokens, randomise_lora_b
from frame_peft import scan_steps
from frame_peft.training import TrainConfig, Trainer


def scan_config(**kw) -> fp.FrameConfig:
    base = dict(
        target_modules=["q_proj", "v_proj", "down_proj"], num_experts=4, top_k=2, rank=2,
        dropout=0.05, order_search="scan", scan_at=[0.25, 0.5], scan_batches=2, scan_tokens=48,
    )  # fmt: skip
    return fp.FrameConfig(**{**base, **kw})


def run_config(out, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out), max_steps=8, per_device_batch_size=2, gradient_accumulation_steps=2,
        lr=1e-2, order_lr=1e-2, warmup_steps=1, save_every=1, keep_checkpoints=None,
        progress=False, report_to="none", log_every=1, seed=5,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def build(seed: int = 0):
    model = tiny_llama()
    torch.manual_seed(seed)
    fp.inject(model, scan_config())
    randomise_lora_b(model, seed=seed + 3)
    return model


def test_scan_steps_follow_the_fractions():
    assert scan_steps([0.1, 0.25, 0.4], 100) == [10, 25, 40]
    assert scan_steps([0.01, 0.02], 10) == [1]  # both round to step 1: one scan
    with pytest.raises(ValueError, match="scan_at"):
        scan_config(scan_at=[0.5, 0.2])
    with pytest.raises(ValueError, match="order_search"):
        scan_config(order_search="grid")


def test_trainer_runs_scans_on_schedule_and_logs_them(tmp_path, capsys):
    model = build()
    before = {k: v.clone() for k, v in fp.orders(model).items()}
    Trainer(model, RandomTokens(16), run_config(tmp_path)).train()
    lines = (tmp_path / "scans.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["first"] for r in records] == [True, False]
    assert records[0]["num_jumps"] == 24  # the first scan moves every expert (6 modules x 4)
    first = records[0]["modules"][0]["experts"][0]
    assert {"order_before", "order_after", "best_order", "score_best", "jumped"} <= first.keys()
    after = fp.orders(model)
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    err = capsys.readouterr().err
    assert "order scan at step 2 (first): 24/24 experts moved" in err
    assert "order scan at step 4" in err  # a rescan, or its reason for deciding nothing


@pytest.mark.parametrize("crash_at", [3, 5])  # after the first scan / after both
def test_resume_after_a_scan_is_exact(tmp_path, crash_at):
    full = build()
    Trainer(full, RandomTokens(16), run_config(tmp_path / "full")).train()
    expected = {k: v.detach().clone() for k, v in fp.adapter_state_dict(full).items()}

    with pytest.raises(KeyboardInterrupt):
        Trainer(build(), RandomTokens(16), run_config(tmp_path / "cut"),
                callbacks=[Crash(crash_at)]).train()  # fmt: skip
    resumed = build(seed=9)  # other initial values: everything must come from the checkpoint
    Trainer(resumed, RandomTokens(16), run_config(tmp_path / "cut", resume="auto")).train()
    got = fp.adapter_state_dict(resumed)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    full_scans = (tmp_path / "full" / "scans.jsonl").read_text().splitlines()
    cut_scans = (tmp_path / "cut" / "scans.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(s).items() if not k.startswith("seconds")}
             for s in full_scans]  # fmt: skip
    got_scans = [{k: v for k, v in json.loads(s).items() if not k.startswith("seconds")}
                 for s in cut_scans]  # fmt: skip
    for a, b in zip(strip, got_scans, strict=True):
        for m in (*a["modules"], *b["modules"]):
            m.pop("seconds")
    assert got_scans == strip


def test_scan_is_refused_under_fsdp_with_a_clear_message(tmp_path):
    from frame_peft.training.order_scan import OrderScanCallback

    class Env:
        mode = "fsdp"

    class FakeTrainer:
        model = build()
        env = Env()

    with pytest.raises(ValueError, match="not supported under FSDP"):
        OrderScanCallback().on_train_begin(FakeTrainer(), 10, 0)


def test_hf_trainer_runs_the_scan_through_its_callback(tmp_path):
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments

    from frame_peft.training.hf_callbacks import OrderScanHFCallback

    model = build()
    data = RandomTokens(16)
    opt = fp.build_optimizer(model, lr=1e-2, order_lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, max_grad_norm=0.0,
        report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0,
        remove_unused_columns=False,
    )  # fmt: skip
    collate = fp.training.pad_collate
    callback = OrderScanHFCallback(data, collate)
    trainer = HFTrainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched),
                        data_collator=lambda items: {k: v for k, v in collate(items).items()
                                                     if k != "task_ids"})  # fmt: skip
    trainer.add_callback(callback)
    before = {k: v.clone() for k, v in fp.orders(model).items()}
    trainer.train()
    assert callback.steps == [1, 2] and [r["step"] for r in callback.reports] == [1, 2]
    assert callback.reports[0]["num_jumps"] == 24
    lines = (tmp_path / "scans.jsonl").read_text().splitlines()
    assert [json.loads(line)["first"] for line in lines] == [True, False]
    after = fp.orders(model)
    assert any(not torch.allclose(before[k], after[k]) for k in before)

    with pytest.raises(ValueError, match="order_search='scan'"):
        plain = tiny_llama()
        fp.inject(plain, scan_config(order_search="gradient"))
        OrderScanHFCallback(data, collate).on_train_begin(args, trainer.state, None, model=plain)
