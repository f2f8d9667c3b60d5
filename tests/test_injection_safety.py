"""Injection safety (issue 16): a typo in ``target_modules`` raises, a PEFT-adapted model is
refused, new adapters take the model's train/eval mode, adapted models deep-copy and pickle with
their own routing state, and ``merge_and_unload`` refuses disabled adapters."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS, inputs, perturb
from _models import batch, mlp, tiny_gpt2, tiny_llama
from frame_peft.core.inject import find_injection

# Every method of the matrix with dropout on (the mode test needs it), plus MixLoRA (blocks).
MODE_CONFIGS = {
    **{name: (lambda t, make=make: _with_dropout(make(t))) for name, make in CONFIGS.items()},
    "mixlora": lambda t: fp.MixLoRAConfig(
        target_modules=t, num_experts=4, top_k=2, rank=2, dropout=0.3
    ),
}
LLAMA_TARGETS = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


def _with_dropout(config: fp.AdapterConfig) -> fp.AdapterConfig:
    config.dropout = 0.3
    return config


# --- 1. every target pattern must match --------------------------------------------------------


def test_a_typo_in_target_modules_raises_naming_it_and_close_names() -> None:
    with pytest.raises(ValueError, match=r"'v_prj'.*matched no.*v_proj"):
        fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj", "v_prj"]))


def test_a_failed_target_check_leaves_the_model_unchanged() -> None:
    model = tiny_llama()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError):
        fp.inject(model, fp.LoRAConfig(target_modules=["q_proj", "v_prj"]))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert find_injection(model) is None


def test_a_pattern_naming_a_non_linear_module_raises() -> None:
    with pytest.raises(ValueError, match=r"'mlp'.*LlamaMLP"):
        fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj", "mlp"]))


def test_allow_unmatched_opts_out_per_pattern_and_is_saved(tmp_path) -> None:
    cfg = fp.LoRAConfig(target_modules=["q_proj", "c_attn"], allow_unmatched=["c_attn"])
    model = fp.inject(tiny_llama(), cfg)
    assert sorted({n.split(".")[-1] for n in fp.adapted_layers(model)}) == ["q_proj"]
    fp.save_adapter(model, tmp_path / "a")
    loaded = fp.load_adapter(tiny_llama(), tmp_path / "a")
    assert fp.adapted_layers(loaded).keys() == fp.adapted_layers(model).keys()
    assert find_injection(loaded).config.allow_unmatched == ["c_attn"]  # saved with the config
    # True allows every pattern; the other patterns still need allowing when only some are listed
    fp.inject(tiny_gpt2(), fp.LoRAConfig(target_modules=["c_attn", "q_proj"], allow_unmatched=True))
    with pytest.raises(ValueError, match="'q_proj'"):
        fp.inject(tiny_gpt2(), cfg)


def test_allow_unmatched_is_validated() -> None:
    with pytest.raises(ValueError, match="allow_unmatched"):
        fp.LoRAConfig(target_modules=["q_proj"], allow_unmatched=["k_proj"])
    with pytest.raises(ValueError, match="allow_unmatched"):
        fp.LoRAConfig(target_modules=["q_proj"], allow_unmatched="q_proj")
    with pytest.raises(ValueError, match="allow_unmatched"):
        fp.LoRAConfig(target_modules="all-linear", allow_unmatched=["q_proj"])


def test_mixlora_block_targets_still_match_and_a_typo_raises() -> None:
    model = fp.inject(tiny_llama(), fp.MixLoRAConfig(num_experts=2, rank=2))  # default targets
    assert any(n.endswith(".mlp") for n in fp.adapted_layers(model))
    with pytest.raises(ValueError, match="'gate_prj'"):
        fp.inject(tiny_llama(), fp.MixLoRAConfig(target_modules=["gate_prj", "up_proj"]))


# --- 2. PEFT adapters ---------------------------------------------------------------------------


def test_a_peft_model_is_refused() -> None:
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(target_modules=["q_proj"], r=2))
    with pytest.raises(ValueError, match="PEFT"):
        fp.inject(model, fp.LoRAConfig(target_modules=["q_proj", "v_proj"]))
    inner = model.get_base_model()  # the lora_A/lora_B layers without the PeftModel wrapper
    with pytest.raises(ValueError, match=r"PEFT.*q_proj"):
        fp.inject(inner, fp.LoRAConfig(target_modules="all-linear"))


# --- 3. adapters take the model's mode ----------------------------------------------------------


@pytest.mark.parametrize("method", sorted(MODE_CONFIGS))
def test_injected_and_loaded_adapters_take_the_model_mode(method: str, tmp_path) -> None:
    config = MODE_CONFIGS[method](LLAMA_TARGETS)
    model = fp.inject(tiny_llama(), config)  # tiny_llama() is in eval mode
    assert not any(m.training for m in model.modules())
    perturb(model)
    with torch.no_grad():
        state = {k: v.clone() for k, v in model.state_dict().items()}
        first, second = model(**inputs()).logits, model(**inputs()).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout, no moved bias
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    fp.save_adapter(model, tmp_path / "a")
    loaded = fp.load_adapter(tiny_llama(), tmp_path / "a")
    assert not any(m.training for m in loaded.modules())
    trained = fp.inject(tiny_llama().train(), MODE_CONFIGS[method](LLAMA_TARGETS))
    assert all(m.training for m in trained.modules())


# --- 4. deepcopy and pickle ---------------------------------------------------------------------


def _train_step(model: torch.nn.Module) -> None:
    model.train()
    out = model(**batch())
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
                p.grad = None


# HMoRA's layer keeps its last forward's routing tensors on the adapter (``_last``, outside the
# routing state), which torch cannot deep-copy after a training forward: open in issue 16.
@pytest.mark.parametrize(
    "method",
    sorted(MODE_CONFIGS),
)
def test_deepcopy_after_a_training_forward_has_its_own_state(method: str) -> None:
    model = fp.inject(tiny_llama(), MODE_CONFIGS[method](LLAMA_TARGETS))
    _train_step(model)
    clone = copy.deepcopy(model)
    inj, cinj = find_injection(model), find_injection(clone)
    assert cinj.state is not inj.state
    for name, layer in fp.adapted_layers(clone).items():
        assert layer is clone.get_submodule(name)
        assert layer.adapter.context.state is cinj.state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model(**inputs())
    record = inj.state.current
    _train_step(clone)  # the copy's hook opens the copy's record, trains the copy only
    assert inj.state.current is record
    assert cinj.state.current is not record and cinj.state.current.from_model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in clone.state_dict().items())


def test_pickle_round_trip_of_an_adapted_model() -> None:
    model = fp.inject(mlp(), fp.MoELoRAConfig(target_modules=["0", "2"], num_experts=2, rank=2))
    model.train()
    model(torch.randn(3, 16)).sum().backward()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(3, 16)
    model.eval(), clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert find_injection(clone).state.current.from_model  # the copy's hook ran
    fp.unload(clone)  # the copy's hooks are its own: removable
    assert find_injection(model) is not None


# --- 5. merge_and_unload with disabled adapters -------------------------------------------------


def test_merge_and_unload_refuses_disabled_adapters() -> None:
    model = fp.inject(tiny_llama(), fp.LoRAConfig(target_modules=["q_proj"], rank=2))
    perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp.set_adapters_enabled(model, False)
    with pytest.raises(ValueError, match="disabled"):
        fp.merge_and_unload(model)
    assert find_injection(model) is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    fp.set_adapters_enabled(model, True)
    with fp.disable_adapters(model), pytest.raises(ValueError, match="disabled"):
        fp.merge_and_unload(model)
    fp.merge_and_unload(model)  # enabled again: merges


def test_inject_and_save_work_without_peft_installed(tmp_path):
    """PEFT is optional: with it unimportable, inject/save/load still work (only PEFT's own
    layer names are recognised as PEFT adapters then)."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["peft"] = None  # import peft raises ImportError
sys.path.insert(0, {str(Path(__file__).parent)!r})
import frame_peft as fp
from _models import tiny_llama
model = fp.inject(tiny_llama(), fp.FrameConfig(target_modules=["q_proj"], rank=2))
fp.save_adapter(model, {str(tmp_path / "ad")!r})
fp.load_adapter(tiny_llama(), {str(tmp_path / "ad")!r})
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
