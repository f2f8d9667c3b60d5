"""Every runnable example of docs/integrations.md runs, and does what the page says.

A ```python block preceded by ``<!-- test: NAME -->`` (or ``<!-- test: NAME after=OTHER -->``,
which continues OTHER's namespace) is extracted from the page and executed with the names the
page's top promises (``base_model``, ``load_base``, ``tokenizer``, ``texts``, ``tmp_dir``) bound
to a tiny random Llama, its character tokenizer, eight short strings and ``tmp_path``; the page's
``setup`` block (the collator) runs first. Each test then checks the snippet's result: steps
taken, files written, logits equal after reloading. Real transformers / TRL / PEFT / lm-eval, no
downloads.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import frame_peft as fp
from _tokenizer import TINY_TEXTS, char_tokenizer, tiny_text_llama
from frame_peft.core.inject import require_injection

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
MARKER = re.compile(r"<!-- test: (\w+)(?: after=(\w+))? -->\n```python\n(.*?)\n```", re.DOTALL)
TEXTS = TINY_TEXTS


def snippets() -> dict[str, tuple[str | None, str]]:
    """``{name: (after, code)}`` of the page's runnable blocks, in page order."""
    found: dict[str, tuple[str | None, str]] = {}
    for name, after, code in MARKER.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"two snippets named {name!r}"
        found[name] = (after or None, code)
    return found


def run(name: str, tmp_path: Path) -> dict[str, Any]:
    """Runs the prelude, the setup block, then ``name`` (after the snippet it continues)."""
    blocks = snippets()
    chain = [name]
    while blocks[chain[0]][0] is not None:
        chain.insert(0, blocks[chain[0]][0])
    ns: dict[str, Any] = {
        "base_model": tiny_text_llama(),
        "load_base": tiny_text_llama,  # same seed: the same base weights
        "tokenizer": char_tokenizer(),
        "texts": list(TEXTS),
        "tmp_dir": tmp_path,
        "__name__": f"docs_integrations_{name}",
    }
    for block in ["setup", *chain]:
        exec(compile(blocks[block][1], f"docs/integrations.md[{block}]", "exec"), ns)
    return ns


def logits(model: torch.nn.Module, ns: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**ns["collate"](TEXTS[:3])).logits


def test_every_python_block_of_the_page_is_marked_runnable():
    text = DOC.read_text(encoding="utf-8")
    fences = re.findall(r"^```python$", text, re.MULTILINE)
    assert len(fences) == len(snippets())
    assert set(snippets()) == {
        "setup", "peft_api", "peft_hf_trainer", "hf_trainer", "trl_sft", "own_loop",
        "own_loop_manual_aux", "train_py", "lm_eval", "export_peft", "serve_in_process",
        "save_adapter_callback",
    }  # fmt: skip


def test_setup_collator_masks_padding(tmp_path):
    ns = run("setup", tmp_path)
    batch = ns["collate"](TEXTS[1:3])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["attention_mask"] == 0).any()


def test_peft_api(tmp_path):
    ns = run("peft_api", tmp_path)
    model = ns["model"]
    assert type(model).__name__ == "PeftModelForCausalLM" and ns["opt"].steps_taken == 4
    assert max(int(s["step"]) for s in ns["opt"].order.state.values()) == 4  # orders stepped
    meta = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "FRAME_PEFT"
    ref = logits(model, ns)
    for other in (ns["again"], ns["plain"], ns["native"]):
        torch.testing.assert_close(logits(other, ns), ref, rtol=0, atol=0)
    base = ns["load_base"]().eval()
    with torch.no_grad():
        torch.testing.assert_close(ns["base_out"].logits, base(**ns["collate"](TEXTS[:1])).logits)
    assert fp.named_adapters(model) == ["default", "math"]


def test_peft_hf_trainer_checkpoints_are_adapters(tmp_path):
    ns = run("peft_hf_trainer", tmp_path)
    ckpt = tmp_path / "peft_hf" / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file() and (
        ckpt / "adapter_model.safetensors"
    ).is_file()
    assert not (ckpt / "model.safetensors").exists()
    assert ns["opt"].steps_taken == 2
    torch.testing.assert_close(logits(ns["reloaded"], ns), logits(ns["model"], ns), rtol=0, atol=0)
    history = [r for r in ns["trainer"].state.log_history if "loss" in r]
    assert len(history) == 2  # outputs.loss = CE + aux (tests/test_peft_method.py checks the sum)


def test_hf_trainer(tmp_path):
    ns = run("hf_trainer", tmp_path)
    model, opt = ns["model"], ns["opt"]
    assert ns["trainer"].state.global_step == 4 and opt.steps_taken == 4
    assert max(int(s["step"]) for s in opt.order.state.values()) == 4  # the order AdamW stepped
    assert [r["step"] for r in ns["scan"].reports] == [2]  # the scan ran at 0.5 * 4
    assert (tmp_path / "hf" / "scans.jsonl").is_file()
    losses = [r["loss"] for r in ns["trainer"].state.log_history if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    reloaded = fp.load_adapter(tiny_text_llama(), tmp_path / "hf" / "adapter")
    torch.testing.assert_close(logits(reloaded, ns), logits(model, ns))


def test_trl_sft_trainer(tmp_path):
    pytest.importorskip("trl")
    from frame_peft.training.hf_callbacks import AuxLossTrainerMixin

    ns = run("trl_sft", tmp_path)
    assert isinstance(ns["trainer"], AuxLossTrainerMixin)
    assert ns["trainer"].state.global_step == 3 and ns["opt"].steps_taken == 3
    # the mixin's loss is the plain SFT loss + this forward's aux (the routing loss trains)
    model = ns["model"].train()
    batch = next(iter(ns["trainer"].get_train_dataloader()))
    torch.manual_seed(0)  # the same dropout masks in both forwards
    with_aux = ns["trainer"].compute_loss(model, batch)
    aux = require_injection(model).state.aux_loss()
    torch.manual_seed(0)
    plain = super(AuxLossTrainerMixin, ns["trainer"]).compute_loss(model, batch)  # SFTTrainer
    assert aux.item() > 1e-4
    torch.testing.assert_close(with_aux, plain + aux)


def test_own_loop_trains_the_adapters_only(tmp_path):
    ns = run("own_loop", tmp_path)
    model = ns["model"]
    assert ns["opt"].steps_taken == 3 and ns["out"].loss.item() > 0
    fresh = fp.inject(tiny_text_llama(), require_injection(model).config)  # same seeded init
    start = dict(fresh.named_parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, start[n])]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert moved and set(moved) <= set(trainable)  # adapters moved, the base stayed frozen


def test_own_loop_with_the_aux_added_by_hand_counts_it_once(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp.aux_loss warns if out.loss already held it
        ns = run("own_loop_manual_aux", tmp_path)
    model = ns["model"]
    assert ns["opt"].steps_taken == 4
    batch = ns["collate"](TEXTS[:2])
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both forwards
    ce = model(**batch).loss  # still off: the pure cross-entropy
    fp.set_aux_in_loss(model, True)
    torch.manual_seed(0)
    loss = model(**batch).loss
    with pytest.warns(RuntimeWarning, match="counts it twice"):
        torch.testing.assert_close(loss, ce + fp.aux_loss(model))


def test_train_py_runs_our_trainer_in_one_process(tmp_path):
    ns = run("train_py", tmp_path)
    assert ns["result"].global_step == 2
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    reloaded = fp.load_adapter(tiny_text_llama(), adapter)
    torch.testing.assert_close(logits(reloaded, ns), logits(ns["model"], ns))


def test_lm_eval(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'lm-eval==0.4.*'")
    from frame_peft.evaluation import lm_eval_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ns = run("lm_eval", tmp_path)
    metrics = lm_eval_metrics(ns["out"])
    assert set(metrics) == {"toy"} and 0.0 <= metrics["toy"]["acc"] <= 1.0
    assert {"acc", "acc_norm"} <= set(metrics["toy"])
    assert (tmp_path / "my_tasks" / "toy.yaml").is_file()
    assert (tmp_path / "my_tasks" / "toy.jsonl").is_file()


def test_export_peft_serves_the_same_logits(tmp_path):
    pytest.importorskip("peft")
    ns = run("export_peft", tmp_path)
    assert ns["info"]["r"] == 4  # FRAME exports 2 * rank
    with torch.no_grad():
        for p in ns["model"].parameters():
            if p.requires_grad:  # B starts at zero: perturb so the check is not trivial
                p.add_(0.1 * torch.randn_like(p))
    ns["info"] = fp.export_peft_lora(ns["model"], tmp_path / "lora2")
    import peft

    served = peft.PeftModel.from_pretrained(tiny_text_llama(), str(tmp_path / "lora2"))
    assert not torch.allclose(logits(served, ns), logits(tiny_text_llama(), ns), atol=1e-4)
    torch.testing.assert_close(logits(served, ns), logits(ns["model"], ns), atol=1e-5, rtol=1e-5)


def test_routed_mixture_refuses_export_and_serves_in_process(tmp_path):
    ns = run("serve_in_process", tmp_path)
    model, served = ns["model"], ns["served"]
    with pytest.raises(fp.NotMergeableError):
        fp.export_peft_lora(model, tmp_path / "refused")
    assert not (tmp_path / "refused" / "adapter_model.safetensors").exists()
    torch.testing.assert_close(logits(served, ns), logits(model, ns))
    assert ns["ids"].shape[1] == ns["prompt"]["input_ids"].shape[1] + 8


def test_save_adapter_callback_writes_the_adapter_into_each_checkpoint(tmp_path):
    ns = run("save_adapter_callback", tmp_path)
    for step in (1, 2):
        checkpoint = tmp_path / "ckpt" / f"checkpoint-{step}"
        assert (checkpoint / "model.safetensors").is_file()  # the Trainer's full model file
        assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    torch.testing.assert_close(logits(ns["reloaded"], ns), logits(ns["model"], ns))
    first = fp.load_adapter(tiny_text_llama(), tmp_path / "ckpt" / "checkpoint-1" / "adapter")
    assert not torch.allclose(logits(first, ns), logits(ns["model"], ns))  # step 1 != step 2
