"""The causal LM of the end-to-end and decode benchmarks, and the methods on all its Linears.

Full runs use SmolLM2-135M-Instruct, the converted local asset (``frame_peft.assets``:
``load_base_model("smollm2")``, float32). ``--quick`` runs use :func:`tiny_llama`, a random Llama
of the same structure (GQA attention, gated MLP, tied embeddings) small enough for tests.

Every adapter targets all seven Linears of each block (:data:`LINEARS`). Method configs come from
``_layer_methods.METHODS`` (same structure and budget knobs as the layer benchmark), retargeted
by :func:`retarget`. Budgets (:func:`match_model_budgets`): LoRA and PEFT LoRA get r = k·r = 8,
MoE-LoRA's active rank; MoE-LoRA and FRAME keep E = 8, k = 2, r = 4; FourierMoE, FlyLoRA and HMoRA
get the knob whose whole-model active parameters per token (``count_parameters`` on a meta-device
copy) are closest to MoE-LoRA's.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from torch import nn

from _layer_methods import EXPERTS, METHODS, RANK, TOP_K, Config, adapt, closest_knob
from frame_peft.accounting import PeftMethod
from frame_peft.methods.fouriermoe.layer import half_plane_size
from frame_peft.peft_bridge import count_parameters

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EQUAL_RANK = TOP_K * RANK  # LoRA rank with MoE-LoRA's active rank
MATCHED = ("fouriermoe", "flylora", "hmora")  # knob matched on the whole model


def tiny_llama(seed: int = 0) -> nn.Module:
    """A random 2-block Llama shaped like SmolLM2 (GQA 4/2 heads, gated MLP, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def load_model(quick: bool) -> tuple[nn.Module, str]:
    """``(model, description)``: the tiny stand-in for ``quick``, else SmolLM2 in float32."""
    if quick:
        return tiny_llama(), "tiny random Llama (2 blocks, hidden 64, vocab 256): --quick"
    from frame_peft.training import load_base_model

    model, _ = load_base_model("smollm2", dtype="float32")
    return model.eval(), "SmolLM2-135M-Instruct (frame_peft.assets 'smollm2', float32)"


def retarget(config: Config, targets: list[str]) -> Config:
    """``config`` with ``target_modules = targets`` (frame-peft config or PEFT method)."""
    if config is None:
        return None
    if isinstance(config, PeftMethod):
        return PeftMethod(config.method, {**config.kwargs, "target_modules": list(targets)})
    return dataclasses.replace(config, target_modules=list(targets))


def method_config(name: str, knob: int | None) -> Config:
    return retarget(METHODS[name].make(knob), LINEARS)


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(d_in, d_out) of every targeted Linear."""
    return [
        (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in LINEARS
    ]


def meta_active(model_config, config: Config) -> int:
    """Whole-model active parameters per token of ``config`` (meta device, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    model.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return count_parameters(adapt(model, config))["active_per_token"]


def match_model_budgets(model: nn.Module, names: list[str]) -> tuple[dict, int]:
    """``({method: knob}, target)``: the knobs of :mod:`_lm`'s docstring; target = MoE-LoRA's
    whole-model active parameters per token."""
    target = meta_active(model.config, method_config("moe_lora", None))
    shapes = linear_shapes(model)
    knobs: dict[str, int | None] = {}
    for name in names:
        if name in ("lora", "peft_lora"):
            knobs[name] = EQUAL_RANK
        elif name in MATCHED:
            hi = None
            if name == "fouriermoe":  # one ring of frequencies per expert, in every module
                hi = min(half_plane_size(o, i) // EXPERTS for i, o in shapes)

            def count(v: int, name: str = name) -> int:
                return meta_active(model.config, method_config(name, v))

            knobs[name] = closest_knob(count, target, hi=hi)
        else:
            knobs[name] = None
    return knobs, target


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its (frozen) parameters: only modules are copied.

    Every method wraps its own copy, so all of them run on the same frozen weights without
    holding one 540 MB float32 SmolLM2 per method; adapters never write to the base weights.
    """
    model.requires_grad_(False)
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def build_method(base: nn.Module, name: str, knob: int | None) -> nn.Module:
    """``name`` on a :func:`shared_copy` of ``base`` (``"base"``: the bare copy)."""
    torch.manual_seed(0)
    return adapt(shared_copy(base), method_config(name, knob))
