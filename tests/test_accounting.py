"""Parameter accounting on the meta device equals counting a real model."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import frame_peft as fp
from _adapters import CONFIGS
from frame_peft.accounting import PeftMethod, markdown_table, parameter_table

CFG = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
)  # fmt: skip


def test_meta_table_matches_real_models():
    methods = {name: make("all-linear") for name, make in CONFIGS.items()}
    rows = {r["method"]: r for r in parameter_table(CFG, methods)}
    torch.manual_seed(0)
    base = sum(p.numel() for p in AutoModelForCausalLM.from_config(CFG).parameters())
    for name, cfg in methods.items():
        real = fp.count_parameters(fp.inject(AutoModelForCausalLM.from_config(CFG), cfg))
        row = rows[name]
        assert {k: row[k] for k in real} == real, name
        assert row["base"] == base
        assert row["active_pct"] == pytest.approx(100 * real["active_per_token"] / base)
    assert rows["frame"]["active_per_token"] < rows["frame"]["trainable"]  # k of E experts
    assert "| frame |" in markdown_table(list(rows.values()))


def test_meta_table_peft_baselines_and_skips():
    peft = pytest.importorskip("peft")
    from frame_peft import peft_bridge as pb

    methods = {"dora": PeftMethod("dora"), "ft": PeftMethod("fourierft")}
    rows = {r["method"]: r for r in parameter_table(CFG, methods)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = pb.count_parameters(pb.peft_baseline(AutoModelForCausalLM.from_config(CFG), "dora"))
    assert {k: rows["dora"][k] for k in real} == real
    # PEFT FourierFT's default n = 1000 exceeds these tiny layers: the row is skipped, not wrong.
    assert rows["ft"]["trainable"] is None and "n_frequency" in rows["ft"]["note"]
    assert peft is not None
