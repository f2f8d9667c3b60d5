"""Unsupported engines fail loudly: DeepSpeed is refused, dropped accelerate processes warn.

DeepSpeed cannot be installed on the CPU test machines, so ``TrainingArguments(deepspeed=...)``
cannot be built (transformers imports deepspeed for it). The DeepSpeed tests therefore use the
interfaces that reach frame_peft without it: the ``ACCELERATE_USE_DEEPSPEED`` variable that
``accelerate launch --use_deepspeed`` and a ``DeepSpeedPlugin`` set, and a real
``TrainingArguments`` whose ``deepspeed`` field is set after construction (a stand-in for the
validated field). The replaced-optimizer test runs a real ``transformers.Trainer``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import Trainer, TrainingArguments

from _models import tiny_llama
from frame_peft.optim import build_optimizer, deepspeed_evidence
from frame_peft.training import distributed
from frame_peft.training.hf_callbacks import AdapterOptimizerHFCallback


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                max_grad_norm=0.0, report_to=[], use_cpu=True, disable_tqdm=True,
                save_strategy="no")  # fmt: skip
    return TrainingArguments(**{**base, **kw})


def _data(n: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, 64, (8,), generator=g)), "labels": ids}
            for _ in range(n)]  # fmt: skip


def _trainable(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("q_proj.weight"))
    return model


def test_build_optimizer_refuses_deepspeed(monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match=r"does not support DeepSpeed.*FSDP2.*--multi_gpu"):
        build_optimizer(_trainable(tiny_llama()))


def test_first_step_refuses_deepspeed_set_up_later(monkeypatch) -> None:
    model = _trainable(tiny_llama())
    opt = build_optimizer(model)
    model(
        input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)
    ).loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="DeepSpeed"):
        opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), f"{n} changed although the step was refused"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    opt.step()
    assert opt.steps_taken == 1


def test_deepspeed_evidence_from_training_arguments(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    args = _args(tmp_path)
    assert deepspeed_evidence(args) is None
    args.deepspeed = {"zero_optimization": {"stage": 2}}  # stand-in: see the module docstring
    assert "TrainingArguments.deepspeed" in deepspeed_evidence(args)
    callback = AdapterOptimizerHFCallback(build_optimizer(_trainable(tiny_llama())))
    for event in (callback.on_init_end, callback.on_train_begin):
        with pytest.raises(RuntimeError, match="does not support DeepSpeed"):
            event(args, None, None)


def test_callback_passes_a_normal_run_and_warns_on_joint_clip(tmp_path) -> None:
    model = _trainable(tiny_llama())
    opt = build_optimizer(model)
    args = _args(tmp_path, max_grad_norm=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=_data(), optimizers=(opt, None),
                      callbacks=[AdapterOptimizerHFCallback(opt)])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="max_grad_norm=1.0"):
        trainer.train()
    assert opt.steps_taken == 1


def test_callback_refuses_a_replaced_optimizer(tmp_path) -> None:
    """A Trainer given no optimizer builds its own AdamW, as it does under DeepSpeed."""
    model = _trainable(tiny_llama())
    opt = build_optimizer(model)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=_data(),
                      callbacks=[AdapterOptimizerHFCallback(opt)])  # fmt: skip
    with pytest.raises(RuntimeError, match="without stepping the AdapterOptimizer"):
        trainer.train()
    assert trainer.state.global_step == 0 and opt.steps_taken == 0


# What `accelerate launch --num_processes 2 s.py` set on accelerate 1.16 (checked by hand).
ACCELERATE_SIMPLE_LAUNCH = {
    "ACCELERATE_DYNAMO_BACKEND": "NO",
    "ACCELERATE_USE_CPU": "False",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


@pytest.fixture
def simple_launch(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", *distributed._MPI_SIZE_VARS):
        monkeypatch.delenv(var, raising=False)
    for var, value in ACCELERATE_SIMPLE_LAUNCH.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(distributed, "_warned_dropped_processes", False)
    return monkeypatch


def test_dropped_accelerate_processes_warn_once(simple_launch) -> None:
    with pytest.warns(RuntimeWarning, match="--multi_gpu"):
        env = distributed.setup("auto", "cpu", torch.nn.Linear(2, 2))
    assert env.mode == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert distributed.warn_if_processes_dropped()  # still true, no second warning


@pytest.mark.parametrize("change", ["one_process", "torchrun", "mpi", "plain_python"])
def test_no_warning_when_the_processes_started(simple_launch, change) -> None:
    if change == "one_process":  # --num_processes 1 sets no MASTER_ADDR
        simple_launch.delenv("MASTER_ADDR")
    elif change == "torchrun":
        simple_launch.setenv("WORLD_SIZE", "2")
        simple_launch.setenv("RANK", "0")
    elif change == "mpi":
        simple_launch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    else:
        simple_launch.delenv("ACCELERATE_DYNAMO_BACKEND")
    assert distributed.dropped_processes_message() is None
