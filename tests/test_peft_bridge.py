"""PEFT bridge: PEFT's own baselines, and export of frame-peft adapters in PEFT's LoRA format."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS, perturb
from _models import batch, tiny_gpt2, tiny_llama
from frame_peft import peft_bridge as pb

peft = pytest.importorskip("peft")

warnings.filterwarnings("ignore", category=UserWarning)

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
SMALL = {
    "lora": {},
    "dora": {},
    "adalora": {"total_step": 10, "init_r": 4, "target_r": 2},
    "fourierft": {"n_frequency": 64},
}


def _logits(model, b):
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(pb.PEFT_METHODS))
def test_baseline_wraps_and_trains_only_adapter_params(method, family):
    model = pb.peft_baseline(BUILDERS[family](), method, **SMALL[method])
    assert pb.is_peft_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    marker = {"lora": "lora_", "dora": "lora_", "adalora": "lora_", "fourierft": "fourierft_"}
    assert all(marker[method] in n for n in trainable), sorted(trainable)[:5]
    # The default targets are every linear layer but the head.
    assert not any("lm_head" in n for n in trainable)
    assert any("mlp" in n for n in trainable) and any("attn" in n for n in trainable)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):  # two steps: LoRA's B starts at zero, A moves at the second step
        out = model(**batch())
        loss = out.loss + pb.aux_loss(model)
        loss.backward()
        opt.step()
        pb.after_optimizer_step(model, step)
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    counts = pb.count_parameters(model)
    named = model.named_parameters()
    assert counts["trainable"] == sum(p.numel() for n, p in named if n in trainable)
    assert counts["active_per_token"] == counts["trainable"]
    assert float(pb.aux_loss(model)) == 0.0


def test_baseline_errors():
    with pytest.raises(ValueError, match=r"unknown PEFT baseline 'vera'.*fourierft.*dora"):
        pb.peft_baseline(tiny_llama(), "vera")
    with pytest.raises(TypeError, match=r"peft_baseline\('dora'\).*not_a_field"):
        pb.peft_baseline(tiny_llama(), "dora", not_a_field=3)
    with pytest.raises(ValueError, match="total_step"):
        pb.peft_baseline(tiny_llama(), "adalora")
    injected = fp.inject(tiny_llama(), CONFIGS["lora"]("all-linear"))
    with pytest.raises(ValueError, match="already has frame-peft adapters"):
        pb.peft_baseline(injected, "lora")


def test_generic_helpers_on_frame_peft_model():
    model = fp.inject(tiny_llama(), CONFIGS["frame"]("all-linear"))
    assert not pb.is_peft_model(model)
    assert pb.count_parameters(model) == fp.count_parameters(model)
    model(**batch())
    assert torch.equal(pb.aux_loss(model), fp.aux_loss(model))


def _one_expert(name, targets):
    if name == "lora":
        return CONFIGS["lora"](targets)
    return fp.FrameConfig(target_modules=targets, num_experts=1, top_k=1, rank=2, dropout=0.0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["lora", "frame"])
def test_export_roundtrip_exact(name, family, tmp_path):
    model = fp.inject(BUILDERS[family](), _one_expert(name, "all-linear"))
    perturb(model, std=0.3)
    if name == "lora":  # move A too, so the test sees both factors
        with torch.no_grad():
            for layer in fp.adapted_layers(model).values():
                layer.adapter.A.mul_(1.5)
    b = batch()
    ref = _logits(model, b)
    info = pb.export_peft_lora(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] == (family == "gpt2")
    assert set(info["rank"].values()) == {4}  # LoRA r = 4; FRAME r = 2 -> real rank 2r = 4
    assert info["max_relative_error"] < 1e-5
    loaded = peft.PeftModel.from_pretrained(BUILDERS[family](), str(tmp_path)).eval()
    got = _logits(loaded, b)
    base = _logits(BUILDERS[family](), b)
    assert (ref - base).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_export_frame_rank_really_2r(tmp_path):
    """FRAME's one-expert ΔW needs the 2r effective factors: rank r loses information."""
    model = fp.inject(tiny_llama(), _one_expert("frame", ["q_proj"]))
    perturb(model, std=0.3)
    full = pb.export_peft_lora(model, tmp_path / "full")
    half = pb.export_peft_lora(model, tmp_path / "half", svd_rank=2)
    assert full["max_relative_error"] < 1e-5
    assert min(half["relative_error"].values()) > 1e-3


def test_export_refuses_routed_mixtures(tmp_path):
    for name in ("moe-lora", "frame", "hydralora", "flylora"):
        model = fp.inject(tiny_llama(), CONFIGS[name](["q_proj"]))
        for svd_rank in (None, 4):
            with pytest.raises(fp.NotMergeableError, match=r"no single ΔW|routed"):
                pb.export_peft_lora(model, tmp_path / name, svd_rank=svd_rank)
        assert not (tmp_path / name).exists()


def test_export_svd_truncation_error_reported(tmp_path):
    model = fp.inject(tiny_llama(), CONFIGS["lora"]("all-linear"))  # r = 4
    perturb(model, std=0.3)
    b = batch()
    ref = _logits(model, b)
    effect = torch.linalg.vector_norm(ref - _logits(tiny_llama(), b))
    gaps, errs = [], []
    for k in (4, 2, 1):
        info = pb.export_peft_lora(model, tmp_path / str(k), svd_rank=k)
        loaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / str(k))).eval()
        gaps.append((torch.linalg.vector_norm(_logits(loaded, b) - ref) / effect).item())
        errs.append(info["max_relative_error"])
        # The reported error is the error of what PEFT actually loaded.
        for name, layer in fp.adapted_layers(model).items():
            lora = loaded.base_model.model.get_submodule(name)
            got = lora.get_delta_weight("default").double()
            want = layer.adapter.delta_weight().double()
            err = (torch.linalg.matrix_norm(got - want) / torch.linalg.matrix_norm(want)).item()
            assert err == pytest.approx(info["relative_error"][name], abs=1e-6)
    # Full rank is exact; more truncation, larger ΔW error and larger logits gap (the gap is
    # relative to the adapter's whole effect on the logits, the same scale as the ΔW error).
    assert errs[0] < 1e-6 and gaps[0] < 1e-5
    assert 0 < errs[1] < errs[2] and gaps[0] < gaps[1] < gaps[2]
    for err, gap in zip(errs[1:], gaps[1:], strict=True):
        assert err / 3 < gap < 3 * err, (errs, gaps)
    # Adapters with a fixed ΔW but no stored factors need svd_rank.
    fourier = fp.FourierMoEConfig(
        target_modules=["q_proj"], num_experts=1, top_k=1, num_coefficients=16, dropout=0.0
    )
    model = fp.inject(tiny_llama(), fourier)
    with pytest.raises(ValueError, match="svd_rank"):
        pb.export_peft_lora(model, tmp_path / "f")
    info = pb.export_peft_lora(model, tmp_path / "f", svd_rank=32)
    assert info["mode"] == "svd" and info["max_relative_error"] < 1e-5


# -- What serving readers see ---------------------------------------------------------------------


def _served_deltas(path, rule):
    """ΔW per module as a server reads the export: the top-level ``r`` and ``lora_alpha`` only
    (``rank_pattern``/``alpha_pattern`` are ignored, as vLLM's PEFTHelper drops every field it
    does not know). ``rule="vllm"``: scaling = lora_alpha / r, one value for all modules, and a
    module's rank may not exceed r (max_lora_rank checks r, buffers are r wide);
    ``rule="llama.cpp"``: scaling = lora_alpha / <the module's tensor rank>."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    assert not cfg.get("use_rslora") and not cfg.get("use_dora")
    tensors = load_file(str(path / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = tensors[key.replace("lora_A", "lora_B")]
        if rule == "vllm":
            assert a.shape[0] <= r and b.shape[1] <= r, (name, a.shape, r)
            scaling = alpha / r
        else:
            scaling = alpha / a.shape[0]
        out[name] = scaling * (b.double() @ a.double())
    return out


def _rel(got, want):
    return (torch.linalg.matrix_norm(got - want.double()) / torch.linalg.matrix_norm(want)).item()


_OVERRIDES = {
    # LoRA: rank 4, α = 8 by default; q_proj rank 2 and the MLP rank 6, each with its own α.
    "lora": fp.LoRAConfig(
        target_modules="all-linear",
        rank=4,
        dropout=0.0,
        overrides={"q_proj": {"rank": 2, "alpha": 7.0}, "mlp": {"rank": 6, "alpha": 3.0}},
    ),
    # One-expert FRAME exports rank 2r: 4 by default, 6 for v_proj (with its own α), 2 for MLP.
    "frame": fp.FrameConfig(
        target_modules="all-linear",
        num_experts=1,
        top_k=1,
        rank=2,
        dropout=0.0,
        overrides={"v_proj": {"rank": 3, "alpha": 1.5}, "mlp": {"rank": 1, "alpha": 5.0}},
    ),
}


@pytest.mark.parametrize("name", ["lora", "frame"])
def test_export_per_module_overrides_served_exactly(name, tmp_path):
    """Per-module ranks and α: the default export has one r = lora_alpha = max rank and no
    patterns, so PEFT, a vLLM-style reader and a llama.cpp-style reader all get frame-peft's ΔW."""
    model = fp.inject(tiny_llama(), _OVERRIDES[name])
    perturb(model, std=0.3)
    layers = fp.adapted_layers(model)
    scales = {layer.adapter.config.scale for layer in layers.values()}
    assert len(scales) == 3  # the overrides really give the modules different scales
    info = pb.export_peft_lora(model, tmp_path)
    want_ranks = {"lora": {2, 4, 6}, "frame": {2, 4, 6}}[name]
    assert set(info["rank"].values()) == want_ranks and info["r"] == 6
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 6
    assert not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
    assert info["max_relative_error"] < 1e-5
    for rule in ("vllm", "llama.cpp"):
        served = _served_deltas(tmp_path, rule)
        assert set(served) == set(layers)
        for module, layer in layers.items():
            assert _rel(served[module], layer.adapter.delta_weight().detach()) < 1e-5, module
    b = batch()
    ref = _logits(model, b)
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    assert (ref - _logits(tiny_llama(), b)).abs().max() > 1e-2
    torch.testing.assert_close(_logits(loaded, b), ref, atol=1e-5, rtol=1e-5)


def test_export_without_padding_is_peft_only(tmp_path):
    """uniform_rank=False keeps each module's rank (rank_pattern, alpha_pattern = rank: scaling
    1): exact in PEFT and under vLLM's one-scaling rule, wrong under llama.cpp's per-tensor rule
    (which is why padding is the default)."""
    model = fp.inject(tiny_llama(), _OVERRIDES["lora"])
    perturb(model, std=0.3)
    padded = pb.export_peft_lora(model, tmp_path / "padded")
    info = pb.export_peft_lora(model, tmp_path / "own", uniform_rank=False)
    cfg = json.loads((tmp_path / "own" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 6
    assert cfg["rank_pattern"] and cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert set(cfg["rank_pattern"].values()) == {2, 4}
    size = {
        p: (tmp_path / p / "adapter_model.safetensors").stat().st_size for p in ("padded", "own")
    }
    assert size["own"] < size["padded"]  # the cost of padding
    assert info["rank"] == padded["rank"] and info["max_relative_error"] < 1e-5
    b = batch()
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "own")).eval()
    torch.testing.assert_close(_logits(loaded, b), _logits(model, b), atol=1e-5, rtol=1e-5)
    layers = fp.adapted_layers(model)
    vllm = _served_deltas(tmp_path / "own", "vllm")
    llama_cpp = _served_deltas(tmp_path / "own", "llama.cpp")
    for module, layer in layers.items():
        want = layer.adapter.delta_weight().detach()
        assert _rel(vllm[module], want) < 1e-5
        if info["rank"][module] != 6:
            assert _rel(llama_cpp[module], want) > 0.1


def test_export_svd_served_exactly(tmp_path):
    """SVD export of modules with different scales: the scale is folded into B, so one
    r = lora_alpha serves every module, and the served ΔW is the truncation PEFT loads."""
    model = fp.inject(tiny_llama(), _OVERRIDES["lora"])
    perturb(model, std=0.3)
    info = pb.export_peft_lora(model, tmp_path, svd_rank=3)
    assert info["mode"] == "svd" and info["r"] == 3
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 3 and not cfg.get("alpha_pattern")
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    served = _served_deltas(tmp_path, "vllm")
    for module, layer in fp.adapted_layers(model).items():
        want = layer.adapter.delta_weight().detach()
        peft_delta = loaded.base_model.model.get_submodule(module).get_delta_weight("default")
        torch.testing.assert_close(served[module], peft_delta.double(), atol=1e-6, rtol=1e-5)
        assert _rel(served[module], want) == pytest.approx(info["relative_error"][module], abs=1e-6)
        # q_proj (rank 2) is exact at k = 3; the rank-4 and rank-6 modules are truncated
        assert (info["relative_error"][module] < 1e-5) == (layer.adapter.config.rank <= 3)
