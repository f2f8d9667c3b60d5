"""The training objective: token-summed causal-LM loss, and model-specific extra terms.

For one optimizer step with micro-batches ``m`` on ranks ``q`` (``A`` micro-batches per rank,
``W`` ranks) the Trainer minimises::

    L = Σ_{q,m} CE_sum(q, m) / N  +  (1 / (A·W)) Σ_{q,m} (aux(q, m) + extra(q, m))

``CE_sum`` is the summed next-token cross-entropy over labelled positions (``labels != -100``,
shifted by one as in Hugging Face causal LMs) and ``N`` the number of labelled positions of the
whole global batch (all micro-batches, all ranks; Hugging Face's ``num_items_in_batch``). So
accumulation 2 × 2 and DDP 2 × 2 both equal one batch of 4. Each rank backpropagates
``W · CE_sum / N + (aux + extra) / A`` per micro-batch; data parallelism averages over ranks.

``aux`` is ``frame_peft.peft_bridge.aux_loss(model)`` of that micro-batch's forward (the
routing losses, already scaled by each method's coefficient), so the aux term is the *mean of
per-micro-batch* balance losses. A balance loss is not linear in the batch (``f_e · P_e`` is a
product of two batch means), so this mean is not the balance loss of the union batch: splitting a
batch differently changes the aux term slightly (the LM term is unaffected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..peft_bridge import is_peft_model

IGNORE_INDEX = -100


def count_labelled(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions that contribute to the causal-LM loss: ``labels[:, 1:] != -100``."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (float32) of ``logits`` (B, S, V) against ``labels`` (B, S).

    Position ``t`` of ``logits`` predicts ``labels[:, t + 1]``; ``-100`` labels are ignored.
    """
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab),
        labels[:, 1:].reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def extra_model_loss(model: nn.Module) -> torch.Tensor | None:
    """Loss terms a model adds to ``outputs.loss`` itself, which the Trainer's own LM loss
    would otherwise lose: PEFT AdaLoRA's orthogonality penalty. ``None`` for every other model.

    AdaLoRA (``peft.tuners.adalora.AdaLoraModel.forward``) adds
    ``orth_reg_weight · mean_n ‖P_n P_nᵀ − I‖_F`` over its ``lora_A`` (``P P^T``) and ``lora_B``
    (``P^T P``) matrices whenever ``labels`` are passed; the Trainer never passes labels (it
    normalises the LM loss itself), so it recomputes the same term here.
    """
    if not is_peft_model(model):
        return None
    peft_model = model if hasattr(model, "base_model") else model.module
    tuner = peft_model.base_model
    if type(tuner).__name__ != "AdaLoraModel":
        return None
    name = tuner.trainable_adapter_name
    weight = tuner.peft_config[name].orth_reg_weight
    terms = []
    for n, p in tuner.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n and p.numel() > 0:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            eye = torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov - eye))
    if not terms:
        return None
    return weight * torch.stack(terms).mean()
