"""Tests for frame_peft.optim: the composite adapter + order optimizer."""

from __future__ import annotations

import io
import math
import re
import warnings

import pytest
import torch
from torch import nn

from frame_peft.optim import AdapterOptimizer, build_optimizer, is_order_parameter

SCHEDULER_WARNINGS = re.compile(
    r"Detected call of `lr_scheduler.step\(\)`|Seems like `optimizer.step\(\)` has been overridden"
)


class Toy(nn.Module):
    """A frozen base weight, a trainable "A/B" adapter (with biases) and order logits."""

    def __init__(self, n_experts: int = 3) -> None:
        super().__init__()
        self.base = nn.Linear(6, 6)
        self.base.requires_grad_(False)
        self.A = nn.Linear(6, 2)
        self.B = nn.Linear(2, 6)
        self.order_logits = nn.Parameter(torch.linspace(-1.0, 1.0, n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + torch.sigmoid(self.order_logits).mean()
        return self.base(x) + scale * self.B(self.A(x))


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def train_steps(model: Toy, opt, sched, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 6, generator=gen)
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_is_order_parameter() -> None:
    assert is_order_parameter("model.layers.0.self_attn.q_proj.adapter.order_logits")
    assert is_order_parameter("order_logits")
    assert not is_order_parameter("model.layers.0.self_attn.q_proj.adapter.order_logits.x")
    assert not is_order_parameter("model.layers.0.mlp.lora_A.weight")


def test_groups_split() -> None:
    model = toy()
    opt = build_optimizer(model, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, AdapterOptimizer)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["main_decay", "main_no_decay", "order"]
    decay, no_decay, order = opt.param_groups
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.A.weight, model.B.weight])
    assert ids(no_decay["params"]) == ids([model.A.bias, model.B.bias])
    assert ids(order["params"]) == ids([model.order_logits])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert order["weight_decay"] == 0.0
    every = [p for g in opt.param_groups for p in g["params"]]
    assert not any(p is model.base.weight or p is model.base.bias for p in every)
    # the order part lives only in the inner order optimizer
    assert [g["name"] for g in opt.main.param_groups] == ["main_decay", "main_no_decay"]
    assert [g["name"] for g in opt.order.param_groups] == ["order"]
    # the union holds the very same group dicts as the inner optimizers
    inner = opt.main.param_groups + opt.order.param_groups
    assert all(a is b for a, b in zip(opt.param_groups, inner, strict=True))


def test_lrs_and_hyperparameters() -> None:
    opt = build_optimizer(toy(), lr=3e-4, order_lr=2e-3, betas=(0.8, 0.99), eps=1e-6)
    assert [g["lr"] for g in opt.main.param_groups] == [3e-4, 3e-4]
    assert [g["lr"] for g in opt.order.param_groups] == [2e-3]
    assert all(g["betas"] == (0.8, 0.99) and g["eps"] == 1e-6 for g in opt.main.param_groups)
    (order_group,) = opt.order.param_groups
    assert order_group["betas"] == (0.9, 0.999) and order_group["eps"] == 1e-8
    assert isinstance(opt.main, torch.optim.AdamW) and isinstance(opt.order, torch.optim.AdamW)
    sgd = build_optimizer(toy(), optimizer_cls=torch.optim.SGD, betas=None, momentum=0.9)
    assert isinstance(sgd.main, torch.optim.SGD) and isinstance(sgd.order, torch.optim.AdamW)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kind", ["lambda", "cosine"])
def test_schedule_scales_both_with_same_shape(kind: str) -> None:
    model = toy()
    opt = build_optimizer(model, lr=1e-3, order_lr=1e-2)
    if kind == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    else:
        from transformers import get_cosine_schedule_with_warmup

        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    factors = []
    for _ in range(5):
        train_steps(model, opt, sched, 1, seed=len(factors))
        ratios = [g["lr"] / g["initial_lr"] for g in opt.param_groups]
        assert ratios == pytest.approx([ratios[0]] * len(ratios), rel=1e-12)
        factors.append(ratios[0])
        assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 1e-3, 1e-2]
    # the schedule really moved the lrs, along its own shape
    assert factors == pytest.approx([sched.lr_lambdas[0](k) for k in range(1, 6)], rel=1e-12)
    assert len(set(factors)) >= 3


def set_grads(model: Toy, main_norm: float, order_norm: float) -> None:
    main = [model.A.weight, model.A.bias, model.B.weight, model.B.bias]
    for p in [*main, model.order_logits]:
        p.grad = torch.ones_like(p)
    n_main = sum(p.numel() for p in main)
    for p in main:
        p.grad.mul_(main_norm / math.sqrt(n_main))
    model.order_logits.grad.mul_(order_norm / math.sqrt(model.order_logits.numel()))


def grad_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def test_separate_clipping() -> None:
    model = toy()
    main = [model.A.weight, model.A.bias, model.B.weight, model.B.bias]
    opt = build_optimizer(model, max_grad_norm=None, order_max_grad_norm=1.0)
    set_grads(model, main_norm=3.0, order_norm=1e4)
    before = [p.grad.clone() for p in main]
    opt.step()
    assert grad_norm([model.order_logits]) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(p.grad, b) for p, b in zip(main, before, strict=True))
    assert opt.last_grad_norms["main"] is None
    assert opt.last_grad_norms["order"] == pytest.approx(1e4, rel=1e-5)
    assert isinstance(opt.last_grad_norm_tensors["order"], torch.Tensor)

    # each set against its own clip: a joint clip would shrink main by ~1e4 here
    opt = build_optimizer(model, max_grad_norm=2.0, order_max_grad_norm=0.5)
    set_grads(model, main_norm=3.0, order_norm=1e4)
    opt.step()
    assert grad_norm(main) == pytest.approx(2.0, rel=1e-5)
    assert grad_norm([model.order_logits]) == pytest.approx(0.5, rel=1e-5)
    assert opt.last_grad_norms == pytest.approx({"main": 3.0, "order": 1e4}, rel=1e-5)

    # a set below its clip is left alone; math.inf only measures
    opt = build_optimizer(model, max_grad_norm=math.inf, order_max_grad_norm=1.0)
    set_grads(model, main_norm=3.0, order_norm=0.25)
    opt.step()
    assert grad_norm(main) == pytest.approx(3.0, rel=1e-5)
    assert grad_norm([model.order_logits]) == pytest.approx(0.25, rel=1e-5)
    assert opt.last_grad_norms == pytest.approx({"main": 3.0, "order": 0.25}, rel=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_bad_clip_values(bad: float) -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        build_optimizer(toy(), max_grad_norm=bad)
    with pytest.raises(ValueError, match="order_max_grad_norm"):
        build_optimizer(toy(), order_max_grad_norm=bad)


def make_run(seed: int = 0):
    model = toy(seed)
    opt = build_optimizer(model, lr=1e-2, order_lr=5e-2, weight_decay=0.01, order_max_grad_norm=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    return model, opt, sched


@pytest.mark.filterwarnings("error")
def test_state_dict_resume_is_bit_identical() -> None:
    model, opt, sched = make_run()
    train_steps(model, opt, sched, 3, seed=1)
    train_steps(model, opt, sched, 3, seed=2)
    reference = trainable(model)

    model, opt, sched = make_run()
    train_steps(model, opt, sched, 3, seed=1)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # what Trainer does
    assert sorted(ckpt["opt"]["state"]) == [0, 1, 2, 3, 4]
    assert [g["params"] for g in ckpt["opt"]["param_groups"]] == [[0, 1], [2, 3], [4]]

    fresh, opt2, sched2 = make_run(seed=123)  # different init: everything must come from ckpt
    fresh.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert torch.equal(
        opt2.order.state[fresh.order_logits]["exp_avg_sq"],
        opt.order.state[model.order_logits]["exp_avg_sq"],
    )
    train_steps(fresh, opt2, sched2, 3, seed=2)
    resumed = trainable(fresh)
    assert resumed.keys() == reference.keys()
    for name, ref in reference.items():
        assert torch.equal(resumed[name], ref), name


def test_load_state_dict_rejects_mismatched_layout() -> None:
    model, opt, _ = make_run()
    train_steps(model, opt, None, 1, seed=0)
    sd = opt.state_dict()
    no_order = nn.Linear(6, 6)
    with pytest.raises(ValueError, match="param groups"):
        build_optimizer(no_order).load_state_dict(sd)
    sd["param_groups"][2]["name"] = "main_decay"
    with pytest.raises(ValueError, match="name mismatch"):
        opt.load_state_dict(sd)


def test_zero_grad_clears_both() -> None:
    model = toy()
    opt = build_optimizer(model)
    trainables = [p for p in model.parameters() if p.requires_grad]
    model(torch.randn(2, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainables)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in trainables)
    opt.zero_grad()
    assert all(p.grad is None for p in trainables)


def test_no_trainable_parameters_raises() -> None:
    model = toy().requires_grad_(False)
    with pytest.raises(ValueError, match="inject an adapter"):
        build_optimizer(model)


def test_no_order_parameters_gives_empty_order_part() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = build_optimizer(model)
    assert opt.order.param_groups == [] and len(opt.param_groups) == 2
    before = trainable(model)
    model(torch.randn(3, 4)).pow(2).sum().backward()
    opt.step()
    assert opt.last_grad_norms["order"] is None and opt.last_grad_norms["main"] > 0
    assert all(not torch.equal(p, before[n]) for n, p in trainable(model).items())
    clone = build_optimizer(model)
    clone.load_state_dict(opt.state_dict())
    assert len(clone.state) == len(opt.state) == 4


def test_only_order_parameters() -> None:
    model = toy()
    for name, p in model.named_parameters():
        p.requires_grad_(is_order_parameter(name))
    opt = build_optimizer(model)
    assert opt.main.param_groups == [] and [g["name"] for g in opt.param_groups] == ["order"]
    before = model.order_logits.detach().clone()
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    assert not torch.equal(model.order_logits, before)


def test_step_closure_hooks_and_state_view() -> None:
    model = toy()
    opt = build_optimizer(model)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    x = torch.randn(2, 6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and calls == ["pre", "post"]
    assert set(opt.state[model.order_logits]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[model.order_logits] is opt.order.state[model.order_logits]
    assert opt.state[model.A.weight] is opt.main.state[model.A.weight]
    assert len(opt.state) == 5


def test_grad_scaler_unscales_before_the_per_set_clips() -> None:
    model = toy()
    opt = build_optimizer(model, max_grad_norm=math.inf, order_max_grad_norm=math.inf)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(2, 6)
    model(x).pow(2).mean().backward()
    expected = {"main": grad_norm([model.A.weight, model.A.bias, model.B.weight, model.B.bias])}
    expected["order"] = grad_norm([model.order_logits])
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.last_grad_norms == pytest.approx(expected, rel=1e-4)
    assert opt.order.state[model.order_logits]["step"] == 1


def test_deepcopy_after_scheduler_attached() -> None:
    import copy

    model, opt, sched = make_run()
    train_steps(model, opt, sched, 2, seed=0)
    clone = copy.deepcopy(opt)
    assert isinstance(clone, AdapterOptimizer) and "step" not in clone.__dict__
    a, b = opt.state_dict(), clone.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][4][k], b["state"][4][k]) for k in a["state"][4])


# ---- Hugging Face Trainer -----------------------------------------------------------------------


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    q_proj = model.model.layers[0].self_attn.q_proj
    # a fake FRAME order parameter that takes part in the forward pass
    q_proj.register_parameter("order_logits", nn.Parameter(torch.tensor([0.5, -0.5, 0.25])))
    q_proj.register_forward_hook(
        lambda m, args, out: out * (1.0 + torch.sigmoid(m.order_logits).mean())
    )
    for name, p in model.named_parameters():
        p.requires_grad_(is_order_parameter(name) or name.endswith("q_proj.weight"))
    return model


def lm_data(n: int = 12, length: int = 8) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 64, (length,), generator=gen)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def run_trainer(tmp_path, resume_from=None, save_steps=None):
    from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup

    model = tiny_llama(seed=0 if resume_from is None else 7)
    opt = build_optimizer(model, lr=1e-2, order_lr=1e-2)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=3)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        max_grad_norm=0.0,  # recommended: clipping is per set, inside the optimizer
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=lm_data(), optimizers=(opt, sched))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume_from)
    bad = [str(w.message) for w in caught if SCHEDULER_WARNINGS.search(str(w.message))]
    assert not bad, bad
    return model, opt, sched


def test_trainer_trains_both_sets(tmp_path) -> None:
    initial = trainable(tiny_llama())
    assert sorted(initial) == [
        "model.layers.0.self_attn.q_proj.order_logits",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ]
    model, opt, sched = run_trainer(tmp_path)
    after = trainable(model)
    for name, before in initial.items():
        assert not torch.equal(after[name], before), f"{name} did not change"
    frozen = dict(tiny_llama().named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, frozen)
    assert opt.order.state[model.model.layers[0].self_attn.q_proj.order_logits]["step"] == 3
    assert sched.last_epoch == 3
    assert opt.last_grad_norms["main"] > 0 and opt.last_grad_norms["order"] > 0


def test_trainer_checkpoint_resume(tmp_path) -> None:
    model, _, _ = run_trainer(tmp_path / "a", save_steps=2)
    reference = trainable(model)
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert [g["name"] for g in saved["param_groups"]] == ["main_decay", "order"]

    resumed_model, resumed_opt, resumed_sched = run_trainer(tmp_path / "b", resume_from=checkpoint)
    assert resumed_sched.last_epoch == 3
    q_order = resumed_model.model.layers[0].self_attn.q_proj.order_logits
    assert resumed_opt.order.state[q_order]["step"] == 3
    for name, ref in trainable(resumed_model).items():
        torch.testing.assert_close(ref, reference[name], rtol=0, atol=0)
