"""Every adapter × tiny Llama, Qwen2 and GPT-2: the behaviour every method must have.

Method-specific expectations (trainable tensors, saved buffers, float32 tensors, aux loss kind,
active-parameter formula) come from the tables in ``_adapters.py``; the per-method test files keep
only what is specific to one method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import frame_peft as fp
from _adapters import (
    ACTIVE,
    AUX,
    BUFFERS,
    CONFIGS,
    DENSE,
    FP32,
    FROZEN,
    TRAINABLE,
    inputs,
    perturb,
    randomise_saved_state,
)
from _models import MODELS, batch
from frame_peft.core.inject import find_injection

MATRIX = [(m, a) for m in MODELS for a in CONFIGS]
IDS = [f"{m}-{a}" for m, a in MATRIX]


def build(model_name: str, method: str, targets="all-linear"):
    base = MODELS[model_name]()
    with torch.no_grad():
        ref = base(**inputs()).logits
    # eval mode: FlyLoRA's bias b moves after every training-mode forward, grad or not
    model = fp.inject(base, CONFIGS[method](targets)).eval()
    return model, ref


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_identity_at_init_and_disable(model_name, method):
    model, ref = build(model_name, method)
    with torch.no_grad():
        assert torch.equal(model(**inputs()).logits, ref)  # B = 0: exactly the base model
        perturb(model)
        moved = model(**inputs()).logits
        assert (moved - ref).abs().max() > 1e-4
        with fp.disable_adapters(model):
            assert torch.equal(model(**inputs()).logits, ref)
        assert torch.equal(model(**inputs()).logits, moved)  # re-enabled afterwards


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_only_adapter_parameters_train(model_name, method):
    model, _ = build(model_name, method)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n for n in trainable)
    adapter_params = [n for n, _ in model.named_parameters() if ".adapter." in n]
    assert set(trainable) == set(adapter_params)
    layers = fp.adapted_layers(model)
    for name, layer in layers.items():
        a = layer.adapter
        assert {n for n, p in a.named_parameters() if p.requires_grad} == TRAINABLE[method], name
        assert set(a.state_dict()) == TRAINABLE[method] | BUFFERS.get(method, set()), name
        assert not any(b.requires_grad for b in a.buffers()), name
        assert a.active_parameters() == ACTIVE[method](a.in_features, a.out_features), name
    counts = fp.count_parameters(model)
    assert counts["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad
    )
    assert counts["active_per_token"] == sum(
        ACTIVE[method](la.adapter.in_features, la.adapter.out_features) for la in layers.values()
    )
    assert 0 < counts["active_per_token"] <= counts["trainable"] < counts["total"]
    if method in DENSE:  # no top-k: every token uses every trainable parameter
        assert counts["active_per_token"] == counts["trainable"]


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_training_steps_reduce_loss(model_name, method):
    model, _ = build(model_name, method)
    layers = fp.adapted_layers(model)
    frozen = {
        (n, k): v.clone()
        for n, la in layers.items()
        for k, v in la.adapter.state_dict().items()
        if k in FROZEN.get(method, set())
    }
    model.train()
    data = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(**data)
        aux = fp.aux_loss(model)
        assert set(fp.aux_stats(model)) == ({AUX[method]} if method in AUX else set())
        if method in AUX:
            assert aux.requires_grad and torch.isfinite(aux)
        if AUX.get(method) == "balance":  # a Switch loss is >= its coefficient
            assert aux > 0
        loss = out.loss + aux
        losses.append(float(out.loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 1e-3, losses
    terms = find_injection(model).state.current.terms
    if method in AUX:  # one term per module, counted over the non-padding tokens only
        assert len(terms) == len(layers)
        valid = float(data["attention_mask"].sum())
        assert all(float(t.num_tokens) == valid for t in terms)
    else:
        assert terms == []
    for (n, k), before in frozen.items():
        assert torch.equal(layers[n].adapter.state_dict()[k], before), (n, k)


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_fp32_and_bf16_forward_finite(model_name, method):
    model, _ = build(model_name, method)
    perturb(model)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs()).logits).all()
        model.to(torch.bfloat16)
        out = model(**inputs()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    for name, layer in fp.adapted_layers(model).items():
        for k, t in layer.adapter.state_dict().items():
            if not t.is_floating_point():
                assert t.dtype == torch.int64, (name, k)  # FourierMoE's positions
            elif k in FP32[method]:  # routers, orders, FlyLoRA's A and bias never drop to bf16
                assert t.dtype == torch.float32, (name, k)
            else:
                assert t.dtype == torch.bfloat16, (name, k)


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
        model = fp.load_adapter(base, job["dir"]).eval()
        with torch.no_grad():
            logits = model(**{{k: v for k, v in batch().items() if k != "labels"}}).logits
        torch.save({{"logits": logits, "state": fp.adapter_state_dict(model)}}, job["out"])
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
            logits = model(**inputs()).logits
        state = {k: v.clone() for k, v in fp.adapter_state_dict(model).items()}
        expected[(model_name, method)] = {"logits": logits, "state": state}
        d = root / f"{model_name}-{method}"
        fp.save_adapter(model, d)
        jobs.append({"model": model_name, "dir": str(d), "out": str(d / "out.pt")})
    tests_dir = os.path.dirname(__file__)
    code = _CHILD.format(tests=tests_dir, jobs=json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    return {k: (v, torch.load(root / f"{k[0]}-{k[1]}" / "out.pt")) for k, v in expected.items()}


@pytest.mark.parametrize(("model_name", "method"), MATRIX, ids=IDS)
def test_save_load_new_process_bit_identical(reloaded, model_name, method):
    """Logits and every saved tensor (parameters and buffers: FourierMoE's positions, FlyLoRA's
    frozen A and bias, ...) come back bit-identical in a fresh process."""
    expected, got = reloaded[(model_name, method)]
    assert torch.equal(expected["logits"], got["logits"])
    assert expected["state"].keys() == got["state"].keys()
    for k, v in expected["state"].items():
        assert v.dtype == got["state"][k].dtype and torch.equal(v, got["state"][k]), k


def test_saved_files_and_config(tmp_path):
    model, _ = build("llama", "frame")
    out = fp.save_adapter(model, tmp_path / "ad")
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["peft_type"] == "FRAME_PEFT" and meta["frame_peft"]["format_version"] == 2
    block = meta["frame_peft"]
    assert block["config"]["method"] == "frame"
    assert len(block["weights_sha256"]) == 64 and len(block["config_sha256"]) == 64
    assert (out / "adapter_model.safetensors").is_file()
    cfg = fp.config_from_dict(block["config"])
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
