"""Every adapter × tiny Llama, Qwen2 and GPT-2: the behaviour every method must have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS, perturb, randomise_saved_state
from _models import MODELS, batch

MATRIX = [(m, a) for m in MODELS for a in CONFIGS]
IDS = [f"{m}-{a}" for m, a in MATRIX]


def build(model_name: str, method: str, targets="all-linear"):
    base = MODELS[model_name]()
    with torch.no_grad():
        ref = base(**{k: v for k, v in batch().items() if k != "labels"}).logits
    model = fp.inject(base, CONFIGS[method](targets))
    return model, ref


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_identity_at_init_and_disable(model_name, method):
    model, ref = build(model_name, method)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref)  # B = 0: exactly the base model
        perturb(model)
        moved = model(**inputs).logits
        assert (moved - ref).abs().max() > 1e-4
        with fp.disable_adapters(model):
            assert torch.equal(model(**inputs).logits, ref)
        assert torch.equal(model(**inputs).logits, moved)  # re-enabled afterwards


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_only_adapter_parameters_train(model_name, method):
    model, _ = build(model_name, method)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n for n in trainable)
    adapter_params = [n for n, _ in model.named_parameters() if ".adapter." in n]
    assert set(trainable) == set(adapter_params)
    counts = fp.count_parameters(model)
    assert counts["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad
    )
    assert 0 < counts["active_per_token"] <= counts["trainable"] < counts["total"]


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_training_steps_reduce_loss(model_name, method):
    model, _ = build(model_name, method)
    model.train()
    data = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(**data)
        loss = out.loss + fp.aux_loss(model)
        losses.append(float(out.loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_fp32_and_bf16_forward_finite(model_name, method):
    model, _ = build(model_name, method)
    perturb(model)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
        model.to(torch.bfloat16)
        out = model(**inputs).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    for name, p in model.named_parameters():  # routers and orders never drop to bf16
        if name.endswith(("router.weight", "order_logits")):
            assert p.dtype == torch.float32, name


# --- save -> load in a new process: bit-identical logits -------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    import frame_peft as fp
    from _models import MODELS, batch
    jobs = json.loads({jobs!r})
    for job in jobs:
        base = MODELS[job["model"]]()
        model = fp.load_adapter(base, job["dir"])
        with torch.no_grad():
            logits = model(**{{k: v for k, v in batch().items() if k != "labels"}}).logits
        torch.save(logits, job["out"])
    """
)


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Save one trained adapter per matrix cell, reload all of them in one fresh process."""
    root = tmp_path_factory.mktemp("reload")
    jobs, expected = [], {}
    for model_name, method in MATRIX:
        model, _ = build(model_name, method)
        randomise_saved_state(model)
        with torch.no_grad():
            expected[(model_name, method)] = model(
                **{k: v for k, v in batch().items() if k != "labels"}
            ).logits
        d = root / f"{model_name}-{method}"
        fp.save_adapter(model, d)
        jobs.append({"model": model_name, "dir": str(d), "out": str(d / "logits.pt")})
    tests_dir = os.path.dirname(__file__)
    code = _CHILD.format(tests=tests_dir, jobs=json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    return {k: (v, torch.load(root / f"{k[0]}-{k[1]}" / "logits.pt")) for k, v in expected.items()}


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_save_load_new_process_bit_identical(reloaded, model_name, method):
    expected, got = reloaded[(model_name, method)]
    assert torch.equal(expected, got)


def test_saved_files_and_config(tmp_path):
    model, _ = build("llama", "frame")
    out = fp.save_adapter(model, tmp_path / "ad")
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["method"] == "frame" and meta["format_version"] == 1
    assert len(meta["frame_peft"]["weights_sha256"]) == 64
    assert (out / "adapter_model.safetensors").is_file()
    cfg = fp.config_from_dict({k: v for k, v in meta.items() if k != "frame_peft"})
    assert cfg == CONFIGS["frame"]("all-linear")


def test_build_optimizer_on_frame_model_trains_orders_separately():
    model, _ = build("llama", "frame")
    opt = fp.build_optimizer(model, lr=1e-2, order_lr=1e-1)
    order_params = {id(p) for g in opt.order.param_groups for p in g["params"]}
    n_modules = len(fp.adapted_layers(model))
    assert len(order_params) == n_modules
    assert all(g["lr"] == 1e-1 for g in opt.order.param_groups)
    perturb(model)
    model.train()
    before = fp.orders(model)
    for _ in range(3):
        out = model(**batch())
        (out.loss + fp.aux_loss(model)).backward()
        opt.step()
        opt.zero_grad()
    after = fp.orders(model)
    assert all((after[k] - before[k]).abs().max() > 1e-4 for k in before)
