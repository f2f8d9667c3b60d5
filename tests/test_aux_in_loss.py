"""The routing (aux) loss inside ``outputs.loss``: transformers' Trainer and TRL's SFTTrainer.

Real ``transformers.Trainer`` and ``trl.SFTTrainer`` train a tiny FRAME Llama a few steps on
in-memory text (character tokenizer, no downloads). A recording hook sees each micro-batch's
cross-entropy, labelled-token count and aux, and the logged loss of every step is checked against
CE + aux recomputed from them.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import frame_peft as fp
from _tokenizer import TINY_TEXTS, char_tokenizer, tiny_text_llama
from frame_peft.core.inject import find_injection, set_aux_in_loss
from frame_peft.training.hf_callbacks import AuxLossTrainerMixin

TEXTS = TINY_TEXTS  # 4 micro-batches of 2: every step accumulates 2


def frame_model(**kw):
    cfg = fp.FrameConfig(target_modules=["q_proj", "v_proj", "down_proj"], num_experts=4, top_k=2,
                         rank=2, dropout=0.0, aux_loss_coef=0.5)  # fmt: skip
    return fp.inject(tiny_text_llama(), cfg, **kw)


def collate(texts: list[str]) -> dict[str, torch.Tensor]:
    tok = char_tokenizer()
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}  # fmt: skip


def ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum"
    )


def test_outputs_loss_is_ce_plus_aux_once_with_labels_in_training_only():
    model = frame_model().train()
    batch = collate(TEXTS[:3])
    out = model(**batch)
    aux = find_injection(model).state.aux_loss()
    n = (batch["labels"][:, 1:] != -100).sum()
    ce = ce_sum(out.logits, batch["labels"]) / n
    assert aux is not None and aux.item() > 1e-3
    torch.testing.assert_close(out.loss, ce + aux)
    tup = model(**batch, return_dict=False)  # tuple outputs: the first element is the loss
    torch.testing.assert_close(tup[0], ce + aux)
    no_labels = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert no_labels.loss is None
    with pytest.warns(RuntimeWarning, match="counts it twice"):
        model(**batch)
        fp.aux_loss(model)
    set_aux_in_loss(model, False)  # the off switch: code that adds fp.aux_loss itself
    torch.testing.assert_close(model(**batch).loss, ce)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(**batch).loss + fp.aux_loss(model), ce + aux)
    assert frame_model(add_aux_to_loss=False).train()(**batch).loss.item() == pytest.approx(
        ce.item(), rel=1e-6
    )
    set_aux_in_loss(model, True)
    torch.testing.assert_close(model.eval()(**batch).loss, ce)  # eval loss stays the pure CE


class Recorder:
    """Per micro-batch: labelled tokens n, CE sum, aux and the loss the model returned."""

    def __init__(self, model):
        self.rows: list[dict[str, float]] = []
        self.inj = find_injection(model)
        model.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, out):
        if not module.training or kwargs.get("labels") is None:
            return
        labels = kwargs["labels"]
        if getattr(out, "log_probs", None) is not None:  # TRL's fused output
            ce, n = -out.log_probs.sum(), out.label_mask.sum()
        else:
            ce, n = ce_sum(out.logits, labels), (labels[:, 1:] != -100).sum()
        row = {"n": float(n), "ce": float(ce), "aux": float(self.inj.state.aux_loss())}
        self.rows.append({**row, "loss": float(out.loss)})


def order_state(opt) -> tuple[int, dict]:
    steps = [int(s["step"]) for s in opt.order.state.values() if "step" in s]
    return max(steps, default=0), steps


def logged_losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def check_run(model, opt, trainer, rec, accum: int, aux_per_token: bool) -> None:
    before = {k: v.clone() for k, v in fp.orders(model).items()}
    trainer.train()
    steps = len(rec.rows) // accum
    assert steps == 3 and order_state(opt)[0] == 3 and opt.steps_taken == 3
    after = fp.orders(model)
    assert any(not torch.allclose(before[k], after[k]) for k in before)  # the orders move
    logged = logged_losses(trainer)
    assert len(logged) == 3
    for step in range(steps):
        rows = rec.rows[step * accum : (step + 1) * accum]
        total = sum(r["n"] for r in rows)
        ce = sum(r["ce"] for r in rows) / total
        if aux_per_token:  # transformers' Trainer: aux weighted by each micro-batch's tokens
            aux = sum(r["aux"] * r["n"] for r in rows) / total
        else:  # the mixin: mean over the micro-batches, as frame-peft's own Trainer
            aux = sum(r["aux"] for r in rows) / accum
        assert aux > 1e-3
        assert logged[step] == pytest.approx(ce + aux, rel=1e-5, abs=1e-6)


def hf_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                gradient_accumulation_steps=2, max_grad_norm=0.0, report_to=[], use_cpu=True,
                disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0,
                remove_unused_columns=False)  # fmt: skip
    return TrainingArguments(**{**base, **kw})


def test_hf_trainer_trains_on_ce_plus_aux_and_the_adapter_reloads(tmp_path):
    from transformers import Trainer

    model = frame_model()
    rec = Recorder(model)
    opt = fp.build_optimizer(model, lr=1e-2, order_lr=5e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = Trainer(model=model, args=hf_args(tmp_path), train_dataset=TEXTS,
                      data_collator=collate, optimizers=(opt, sched))  # fmt: skip
    check_run(model, opt, trainer, rec, accum=2, aux_per_token=True)
    total = rec.rows[0]["n"] + rec.rows[1]["n"]  # the model's loss: over the accumulated tokens
    for r in rec.rows[:2]:
        assert r["loss"] == pytest.approx((r["ce"] + r["aux"] * r["n"]) / total, rel=1e-5)
    fp.save_adapter(model, tmp_path / "adapter")
    reloaded = fp.load_adapter(tiny_text_llama(), tmp_path / "adapter").eval()
    batch = collate(TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)


def sft(tmp_path, cls, model):
    from datasets import Dataset
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, max_grad_norm=0.0, report_to=[],
                     use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1,
                     seed=0, max_length=32, packing=False, dataset_num_proc=None)  # fmt: skip
    opt = fp.build_optimizer(model, lr=1e-2, order_lr=5e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                  processing_class=char_tokenizer(), optimizers=(opt, sched))  # fmt: skip
    return trainer, opt


def test_trl_sft_trainer_with_the_mixin_trains_on_ce_plus_aux(tmp_path):
    pytest.importorskip("trl")
    from trl import SFTTrainer

    class FrameSFTTrainer(AuxLossTrainerMixin, SFTTrainer):
        pass

    model = frame_model()
    rec = Recorder(model)
    trainer, opt = sft(tmp_path, FrameSFTTrainer, model)
    check_run(model, opt, trainer, rec, accum=2, aux_per_token=False)


def test_plain_trl_sft_trainer_reads_no_outputs_loss(tmp_path):
    """TRL 1.x computes its loss from fused log-probs: without the mixin aux is dropped."""
    pytest.importorskip("trl")
    from trl import SFTTrainer

    model = frame_model()
    rec = Recorder(model)
    trainer, _ = sft(tmp_path, SFTTrainer, model)
    trainer.train()
    rows = rec.rows[:2]
    ce = sum(r["ce"] for r in rows) / sum(r["n"] for r in rows)
    assert logged_losses(trainer)[0] == pytest.approx(ce, rel=1e-5)


def test_reentrant_checkpointing_without_aux_gradient_raises():
    """Reentrant checkpointing records the aux terms without grad: a loud error, not a routing
    loss that silently trains nothing; non-reentrant checkpointing keeps the gradient."""
    from _models import tiny_llama

    for reentrant in (True, False):
        model = fp.inject(
            tiny_llama(), fp.MoELoRAConfig(target_modules=["q_proj", "v_proj"], dropout=0.0)
        ).train()
        model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        model.enable_input_require_grads()
        ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
        if reentrant:
            with pytest.raises(RuntimeError, match="use_reentrant': False"):
                model(input_ids=ids, labels=ids)
        else:
            out = model(input_ids=ids, labels=ids)
            assert out.loss.requires_grad and fp.aux_loss(model).requires_grad
