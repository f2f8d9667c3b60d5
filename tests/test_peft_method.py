"""Every frame-peft method through PEFT's own API (the real PEFT and transformers, tiny models).

``fp.to_peft_config`` + ``peft.get_peft_model`` / ``save_pretrained`` /
``PeftModel.from_pretrained`` / transformers' ``load_adapter`` / named adapters /
``disable_adapter`` / ``merge_and_unload``, and one file format shared with ``fp.save_adapter``
/ ``fp.load_adapter``.
"""

from __future__ import annotations

import json

import pytest
import torch

import frame_peft as fp
from _adapters import CONFIGS, inputs, perturb, randomise_saved_state
from _format1 import save_format1
from _models import MODELS, batch

peft = pytest.importorskip("peft")
from frame_peft import peft_method  # noqa: E402  (after the importorskip)

METHODS = list(CONFIGS)


def trainable_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def trained_peft_model(method: str, model_name: str = "llama", seed: int = 0):
    """A PEFT model of ``method`` whose adapter is not at its (identity) init."""
    model = peft.get_peft_model(
        MODELS[model_name](seed), fp.to_peft_config(CONFIGS[method]("all-linear"))
    )
    torch.manual_seed(seed)
    perturb(model)
    randomise_saved_state(model)
    return model.eval()


def test_registration_is_in_peft_tables():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    assert peft_method.available()
    assert PeftType("FRAME_PEFT") is PeftType.FRAME_PEFT
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.FRAME_PEFT] is peft_method.FramePeftConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FRAME_PEFT] is peft_method.FramePeftTuner
    assert peft_method.register()  # idempotent


def test_registration_happens_when_peft_is_imported_after_frame_peft():
    import subprocess
    import sys

    code = (
        "import sys, frame_peft; assert 'peft' not in sys.modules; "
        "from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING as T; "
        "from peft.utils.peft_types import PeftType; "
        "print(T[PeftType.FRAME_PEFT].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FramePeftTuner"


def test_registration_survives_an_availability_check_before_the_import():
    """transformers' is_peft_available() asks importlib for peft's spec without importing it."""
    import subprocess
    import sys

    code = (
        "import importlib.util, frame_peft; assert importlib.util.find_spec('peft'); "
        "import peft.mapping as M; from peft.utils.peft_types import PeftType; "
        "print(M.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FRAME_PEFT].__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FramePeftTuner"


def test_trl_sft_trainer_takes_a_frame_peft_config(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from frame_peft.training.hf_callbacks import AuxLossTrainerMixin
    from test_docs_integrations import TEXTS, char_tokenizer, tiny_text_llama

    class FrameSFTTrainer(AuxLossTrainerMixin, trl.SFTTrainer):
        pass

    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, max_length=64,
        packing=False, save_strategy="steps", save_steps=2, report_to="none", bf16=False,
    )  # fmt: skip
    cfg = fp.to_peft_config(fp.FrameConfig(target_modules=["q_proj", "v_proj"], rank=2))
    trainer = FrameSFTTrainer(
        model=tiny_text_llama(), args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
        processing_class=char_tokenizer(), peft_config=cfg,
    )  # fmt: skip
    assert type(trainer.model).__name__ == "PeftModelForCausalLM"
    trainer.train()
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    again = peft.PeftModel.from_pretrained(tiny_text_llama(), ckpt).eval()
    ids = char_tokenizer()(list(TEXTS[:2]), padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, trainer.model.eval()(**ids).logits)


@pytest.mark.parametrize("method", METHODS)
def test_get_peft_model_save_and_reload_everywhere(method, tmp_path):
    model = trained_peft_model(method)
    assert type(model).__name__ == "PeftModelForCausalLM"
    ref = logits(model)
    base_ref = logits(MODELS["llama"]())
    assert (ref - base_ref).abs().max() > 1e-4
    with model.disable_adapter():
        assert torch.equal(logits(model), base_ref)
    assert torch.equal(logits(model), ref)  # re-enabled
    model.save_pretrained(tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "FRAME_PEFT" and meta["frame_peft"]["format_version"] == 2

    again = peft.PeftModel.from_pretrained(MODELS["llama"](), tmp_path / "ad").eval()
    assert torch.equal(logits(again), ref)
    native = fp.load_adapter(MODELS["llama"](), tmp_path / "ad").eval()
    assert torch.equal(logits(native), ref)
    hf = MODELS["llama"]()
    hf.load_adapter(str(tmp_path / "ad"))
    assert torch.equal(logits(hf.eval()), ref)


def test_loaded_adapters_are_frozen_unless_trainable(tmp_path):
    """PEFT's semantics: from_pretrained / load_adapter give frozen adapters unless
    is_trainable=True."""
    trained_peft_model("frame").save_pretrained(tmp_path / "ad")
    frozen = peft.PeftModel.from_pretrained(MODELS["llama"](), tmp_path / "ad")
    assert not trainable_params(frozen)
    hf = MODELS["llama"]()
    hf.load_adapter(str(tmp_path / "ad"))
    assert not trainable_params(hf)
    live = peft.PeftModel.from_pretrained(MODELS["llama"](), tmp_path / "ad", is_trainable=True)
    assert trainable_params(live) and all(
        "frame_peft_adapters.default." in n for n, p in live.named_parameters() if p.requires_grad
    )


@pytest.mark.parametrize("model_name", ["qwen2", "gpt2"])
def test_other_families_round_trip(model_name, tmp_path):
    model = trained_peft_model("frame", model_name)
    ref = logits(model)
    model.save_pretrained(tmp_path / "ad")
    again = peft.PeftModel.from_pretrained(MODELS[model_name](), tmp_path / "ad").eval()
    assert torch.equal(logits(again), ref)


def test_native_save_loads_in_peft_and_transformers(tmp_path):
    model = fp.inject(MODELS["llama"](), CONFIGS["frame"]("all-linear"))
    perturb(model)
    model.eval()
    ref = logits(model)
    fp.save_adapter(model, tmp_path / "ad")
    assert torch.equal(
        logits(peft.PeftModel.from_pretrained(MODELS["llama"](), tmp_path / "ad")), ref
    )
    hf = MODELS["llama"]()
    hf.load_adapter(str(tmp_path / "ad"))
    assert torch.equal(logits(hf.eval()), ref)


def test_peft_and_native_files_are_the_same(tmp_path):
    from safetensors.torch import load_file

    model = trained_peft_model("moe-lora")
    model.save_pretrained(tmp_path / "peft")
    fp.save_adapter(model.base_model.model, tmp_path / "native")
    a = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    b = load_file(tmp_path / "native" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["frame_peft"]
    mb = json.loads((tmp_path / "native" / "adapter_config.json").read_text())["frame_peft"]
    for key in ("config", "config_sha256", "weights_sha256", "modules", "format_version"):
        assert ma[key] == mb[key], key


def test_named_adapters_switch_save_and_delete(tmp_path):
    model = trained_peft_model("frame")
    ref = logits(model)
    model.add_adapter("other", fp.to_peft_config(CONFIGS["moe-lora"]("all-linear")))
    assert torch.equal(logits(model), ref)  # the new adapter is parked
    model.set_adapter("other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    with torch.no_grad():
        for p in trainable_params(model):
            p.add_(0.05 * torch.randn_like(p))
    other = logits(model)
    assert (other - ref).abs().max() > 1e-4
    model.set_adapter("default")
    assert torch.equal(logits(model), ref)
    model.save_pretrained(tmp_path / "ad")
    loaded = peft.PeftModel.from_pretrained(MODELS["llama"](), tmp_path / "ad").eval()
    loaded.load_adapter(tmp_path / "ad" / "other", adapter_name="other")
    assert torch.equal(logits(loaded), ref)
    loaded.set_adapter("other")
    assert torch.equal(logits(loaded), other)
    loaded.set_adapter("default")
    loaded.delete_adapter("other")
    assert fp.named_adapters(loaded.base_model.model) == ["default"]
    with pytest.raises(ValueError, match="same modules"):
        model.add_adapter("few", fp.to_peft_config(CONFIGS["lora"](["q_proj"])))


def test_print_trainable_parameters_and_counts(capsys):
    model = peft.get_peft_model(MODELS["llama"](), fp.to_peft_config(CONFIGS["lora"]("all-linear")))
    model.print_trainable_parameters()
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == fp.count_parameters(model.base_model.model)["trainable"] > 0
    assert f"trainable params: {trainable:,}" in capsys.readouterr().out


def test_bridge_counts_and_aux_of_a_frame_peft_model_are_frame_peft_ones():
    """peft_bridge (used by frame-peft's Trainer and evaluation) must not treat a FRAME_PEFT
    PeftModel as a PEFT baseline: that gave zero routing loss and active = trainable."""
    from frame_peft import peft_bridge

    model = peft.get_peft_model(
        MODELS["llama"](), fp.to_peft_config(CONFIGS["frame"]("all-linear"))
    ).train()
    counts = peft_bridge.count_parameters(model)
    assert counts == fp.count_parameters(model)
    assert counts["active_per_token"] < counts["trainable"]  # k of E experts per token
    fp.set_aux_in_loss(model, False)
    model(**inputs())
    aux = peft_bridge.aux_loss(model)
    assert aux.item() > 0 and torch.equal(aux, fp.aux_loss(model))


def test_merge_and_unload_exact_for_lora_and_refused_for_routed():
    model = trained_peft_model("lora")
    ref = logits(model)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(merged), ref, rtol=1e-5, atol=1e-5)
    routed = trained_peft_model("frame")
    with pytest.raises(fp.NotMergeableError):
        routed.merge_and_unload()


def test_training_through_peft_adds_aux_once_and_uses_grouped_transforms():
    model = peft.get_peft_model(
        MODELS["llama"](), fp.to_peft_config(fp.FrameConfig(target_modules="all-linear"))
    )
    model.train()
    seen = {}
    inner = model.base_model.model
    state = fp.core.inject.require_injection(inner).state
    hook = inner.register_forward_hook(
        lambda m, a, o: seen.update(scratch=dict(state.current.scratch))
    )
    out = model(**batch())
    hook.remove()
    assert seen["scratch"], "FRAME's grouped transforms did not run on the PEFT path"
    with torch.no_grad(), fp.routing_context(inner):
        pass
    plain = model.base_model.model
    fp.set_aux_in_loss(plain, False)
    ce = model(**batch()).loss
    fp.set_aux_in_loss(plain, True)
    torch.testing.assert_close(out.loss, ce + fp.aux_loss(plain), rtol=1e-6, atol=1e-6)


# -- integrity of the one format ---------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = trained_peft_model("frame")
    model.save_pretrained(tmp_path / "ad")
    return tmp_path / "ad", logits(model)


def _edit(path, fn):
    meta = json.loads((path / "adapter_config.json").read_text())
    fn(meta)
    (path / "adapter_config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["frame_peft"]["config"].update(alpha=99.0), r"fields: \['alpha'\]"),
        (lambda m: m["frame_peft"]["config"].update(top_k=1), r"fields: \['top_k'\]"),
        (lambda m: m["frame_peft"]["config"].update(transform="exact"), "transform"),
        (lambda m: m["frame_peft"].pop("weights_sha256"), "weights_sha256 is missing"),
        (lambda m: m["frame_peft"].pop("config_sha256"), "config_sha256 is missing"),
    ],
)
def test_edited_config_is_refused_by_every_loader(saved, edit, message, monkeypatch):
    path, _ = saved
    _edit(path, edit)
    with pytest.raises(fp.AdapterIntegrityError, match=message):
        fp.load_adapter(MODELS["llama"](), path)
    with pytest.raises(fp.AdapterIntegrityError, match=message):
        peft.PeftModel.from_pretrained(MODELS["llama"](), path)
    if "weights_sha256" not in message:  # transformers reads the weights itself
        with pytest.raises(fp.AdapterIntegrityError, match=message):
            MODELS["llama"]().load_adapter(str(path))
    with pytest.warns(UserWarning, match="allow_edited"):
        fp.load_adapter(MODELS["llama"](), path, allow_edited=True)
    monkeypatch.setenv(peft_method.ALLOW_EDITED_ENV, "1")
    with pytest.warns(UserWarning, match="loading it anyway"):
        peft.PeftModel.from_pretrained(MODELS["llama"](), path)


def test_a_newer_format_is_refused_by_peft_too(saved):
    path, _ = saved
    _edit(path, lambda m: m["frame_peft"].update(format_version=3))
    with pytest.raises(ValueError, match="format_version 3"):
        peft.PeftModel.from_pretrained(MODELS["llama"](), path)
    with pytest.raises(ValueError, match="format_version 3"):
        fp.load_adapter(MODELS["llama"](), path)


def test_a_deleted_block_is_refused(saved):
    path, _ = saved
    _edit(path, lambda m: m.pop("frame_peft"))
    with pytest.raises(ValueError, match="'frame_peft' block"):
        fp.load_adapter(MODELS["llama"](), path)


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"text"'])
def test_a_config_that_is_not_an_object_is_refused(saved, content):
    path, _ = saved
    (path / "adapter_config.json").write_text(content)
    with pytest.raises(ValueError, match="not an adapter config"):
        fp.load_adapter(MODELS["llama"](), path)


@pytest.mark.parametrize("bad", ["int64", "nan"])
def test_bad_tensors_are_refused_even_with_a_matching_hash(saved, bad):
    from safetensors.torch import load_file, save_file

    from frame_peft.core.adapter_format import tensors_sha256

    path, _ = saved
    tensors = load_file(path / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith(".B"))
    tensors[key] = (
        tensors[key].to(torch.int64) if bad == "int64" else torch.full_like(tensors[key], torch.nan)
    )
    save_file(tensors, path / "adapter_model.safetensors")
    _edit(path, lambda m: m["frame_peft"].update(weights_sha256=tensors_sha256(tensors)))
    model = MODELS["llama"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"torch\.int64|NaN"):
        fp.load_adapter(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"torch\.int64|NaN"):
        peft.PeftModel.from_pretrained(MODELS["llama"](), path)


def test_format1_folders_still_load_with_a_deprecation_note(tmp_path):
    model = fp.inject(MODELS["llama"](), CONFIGS["frame"]("all-linear"))
    perturb(model)
    ref = logits(model.eval())
    old = save_format1(model, tmp_path / "old")
    with pytest.warns(FutureWarning, match="format 1"):
        loaded = fp.load_adapter(MODELS["llama"](), old)
    assert torch.equal(logits(loaded.eval()), ref)
    unhashed = save_format1(model, tmp_path / "unhashed", hashed=False)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="no weights_sha256"):
        fp.load_adapter(MODELS["llama"](), unhashed)
