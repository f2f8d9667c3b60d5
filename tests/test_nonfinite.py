"""Non-finite losses and gradients stop training (or are skipped) and never reach a checkpoint;
NaN/inf config values are refused with the field named (issue 16 §2, docs/guarantees.md)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

import frame_peft as fp
from _models import tiny_llama
from _training_data import RandomTokens, lora_config, randomise_lora_b
from frame_peft.training import TrainConfig, Trainer, TrainerCallback
from frame_peft.training import checkpoint as ckpt
from frame_peft.training.loop import NonFiniteError


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"), max_steps=6, per_device_batch_size=4, lr=1e-2,
        progress=False, report_to="none", log_every=1, resume=None, seed=3, save_every=1,
        keep_checkpoints=2,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def lora_model() -> torch.nn.Module:
    model = tiny_llama(0)
    fp.inject(model, lora_config())
    randomise_lora_b(model)
    return model


class Poison:
    """Makes the forward (``where="loss"``) or one adapter gradient (``where="grad"``) NaN during
    the given 1-based optimizer steps, leaving the weights themselves untouched."""

    def __init__(self, model: torch.nn.Module, steps: set[int], where: str) -> None:
        self.steps, self.forwards = steps, 0
        if where == "loss":
            model.model.norm.register_forward_hook(self._forward)
        else:
            param = next(p for n, p in model.named_parameters() if p.requires_grad)
            model.model.register_forward_pre_hook(self._count)
            param.register_hook(lambda g: g * math.nan if self.forwards in self.steps else g)

    def _count(self, module, args):
        self.forwards += 1

    def _forward(self, module, args, output):
        self.forwards += 1
        return output * math.nan if self.forwards in self.steps else output


def all_finite(adapter_dir) -> bool:
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return all(torch.isfinite(t).all() for t in tensors.values())


def trainable(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_stops_with_error_and_keeps_last_good_checkpoint(tmp_path, where):
    model = lora_model()
    Poison(model, {4}, where)
    seen = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, trainer, step, metrics):
            seen[step] = trainable(model)

    trainer = Trainer(model, RandomTokens(64), config(tmp_path), callbacks=[Snapshot()])
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    run = tmp_path / "run"
    assert "step 4" in message and "loss=" in message
    assert str(run / "checkpoint-3") in message
    # keep_checkpoints=2: the good checkpoints 2 and 3 survive, nothing of step 4 was written
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 3]
    assert not (run / "checkpoint-4.tmp").exists() and not (run / "adapter").exists()
    for step in (2, 3):
        assert all_finite(run / f"checkpoint-{step}" / "adapter")
    # the refused step did not touch the parameters
    for before, now in zip(seen[3], trainable(model), strict=True):
        assert torch.equal(before, now)


def test_skip_mode_skips_and_finishes_with_finite_adapter(tmp_path):
    model = lora_model()
    Poison(model, {3, 4}, "loss")
    seen, records = {}, {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, trainer, step, metrics):
            seen[step] = trainable(model)
            records[step] = metrics

    cfg = config(tmp_path, nonfinite="skip", max_skipped_steps=2)
    result = Trainer(model, RandomTokens(64), cfg, callbacks=[Snapshot()]).train()
    assert result.global_step == 6 and math.isfinite(result.loss)
    assert all_finite(result.adapter_path)
    for step in (3, 4):  # skipped: no update
        for a, b in zip(seen[step - 1], seen[step], strict=True):
            assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(seen[4], seen[5], strict=True))
    assert [records[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]


def test_skip_mode_errors_after_too_many_consecutive_skips(tmp_path):
    model = lora_model()
    Poison(model, {2, 3, 4, 5, 6}, "loss")
    cfg = config(tmp_path, nonfinite="skip", max_skipped_steps=2)
    with pytest.raises(NonFiniteError, match=r"step 4.*3 non-finite steps in a row"):
        Trainer(model, RandomTokens(64), cfg).train()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2, 3]
    assert all_finite(tmp_path / "run" / "checkpoint-3" / "adapter")


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    """The backstop: weights made NaN outside the step are never saved."""
    model = lora_model()

    class Corrupt(TrainerCallback):
        def on_step_end(self, trainer, step, metrics):
            if step == 3:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(math.inf)

    trainer = Trainer(model, RandomTokens(64), config(tmp_path), callbacks=[Corrupt()])
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint-3.*checkpoint-2"):
        trainer.train()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1, 2]
    assert not (tmp_path / "run" / "checkpoint-3.tmp").exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "field", ["lr", "order_lr", "weight_decay", "warmup_ratio", "min_lr_ratio", "max_grad_norm"]
)
def test_train_config_rejects_nonfinite(tmp_path, field, bad):
    if field == "max_grad_norm" and bad == math.inf:
        pytest.skip("math.inf is max_grad_norm's documented 'measure only' value")
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        config(tmp_path, **{field: bad})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nonfinite": "ignore"}, "TrainConfig.nonfinite must be one of"),
        ({"max_skipped_steps": 0}, "TrainConfig.max_skipped_steps must be a positive integer"),
    ],
)
def test_train_config_nonfinite_fields(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)


def _adapter_float_fields() -> list[tuple[type, str]]:
    from frame_peft.core.config import AdapterConfig

    out = []
    for cls in vars(fp).values():
        if (
            isinstance(cls, type)
            and dataclasses.is_dataclass(cls)
            and issubclass(cls, AdapterConfig)
        ):
            base = cls()
            for f in dataclasses.fields(cls):
                if "float" in str(f.type) or isinstance(getattr(base, f.name), float):
                    out.append((cls, f.name))
    return out


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("cls", "field"), _adapter_float_fields(), ids=lambda x: getattr(x, "__name__", x)
)
def test_adapter_configs_reject_nonfinite_floats(cls, field, bad):
    with pytest.raises(ValueError, match=field):
        cls(**{field: bad})


def test_adapter_float_fields_cover_every_method():
    names = {cls.__name__ for cls, _ in _adapter_float_fields()}
    assert {"FrameConfig", "FlyLoRAConfig", "FourierMoEConfig", "MoELoRAConfig"} <= names


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scan_at": [0.1, math.nan]}, "scan_at"),
        ({"scan_grid": True}, "scan_grid"),
        ({"init_orders": [0.1, math.inf, 0.3, 0.4]}, "init_orders"),
    ],
)
def test_frame_lists_reject_nonfinite(kwargs, field):
    with pytest.raises(ValueError, match=field):
        from frame_peft.methods.frame.config import initial_orders

        initial_orders(fp.FrameConfig(num_experts=4, **kwargs))


def test_float16_nan_loss_errors_and_inf_gradient_is_left_to_the_scaler(tmp_path):
    """float16: a NaN loss stops the run; an inf/NaN gradient alone is the gradient scaler's
    to skip (it lowers the scale), so training goes on without an update at that step."""
    model = lora_model()
    Poison(model, {4}, "loss")
    with pytest.raises(NonFiniteError, match="step 4"):
        Trainer(model, RandomTokens(64), config(tmp_path / "a", dtype="float16")).train()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "a" / "run")] == [2, 3]

    model, seen = lora_model(), {}
    Poison(model, {3}, "grad")

    class Snapshot(TrainerCallback):
        def on_step_end(self, trainer, step, metrics):
            seen[step] = trainable(model)

    cfg = config(tmp_path / "b", dtype="float16", max_steps=4)
    result = Trainer(model, RandomTokens(64), cfg, callbacks=[Snapshot()]).train()
    assert result.global_step == 4 and all_finite(result.adapter_path)
    assert all(torch.equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))
