"""FlyLoRA config: frozen sparse random A, trainable B, top-k rank selection with a balance bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import AdapterConfig, check_positive_int, is_number

SELECTIONS = ("signed", "abs")
NONZEROS_RULES = ("integer_ratio", "floor", "round")


@dataclass
class FlyLoRAConfig(AdapterConfig):
    """FlyLoRA (docs/methods.md §4.4): ``Δy = (α/r) B ((A x) ⊙ m)``, m keeps k of the r ranks.

    Defaults follow the training code the authors ran for the paper's numbers (GitHub
    gfyddha/FlyLoRA, ``peft/src/peft/tuners/lora/layer.py`` and ``scripts/run_mmlu.sh``):
    ``rank = 32``, ``top_k = 8``, ``alpha = None`` (= 2·rank = 64), ``bias_update_rate = 1e-3``
    (the script's ``--bias_u 0.001``), ``selection = "signed"``, ``nonzeros_rule =
    "integer_ratio"``, ``detach_input = True``. Their minimal ``flylora.py`` is reachable with
    ``selection="abs", nonzeros_rule="floor"``; this library's earlier FlyLoRA with
    ``selection="abs", nonzeros_rule="round", detach_input=False``.

    Args:
        top_k: k ranks kept per token, ``1 <= top_k <= rank`` (overridable per module).
            ``top_k == rank`` keeps every rank: a LoRA with a fixed sparse A, mergeable.
        bias_update_rate: u > 0 in ``b ← b + u · sign(mean(c) − c)`` after each training forward.
        seed: seeds the frozen A; each module's generator is seeded by
            ``module_seed(seed, name)`` (:mod:`frame_peft.core.seeds`), so modules differ and a
            rebuild is reproducible. A is also saved.
        selection: the score whose top-k is kept per token: ``"signed"`` (default) ``A x + b``,
            as the authors' training code; ``"abs"`` ``|A x + b|``, as their minimal
            ``flylora.py``.
        nonzeros_rule: non-zeros p per row of A (clamped to [1, d_in]): ``"integer_ratio"``
            (default) ``p = d_in // (r // k)``, as the training code's ``"sparse"`` init;
            ``"floor"`` ``p = ⌊d_in · k / r⌋``, as ``flylora.py``; ``"round"``
            ``p = round(d_in · k / r)``, this library's earlier rule.
        detach_input: ``True`` (default): ``A x`` is computed without gradient, so the update
            sends no gradient to the layer input x (B still trains), as the training code's
            ``torch.no_grad()`` around ``lora_A``; ``False``: gradient reaches x through the kept
            ranks.
    """

    method: ClassVar[str] = "flylora"

    rank: int = 32
    top_k: int = 8
    bias_update_rate: float = 1e-3
    seed: int = 0
    selection: str = "signed"
    nonzeros_rule: str = "integer_ratio"
    detach_input: bool = True

    def validate(self) -> None:
        super().validate()
        check_positive_int("top_k", self.top_k)
        if self.top_k > self.rank:
            raise ValueError(
                f"top_k ({self.top_k}) cannot exceed rank ({self.rank}): FlyLoRA keeps k of "
                "the r ranks per token; lower top_k or raise rank"
            )
        u = self.bias_update_rate
        if not is_number(u) or not u > 0:
            raise ValueError(f"bias_update_rate must be a finite number > 0, got {u!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {list(SELECTIONS)}, got {self.selection!r}")
        if self.nonzeros_rule not in NONZEROS_RULES:
            raise ValueError(
                f"nonzeros_rule must be one of {list(NONZEROS_RULES)}, got {self.nonzeros_rule!r}"
            )
        if not isinstance(self.detach_input, bool):
            raise ValueError(f"detach_input must be True or False, got {self.detach_input!r}")
