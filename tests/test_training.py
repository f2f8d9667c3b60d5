"""Trainer, TrainConfig, schedules, sampler, logs and model loading (single process)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys

import pytest
import torch

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, frame_config, lora_config, randomise_lora_b
from frame_peft.training import (
    StepBatchSampler,
    TrainConfig,
    Trainer,
    TrainerCallback,
    WarmupDecay,
    build_scheduler,
    load_base_model,
    pad_collate,
)
from frame_peft.training.losses import count_labelled, lm_loss_sum


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_batch_size=4, lr=1e-2,
        order_lr=1e-2, progress=False, report_to="none", log_every=1, resume=None, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def lora_model(seed: int = 0) -> torch.nn.Module:
    model = tiny_llama(seed)
    fp.inject(model, lora_config())
    randomise_lora_b(model)
    return model


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": None}, "exactly one of max_steps and num_epochs"),
        ({"num_epochs": 2}, "exactly one of max_steps and num_epochs"),
        ({"max_steps": 0}, "TrainConfig.max_steps must be a positive integer"),
        ({"schedule": "step"}, "TrainConfig.schedule must be one of"),
        ({"warmup_steps": 2, "warmup_ratio": 0.1}, "at most one of warmup_steps"),
        ({"warmup_ratio": 1.0}, "TrainConfig.warmup_ratio must be in [0, 1)"),
        ({"min_lr_ratio": 1.5}, "TrainConfig.min_lr_ratio must be in [0, 1]"),
        ({"max_grad_norm": 0.0}, "TrainConfig.max_grad_norm must be a positive number"),
        ({"dtype": "int8"}, "TrainConfig.dtype must be one of"),
        ({"distributed": "deepspeed"}, "TrainConfig.distributed must be one of"),
        ({"dtype": "float16", "distributed": "fsdp"}, "float16' is not supported with"),
        ({"device": "tpu"}, "TrainConfig.device must be None"),
        ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps"),
    ],
)
def test_config_rejects_bad_values(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config(tmp_path, **kwargs)


def test_config_round_trip_and_unknown_keys(tmp_path):
    cfg = config(tmp_path, warmup_ratio=0.25, max_grad_norm=math.inf, order_max_grad_norm=None)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.warmup_for(10) == 3  # ceil(0.25 * 10)
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['learning_rate'\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1e-3})


# -- schedule ----------------------------------------------------------------------------------


def test_schedule_shapes():
    cos = WarmupDecay("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [cos(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cos(9) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert cos(14) == pytest.approx(0.1) and cos(20) == pytest.approx(0.1)
    lin = WarmupDecay("linear", warmup_steps=0, total_steps=10, min_lr_ratio=0.0)
    assert [lin(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = WarmupDecay("constant", warmup_steps=2, total_steps=10)
    assert [const(s) for s in (0, 1, 2, 9)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        WarmupDecay("cosine", warmup_steps=11, total_steps=10)


def test_order_group_follows_the_same_shape():
    model = tiny_llama()
    fp.inject(model, frame_config())
    opt = fp.build_optimizer(model, lr=2e-4, order_lr=1e-3)
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=8, min_lr_ratio=0.1)
    main, order = [], []
    for _ in range(8):
        main.append(opt.main.param_groups[0]["lr"])
        order.append(opt.order.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert main[0] == 0.0 and order[0] == 0.0
    assert main[2] == pytest.approx(2e-4) and order[2] == pytest.approx(1e-3)
    assert [o / 1e-3 for o in order] == pytest.approx([m / 2e-4 for m in main])
    assert opt.main.param_groups[0]["lr"] == pytest.approx(2e-5)  # min_lr_ratio at s = T
    assert opt.order.param_groups[0]["lr"] == pytest.approx(1e-4)


# -- data order and collation ------------------------------------------------------------------


def test_sampler_global_batch_is_independent_of_the_split():
    def steps(b, a, w):
        per_rank = [list(StepBatchSampler(37, b, a, w, r, seed=5, epoch=1)) for r in range(w)]
        n = len(per_rank[0]) // a
        return [sorted(i for r in range(w) for mb in per_rank[r][s * a : (s + 1) * a] for i in mb)
                for s in range(n)]  # fmt: skip

    one = steps(4, 1, 1)
    assert len(one) == 37 // 4
    assert one == steps(2, 2, 1) == steps(2, 1, 2) == steps(1, 2, 2)
    # micro-batches of an accumulation run are the per-rank batches of a DDP run
    assert list(StepBatchSampler(37, 2, 2, 1, 0, 5, 1)) == [
        mb for pair in zip(*(StepBatchSampler(37, 2, 1, 2, r, 5, 1) for r in range(2)), strict=True)
        for mb in pair
    ]  # fmt: skip
    resumed = list(StepBatchSampler(37, 2, 2, 1, 0, 5, 1, start_step=3))
    assert resumed == list(StepBatchSampler(37, 2, 2, 1, 0, 5, 1))[6:]
    assert list(StepBatchSampler(37, 4, 1, 1, 0, 5, 2)) != list(
        StepBatchSampler(37, 4, 1, 1, 0, 5, 1)
    )
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 2, 1, 2, 0, 0, 0)


def test_pad_collate():
    batch = pad_collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task_id": 2}, {"input_ids": [9]}],
        pad_token_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert batch["task_ids"].tolist() == [2, 0]
    with pytest.raises(ValueError, match="labels has 1 entries but input_ids has 2"):
        pad_collate([{"input_ids": [1, 2], "labels": [1]}])


# -- the loss ------------------------------------------------------------------------------------


def test_accumulation_2x2_equals_one_batch_of_4(tmp_path):
    data = RandomTokens(16)
    # The micro-batches of a step carry different numbers of labelled tokens, so averaging
    # per-micro-batch means would weight tokens differently from one batch of 4.
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=pad_collate)
    counts = [int(count_labelled(b["labels"])) for b in loader]
    assert len(set(counts)) > 1
    results = {}
    for name, (b, a) in {"big": (4, 1), "accum": (2, 2)}.items():
        model = lora_model()
        cfg = config(tmp_path / name, per_device_batch_size=b, gradient_accumulation_steps=a)
        result = Trainer(model, data, cfg).train()
        results[name] = (result, fp.adapter_state_dict(model))
    (r_big, big), (r_acc, acc) = results["big"], results["accum"]
    assert r_big.global_step == r_acc.global_step == 3
    assert r_big.tokens_seen == r_acc.tokens_seen
    assert r_big.loss == pytest.approx(r_acc.loss, rel=1e-6)
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-5, atol=1e-6)
    start = fp.adapter_state_dict(lora_model())
    assert all(not torch.equal(big[k], start[k]) for k in big)  # A and B both trained


def test_loss_is_mean_over_labelled_tokens_of_the_global_batch(tmp_path):
    data = RandomTokens(16)
    model = lora_model()
    cfg = config(tmp_path, max_steps=1, gradient_accumulation_steps=2, per_device_batch_size=2,
                 lr=0.0, order_lr=0.0)  # fmt: skip
    result = Trainer(model, data, cfg).train()
    order = StepBatchSampler(16, 4, 1, 1, 0, cfg.seed, 0)
    batch = pad_collate([data[i] for i in next(iter(order))])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = lm_loss_sum(logits, batch["labels"]) / count_labelled(batch["labels"])
    assert result.loss == pytest.approx(float(expected), rel=1e-5)
    assert result.aux_loss == 0.0  # LoRA routes nothing


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    states = []
    for gc in (False, True):
        model = lora_model()
        Trainer(model, RandomTokens(8), config(tmp_path / str(gc), max_steps=2,
                gradient_checkpointing=gc)).train()  # fmt: skip
        states.append(fp.adapter_state_dict(model))
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_trains(tmp_path, dtype):
    model = tiny_llama()
    fp.inject(model, frame_config())
    cfg = config(tmp_path, max_steps=2, dtype=dtype)
    result = Trainer(model, RandomTokens(8), cfg).train()
    assert math.isfinite(result.loss) and result.aux_loss > 0
    assert model.model.layers[0].self_attn.q_proj.adapter.order_logits.dtype == torch.float32
    # float16 trains with a gradient scaler, whose state is checkpointed
    assert (result.last_checkpoint / "scaler.pt").is_file() == (dtype == "float16")


# -- logs, eval, callbacks -----------------------------------------------------------------------


class Recorder(TrainerCallback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps, self.evals, self.saves, self.modes, self.stop_at = [], [], [], [], stop_at

    def on_step_end(self, trainer, step, metrics):
        self.steps.append(step)
        if step == self.stop_at:
            trainer.request_stop()

    def on_evaluate(self, trainer, step, metrics):
        self.evals.append((step, metrics["probe"]))

    def on_save(self, trainer, step, path):
        self.saves.append(path.name)


def test_logs_eval_and_callbacks(tmp_path, capsys):
    model = tiny_llama()
    fp.inject(model, frame_config(dropout=0.05))
    randomise_lora_b(model)
    recorder = Recorder()

    def eval_fn(m):
        recorder.modes.append((m.training, torch.is_grad_enabled()))
        return {"probe": float(len(recorder.modes))}

    cfg = config(tmp_path, max_steps=5, log_every=2, eval_every=2, save_every=4,
                 progress=False)  # fmt: skip
    result = Trainer(model, RandomTokens(24), cfg, eval_fn=eval_fn, callbacks=[recorder]).train()
    assert capsys.readouterr().err == ""  # progress=False: no bar
    assert model.training  # back in train mode after each eval
    assert recorder.modes == [(False, False)] * 3
    assert recorder.steps == [1, 2, 3, 4, 5]
    assert recorder.evals == [(2, 1.0), (4, 2.0), (5, 3.0)]
    assert recorder.saves == ["checkpoint-4", "checkpoint-5"]
    assert result.eval_metrics == {"probe": 3.0}

    records = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [2, 4, 5]
    for key in ("step", "epoch", "loss", "aux_loss", "lr", "order_lr", "grad_norm_main",
                "grad_norm_order", "tokens_per_s", "tokens_seen", "elapsed_s", "aux/balance",
                "orders/mean", "orders/std", "orders/min", "orders/max", "eval/probe"):  # fmt: skip
        assert key in records[0], key
    assert records[-1]["tokens_seen"] == result.tokens_seen
    assert records[0]["grad_norm_order"] > 0 and records[0]["aux_loss"] > 0
    orders = [
        json.loads(line) for line in (tmp_path / "run" / "orders.jsonl").read_text().splitlines()
    ]
    assert [o["step"] for o in orders] == [2, 4, 5]
    assert (
        len(orders[0]["orders"]) == 6
        and len(orders[0]["orders"]["model.layers.0.self_attn.q_proj"]) == 4
    )


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="the tensorboard package is not installed",
)
def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_llama()
    fp.inject(model, frame_config())
    cfg = config(tmp_path, max_steps=3, log_every=2, eval_every=2, report_to=["tensorboard"])
    Trainer(model, RandomTokens(16), cfg, eval_fn=lambda m: {"probe": 1.0}).train()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/order_lr", "orders/mean", "eval/probe"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 3]


def test_missing_tensorboard_warns_once_and_keeps_the_jsonl(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.warns(UserWarning, match="needs the tensorboard package") as caught:
        Trainer(lora_model(), RandomTokens(8), config(tmp_path, report_to=None)).train()
    assert len([w for w in caught if "tensorboard" in str(w.message)]) == 1
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_progress_bar_and_request_stop(tmp_path, capsys):
    recorder = Recorder(stop_at=2)
    cfg = config(tmp_path, max_steps=10, progress=True)
    result = Trainer(lora_model(), RandomTokens(16), cfg, callbacks=[recorder]).train()
    err = capsys.readouterr().err
    assert "train:" in err and "loss=" in err and "tok_s=" in err
    assert result.global_step == 2 and result.stopped_early
    assert recorder.saves == ["checkpoint-2"]
    assert (result.adapter_path / "adapter_model.safetensors").is_file()


def test_trainer_refuses_models_without_adapters(tmp_path):
    with pytest.raises(ValueError, match="the model has no adapters"):
        Trainer(tiny_llama(), RandomTokens(8), config(tmp_path))
    with pytest.raises(ValueError, match="fewer than one global batch of 4"):
        Trainer(lora_model(), RandomTokens(3), config(tmp_path)).train()


# -- PEFT baselines --------------------------------------------------------------------------------


def test_peft_baseline_trains_and_checkpoints(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel

    model = fp.peft_baseline(tiny_llama(), "lora", r=4, lora_dropout=0.0,
                             target_modules=["q_proj", "v_proj"])  # fmt: skip
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    result = Trainer(model, RandomTokens(12), config(tmp_path, save_every=2)).train()
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    ckpt = result.last_checkpoint
    assert ckpt.name == "checkpoint-3"
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    assert (ckpt / "peft_state.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_llama(), str(result.adapter_path))
    for name, value in reloaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(value, after[name])


def test_peft_adalora_runs_its_rank_allocation(tmp_path):
    pytest.importorskip("peft")
    model = fp.peft_baseline(tiny_llama(), "adalora", total_step=4, tinit=1, tfinal=1, deltaT=1,
                             target_modules=["q_proj", "v_proj"])  # fmt: skip
    from frame_peft.training.losses import extra_model_loss

    assert model.peft_config["default"].rank_pattern is None

    assert (
        float(extra_model_loss(model).detach()) > 0
    )  # the orthogonality penalty is part of the loss
    result = Trainer(model, RandomTokens(16), config(tmp_path, max_steps=4)).train()
    assert result.global_step == 4 and math.isfinite(result.loss)
    assert model.peft_config["default"].rank_pattern is not None  # update_and_allocate ran


# -- model loading ---------------------------------------------------------------------------------


def test_load_base_model_from_a_local_folder(tmp_path):
    from _tokenizer import char_tokenizer, tiny_text_llama

    tok = char_tokenizer()
    tok.pad_token = None  # a tokenizer without pad token gets EOS as pad
    tok.save_pretrained(tmp_path)
    tiny_text_llama().save_pretrained(tmp_path)
    model, tokenizer = load_base_model(str(tmp_path), dtype="bfloat16", gradient_checkpointing=True)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.is_activation_checkpointing and model.config.use_cache is False
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_base_model(str(tmp_path), dtype="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_load_in_4bit_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA GPU and the bitsandbytes package"):
        load_base_model(str(tmp_path), load_in_4bit=True)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here; 4-bit loading needs CUDA and bitsandbytes",
)
def test_load_in_4bit_on_gpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from _tokenizer import char_tokenizer, tiny_text_llama

    char_tokenizer().save_pretrained(tmp_path)
    tiny_text_llama().save_pretrained(tmp_path)
    model, _ = load_base_model(str(tmp_path), load_in_4bit=True)
    assert any("4bit" in type(m).__name__ for m in model.modules())


def test_dataloader_workers_do_not_change_training(tmp_path):
    states = []
    for workers in (0, 2):
        model = lora_model()
        cfg = config(tmp_path / str(workers), max_steps=2, num_workers=workers)
        Trainer(model, RandomTokens(8), cfg).train()
        states.append(fp.adapter_state_dict(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_distributed_modes_need_a_launcher(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"needs a launcher .* lacks \['RANK', 'WORLD_SIZE'"):
        Trainer(lora_model(), RandomTokens(8), config(tmp_path, distributed="ddp")).train()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="distributed='none' but WORLD_SIZE=2"):
        Trainer(lora_model(), RandomTokens(8), config(tmp_path, distributed="none")).train()


def test_trainer_tells_routers_where_the_prompt_ends(tmp_path):
    """HMoRA's task encoder reads the prompt only: the loop passes the positions before each
    sequence's first supervised label as ``prompt_mask`` (labels never reach the model)."""
    model = fp.inject(tiny_llama(), fp.HMoRAConfig(target_modules=["q_proj", "v_proj"], rank=2))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    state = fp.core.inject.require_injection(model).state

    def spy(module, args):
        rec = state.current
        seen.append((rec.prompt_mask.clone(), rec.labels))

    layer = next(iter(fp.adapted_layers(model).values()))
    layer.register_forward_pre_hook(spy)
    data = RandomTokens(8)
    Trainer(model, data, config(tmp_path, max_steps=1)).train()
    lengths = {sum(label == -100 for label in item["labels"]) for item in data.items}
    assert seen
    for prompt, labels in seen:
        assert labels is None  # the loop drops labels from the model call
        assert prompt.dtype == torch.bool
        assert set(prompt.sum(dim=1).tolist()) <= lengths  # each row: its item's prompt
