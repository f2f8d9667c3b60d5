"""The dry run: every shipped recipe × method on the meta device, hand-checked numbers, findings.

No weights and no network: the GPU recipes' models come from the configs shipped in
``recipes/model_configs``; the tiny model is a ``config.json`` in a temporary folder.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from frame_peft.accounting import PeftMethod, parameter_table
from frame_peft.cli import main
from frame_peft.methods import FourierMoEConfig, LoRAConfig
from frame_peft.recipes import RecipeError, builtin_recipes, load_recipe, recipe_from_dict
from frame_peft.recipes.dry_run import dry_run, recipe_methods
from frame_peft.recipes.estimate import GIB, ModelShape, estimate_memory, step_flops
from frame_peft.recipes.meta_model import fast_meta_draws, resolve_model_config

GPU_RECIPES = ["code", "commonsense", "knowledge", "math", "multitask"]


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_shipped_recipe_and_method_dry_runs_without_weights(name):
    recipe = load_recipe(name)
    report = dry_run(recipe)
    assert [m.method for m in report.methods] == recipe_methods(recipe)
    assert len(report.methods) >= (10 if name in GPU_RECIPES else 1)
    for m in report.methods:
        assert 0 < m.active_per_token <= m.trainable < m.total, m.method
        assert m.memory["total"] > m.memory["weights"] > 0
        assert m.flops["total"] > 0 and m.flops["recompute"] == (
            m.flops["forward"] if report.gradient_checkpointing else 0
        )
    assert not [f for f in report.findings if f.level == "error"], report.format()
    if name in GPU_RECIPES:  # the shipped config, named in the report
        assert "shipped config meta-llama--Llama-3.1-8B.json" in report.config_source
        assert report.base_parameters == 8_030_261_248  # LLaMA-3.1-8B's published count
        assert report.dtype == "bfloat16" and report.gradient_checkpointing
        assert all(m.fits for m in report.methods), report.format()
        assert "hub data is not downloaded" in report.format()


def test_qwen_shipped_config_and_fsdp_sharding():
    recipe = load_recipe("math", ["model.name=Qwen/Qwen2.5-7B", "train.distributed=fsdp"])
    one = dry_run(recipe, ["lora"], nproc=1)
    four = dry_run(recipe, ["lora"], nproc=4)
    assert "Qwen--Qwen2.5-7B.json" in one.config_source
    assert one.base_parameters == 7_615_616_512  # Qwen2.5-7B's published count
    m1, m4 = one.methods[0].memory, four.methods[0].memory
    assert m4["weights"] == pytest.approx(m1["weights"] / 4)
    assert m4["optimizer"] == pytest.approx(m1["optimizer"] / 4)
    assert m4["fsdp_gather"] > 0 == m1["fsdp_gather"]
    assert m4["activations"] == m1["activations"]  # per-GPU micro-batch is unchanged


def test_scan_under_fsdp_is_reported_as_not_running():
    recipe = load_recipe("commonsense", ["train.distributed=fsdp"])
    report = dry_run(recipe, ["frame"], nproc=2)
    assert not report.methods[0].fits and not report.ok
    assert "order_search=gradient" in report.format()


TINY = dict(
    model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip


def tiny_recipe(tmp_path, **sections):
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY))
    data = {
        "name": "tiny",
        "model": {"name": str(folder), "dtype": "float32"},
        "method": "lora",
        "target_modules": ["q_proj", "v_proj"],
        "adapters": {"lora": {"rank": 2, "dropout": 0.0}},
        "data": {"source": "offline", "train": {"reasoning_gym_math": 64}, "max_length": 16},
        "train": {"max_steps": 10, "per_device_batch_size": 2, "dtype": "float32"},
        "eval": {"batch_size": 2, "max_new_tokens": 8},
        "compare": ["base", "lora"],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(data)


def test_tiny_numbers_match_hand_computation(tmp_path):
    report = dry_run(tiny_recipe(tmp_path), ["lora"])
    assert report.config_source.startswith("local folder")
    # embed 64·32 + 2 layers × (q 1024 + k 512 + v 512 + o 1024 + 3 × 2048 + 2 norms 64)
    # + final norm 32 + untied head 64·32
    assert report.base_parameters == 2048 + 2 * 9280 + 32 + 2048 == 22688
    m = report.methods[0]
    # LoRA r=2 on q (32→32) and v (32→16): 2·(32+32) + 2·(32+16) = 224 per layer
    assert (m.trainable, m.active_per_token, m.total) == (448, 448, 22688 + 448)
    counts = parameter_table(_tiny_config(), {"lora": LoRAConfig(**_lora())})[0]
    assert (counts["trainable"], counts["total"]) == (m.trainable, m.total)  # = accounting
    mem = m.memory
    tokens = 2 * 16  # micro-batch × data.max_length
    assert mem["weights"] == 22688 * 4
    assert (mem["adapter"], mem["grads"], mem["optimizer"]) == (448 * 4, 448 * 4, 2 * 448 * 4)
    # A_layer = 6h + 2kv + 4i = 192 + 32 + 256 = 480 elements; adapters r_eff 2 per module,
    # 4 modules (no dropout); float32: 4 bytes
    assert mem["activations"] == tokens * (2 * 480 * 4 + 4 * 2 * 4)
    assert mem["logits"] == tokens * 64 * (4 + 4 + 4)
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
    assert mem["fsdp_gather"] == mem["ddp_buckets"] == 0 and mem["cuda_context"] == GIB
    # N_lin = 2 × 9216 + head 2048 = 20480; attention 4·L·s·d_attn = 4096 per token
    assert m.flops["forward"] == tokens * (2 * 20480 + 4096 + 2 * 448)
    assert m.flops["backward"] == tokens * (2 * 20480 + 2 * 4096 + 4 * 448)
    assert m.flops["recompute"] == 0 and not report.gradient_checkpointing
    assert report.total_steps == 10 and report.ok


def test_memory_formula_pinned_with_checkpointing_and_parallelism():
    shape = ModelShape(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, head_dim=8,
                       vocab=64, tie_embeddings=False)  # fmt: skip
    common = dict(base_bytes=1000.0, largest_layer_bytes=300.0, trainable_bytes=40.0,
                  adapted=[], micro_batch=2, seq_len=16, act_bytes=2)  # fmt: skip
    gc = estimate_memory(shape, **common, gradient_checkpointing=True, mode="none", world_size=1)
    # layer inputs L·h·a + one layer A_layer·a (adapters none)
    assert gc.activations == 32 * (2 * 32 * 2 + 480 * 2)
    assert gc.logits == 32 * 64 * (2 + 4 + 4)
    ddp = estimate_memory(shape, **common, gradient_checkpointing=False, mode="ddp", world_size=2)
    assert (ddp.weights, ddp.ddp_buckets, ddp.fsdp_gather) == (1000.0, 40.0, 0.0)
    fsdp = estimate_memory(shape, **common, gradient_checkpointing=False, mode="fsdp", world_size=4)
    assert (fsdp.weights, fsdp.adapter, fsdp.optimizer, fsdp.fsdp_gather) == (250, 10, 20, 600)
    flops = step_flops(shape, linear_params=100, active_params=10, tokens=8, seq_len=4,
                       gradient_checkpointing=True)  # fmt: skip
    assert flops["recompute"] == flops["forward"] == 8 * (200 + 4 * 2 * 4 * 32 + 20)
    with pytest.raises(ValueError, match="mode"):
        estimate_memory(shape, **common, gradient_checkpointing=False, mode="zero3", world_size=1)


def _tiny_config():
    from transformers import AutoConfig

    fields = dict(TINY)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _lora():
    return {"target_modules": ["q_proj", "v_proj"], "rank": 2, "dropout": 0.0}


def test_fast_draws_do_not_change_counts(tmp_path):
    """The randperm stand-in (FourierMoE, PEFT FourierFT) leaves every count as a real build."""
    fourier = {"target_modules": ["q_proj", "down_proj"], "num_experts": 2, "top_k": 1}
    recipe = tiny_recipe(
        tmp_path, adapters={"fouriermoe": fourier, "peft:fourierft": {"n_frequency": 20}},
        compare=["fouriermoe", "peft:fourierft"],
    )  # fmt: skip
    report = dry_run(recipe, ["fouriermoe", "peft:fourierft"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = parameter_table(_tiny_config(), {
            "fouriermoe": FourierMoEConfig(**fourier),
            "peft:fourierft": PeftMethod("fourierft", {"n_frequency": 20,
                                                       "target_modules": ["q_proj", "v_proj"]}),
        })  # fmt: skip
    for m, row in zip(report.methods, rows, strict=True):
        assert (m.total, m.trainable, m.active_per_token) == (
            row["total"], row["trainable"], row["active_per_token"]
        ), m.method  # fmt: skip
    original = torch.randperm
    with fast_meta_draws():
        assert torch.randperm(5).tolist() == [0] * 5
    assert torch.randperm is original


def test_bad_data_settings_are_reported(tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        data={"train": {"reasoning_gym_math": 64, "boolq": 10, "math10k": 5},
              "eval": {"boolq": 0}, "paths": {"piqa": "/nonexistent.jsonl",
                                              "boolq": str(tmp_path / "missing.jsonl")}},
        eval={"max_new_tokens": 60},
    )  # fmt: skip
    report = dry_run(recipe, ["lora"])
    errors = {f.where: f.message for f in report.findings if f.level == "error"}
    assert "0 (all items) but the task is also trained on" in errors["data.eval.boolq"]
    assert "does not exist" in errors["data.paths.boolq"]
    assert "no hub copy" in errors["data.train.math10k"]
    assert "max_position_embeddings 64" in errors["eval.max_new_tokens"]
    assert any(f.where == "data.paths.piqa" and f.level == "warn" for f in report.findings)
    assert not report.ok and "NOT OK" in report.format()


def test_too_few_items_for_one_step_and_too_small_gpu(tmp_path):
    recipe = tiny_recipe(tmp_path, data={"train": {"reasoning_gym_math": 3}},
                         train={"max_steps": None, "num_epochs": 1})  # fmt: skip
    report = dry_run(recipe, ["lora"], nproc=2, gpu_memory_gb=0.5)
    errors = {f.where: f.message for f in report.findings if f.level == "error"}
    assert "fewer than one global batch (4" in errors["data.train"]
    assert report.mode == "ddp" and not report.methods[0].fits
    assert report.methods[0].margin_gb < 0


def test_unknown_model_and_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(RecipeError, match="no config found without the network"):
        resolve_model_config("someone/not-a-model-xyz")
    recipe = tiny_recipe(tmp_path)
    with pytest.raises(RecipeError, match="--nproc"):
        dry_run(recipe, ["lora"], nproc=0)
    with pytest.raises(RecipeError, match="--gpu-memory-gb"):
        dry_run(recipe, ["lora"], gpu_memory_gb=-1)
    with pytest.raises(RecipeError, match="base model is not trained"):
        dry_run(recipe, ["base"])
    with pytest.raises(RecipeError, match="unknown method 'lorra'"):
        dry_run(recipe, ["lorra"])


def test_four_bit_weights_counted_at_nf4_size(tmp_path):
    report = dry_run(tiny_recipe(tmp_path, model={"load_in_4bit": True}), ["lora"])
    # decoder linear weights 2 × 9216 at 0.5625 B; embeddings, norms and the head in float32
    assert report.methods[0].memory["weights"] == 18432 * 0.5625 + (2048 + 160 + 2048) * 4
    assert "4-bit" in report.format()


def test_cli_dry_run_exits_without_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "commonsense", "--dry-run", "--nproc", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["mode"] == "ddp" and [m["method"] for m in out["methods"]] == ["frame"]
    assert main(["compare", "code", "--dry-run", "--methods", "lora,moe-lora"]) == 0
    text = capsys.readouterr().out
    assert "| lora |" in text and "| moe-lora |" in text and "verdict: OK" in text
    assert main(["train", "code", "--dry-run", "--gpu-memory-gb", "10", "--method", "lora"]) == 1
    assert "NO (" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    "method,fields",
    [
        ("lora", {"rank": 8, "dropout": 0.0}),
        ("lora", {"rank": 8, "dropout": 0.05}),
        ("moe-lora", {"num_experts": 4, "top_k": 2, "rank": 4, "dropout": 0.0}),
    ],
)
def test_activation_formula_matches_saved_tensors_of_a_real_forward(method, fields):
    """The activation + logits terms are within 15 % of what autograd really saves (float32,
    SDPA attention, no checkpointing), measured with saved-tensor hooks on a small Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import frame_peft as fp
    from frame_peft.core.config import config_from_dict
    from frame_peft.recipes.dry_run import _adapted_modules

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128,
                      attn_implementation="sdpa")  # fmt: skip
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = fp.inject(LlamaForCausalLM(cfg), config_from_dict(
        {"method": method, "target_modules": targets, **fields}))  # fmt: skip
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    b, s = 2, 64
    ids = torch.randint(0, 512, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids).logits.float()
        torch.nn.functional.cross_entropy(logits.view(-1, 512), ids.view(-1))
    est = estimate_memory(
        ModelShape.from_config(cfg), base_bytes=0, largest_layer_bytes=0, trainable_bytes=0,
        adapted=_adapted_modules(model), micro_batch=b, seq_len=s, act_bytes=4,
        gradient_checkpointing=False, mode="none", world_size=1,
    )  # fmt: skip
    assert sum(saved.values()) == pytest.approx(est.activations + est.logits, rel=0.15)
