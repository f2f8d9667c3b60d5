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
