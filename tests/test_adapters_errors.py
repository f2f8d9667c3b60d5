"""Bad input gives a clear error and leaves the model unchanged."""

from __future__ import annotations

import json

import pytest
import torch

import frame_peft as fp
from _models import MODELS, TARGETS, mlp


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [type(m).__name__ for m in model.modules()],
    )


def assert_unchanged(model, snap):
    state, grads, types = snapshot(model)
    assert state.keys() == snap[0].keys()
    assert all(torch.equal(state[k], snap[0][k]) for k in state)
    assert grads == snap[1] and types == snap[2]
    assert not hasattr(model, "_frame_peft")


def test_target_matching_nothing_lists_candidates():
    model = MODELS["llama"]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"matched no Linear.*'q_proj'"):
        fp.inject(model, fp.LoRAConfig(target_modules=["qproj"]))
    assert_unchanged(model, snap)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: fp.LoRAConfig(rank=0), "rank must be a positive integer"),
        (lambda: fp.LoRAConfig(rank=-2), "rank must be a positive integer"),
        (lambda: fp.MoELoRAConfig(num_experts=2, top_k=3), r"top_k \(3\) cannot exceed"),
        (lambda: fp.FrameConfig(transform="fft"), "transform must be 'chirp' or 'exact'"),
        (lambda: fp.FrameConfig(init_orders="zeros"), "never moves"),
        (lambda: fp.FrameConfig(num_experts=4, init_orders=[0.1, 0.2]), "one order per expert"),
        (lambda: fp.FrameConfig(num_order_groups=9), "num_order_groups"),
        (lambda: fp.LoRAConfig(dropout=1.0), "dropout must be in"),
        (lambda: fp.LoRAConfig(target_modules=[]), "non-empty list"),
        (lambda: fp.LoRAConfig(target_modules="(unclosed"), "not a valid regex"),
        (lambda: fp.LoRAConfig(overrides={"x": {"num_experts": 2}}), "cannot be set per module"),
        (lambda: fp.MoELoRAConfig(overrides={"x": {"top_k": 9}}), r"top_k \(9\) cannot exceed"),
        (lambda: fp.FrameConfig(aux_loss="entropy"), "aux_loss must be one of"),
    ],
)
def test_invalid_configs(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_register_method_refuses_a_taken_name():
    from dataclasses import dataclass

    from frame_peft.core.config import adapter_class

    lora = fp.LoRAConfig
    fp.register_method(lora, adapter_class("lora"))  # the same pair again: a no-op

    @dataclass
    class Impostor(fp.LoRAConfig):
        method = "lora"

    with pytest.raises(ValueError, match="'lora' is already registered"):
        fp.register_method(Impostor, adapter_class("lora"))
    assert fp.config_from_dict({"method": "lora", "target_modules": ["x"]}).__class__ is lora


def test_unknown_method_and_unknown_field():
    with pytest.raises(ValueError, match="unknown method 'dora2'"):
        fp.config_from_dict({"method": "dora2"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rnak'\]"):
        fp.config_from_dict({"method": "lora", "rnak": 4})


def test_newer_format_version_refused():
    with pytest.raises(ValueError, match="upgrade frame-peft"):
        fp.config_from_dict({"method": "frame", "format_version": 99})


def test_inject_twice_refused():
    model = fp.inject(mlp(), fp.LoRAConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="already has frame-peft adapters"):
        fp.inject(model, fp.LoRAConfig(target_modules=["2"]))
    fp.unload(model)
    fp.inject(model, fp.LoRAConfig(target_modules=["2"]))  # fine after unload


def test_unload_restores_exactly():
    model = mlp()
    snap = snapshot(model)
    fp.inject(model, fp.FrameConfig(target_modules="all-linear"))
    fp.unload(model)
    assert_unchanged(model, snap)


def test_chirp_refuses_odd_width_and_leaves_model_alone():
    model = torch.nn.Sequential(torch.nn.Linear(15, 8))
    snap = snapshot(model)
    with pytest.raises(ValueError, match="transform='exact'"):
        fp.inject(model, fp.FrameConfig(target_modules=["0"]))
    assert_unchanged(model, snap)
    fp.inject(model, fp.FrameConfig(target_modules=["0"], transform="exact"))


def test_transform_override_per_module():
    """The odd-width error's advice works: ``exact`` for that module only, chirp elsewhere."""
    model = torch.nn.Sequential(torch.nn.Linear(15, 8), torch.nn.Linear(8, 8))
    config = fp.FrameConfig(target_modules=["0", "1"], overrides={"^0$": {"transform": "exact"}})
    layers = fp.adapted_layers(fp.inject(model, config))
    assert layers["0"].adapter.transform_name == "exact"
    assert layers["1"].adapter.transform_name == "chirp"
    with pytest.raises(ValueError, match="transform must be"):
        fp.FrameConfig(overrides={"x": {"transform": "fast"}})


@pytest.fixture
def saved(tmp_path):
    model = fp.inject(MODELS["llama"](), fp.FrameConfig(target_modules=TARGETS["llama"]))
    return fp.save_adapter(model, tmp_path / "ad")


def test_load_into_other_shapes_names_module_and_shapes(saved):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    snap = snapshot(other)
    with pytest.raises(
        ValueError,
        match=r"module 'model\.layers\.0\.\w+\.\w+': tensor '\w+' has shape \(.*\) in the "
        r"adapter file but \(.*\)",
    ):
        fp.load_adapter(other, saved)
    assert_unchanged(other, snap)


def test_missing_file(saved):
    (saved / "adapter_model.safetensors").unlink()
    model = MODELS["llama"]()
    snap = snapshot(model)
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors is missing"):
        fp.load_adapter(model, saved)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_weights_refused(saved, damage):
    path = saved / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    model = MODELS["llama"]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"truncated, modified|not a readable safetensors"):
        fp.load_adapter(model, saved)
    assert_unchanged(model, snap)


def test_truncated_without_checksum_still_refused(saved):
    meta = json.loads((saved / "adapter_config.json").read_text())
    del meta["frame_peft"]["weights_sha256"]
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    path = saved / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fp.load_adapter(MODELS["llama"](), saved)


def test_newer_format_on_disk_refused(saved):
    meta = json.loads((saved / "adapter_config.json").read_text())
    meta["frame_peft"]["format_version"] = 3
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    model = MODELS["llama"]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="format_version 3; this version reads 2"):
        fp.load_adapter(model, saved)
    assert_unchanged(model, snap)
