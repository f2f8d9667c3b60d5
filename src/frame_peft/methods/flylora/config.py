"""FlyLoRA config: frozen sparse random A, trainable B, top-k rank selection with a balance bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import AdapterConfig, check_positive_int, is_number


@dataclass
class FlyLoRAConfig(AdapterConfig):
    """FlyLoRA (METHODS.md §4): ``Δy = (α/r) B ((A x) ⊙ m)``, m keeps the top-k of ``|A x + b|``.

    Defaults from METHODS.md: ``rank = 32``, ``top_k = 8``, ``alpha = None`` (= 2·rank),
    ``bias_update_rate = 1e-3``.

    Args:
        top_k: k ranks kept per token, ``1 <= top_k <= rank`` (overridable per module).
            ``top_k == rank`` keeps every rank: a LoRA with a fixed sparse A, mergeable.
        bias_update_rate: u > 0 in ``b ← b + u · sign(mean(c) − c)`` after each training forward.
        seed: seeds the frozen A; each module's generator is seeded by
            ``module_seed(seed, name)`` (:mod:`frame_peft.core.seeds`), so modules differ and a
            rebuild is reproducible. A is also saved.
    """

    method: ClassVar[str] = "flylora"

    rank: int = 32
    top_k: int = 8
    bias_update_rate: float = 1e-3
    seed: int = 0

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
