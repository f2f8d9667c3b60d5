"""FlyLoRA config: frozen sparse random A, trainable B, top-k rank selection with a balance bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...core.config import AdapterConfig, _check_positive_int


@dataclass
class FlyLoRAConfig(AdapterConfig):
    """FlyLoRA (METHODS.md §4): ``Δy = (α/r) B ((A x) ⊙ m)``, m keeps the top-k of ``|A x + b|``.

    Defaults from METHODS.md: ``rank = 32``, ``top_k = 8``, ``alpha = None`` (= 2·rank),
    ``bias_update_rate = 1e-3``.

    Args:
        top_k: k ranks kept per token, ``1 <= top_k <= rank`` (overridable per module).
            ``top_k == rank`` keeps every rank: a LoRA with a fixed sparse A, mergeable.
        bias_update_rate: u > 0 in ``b ← b + u · sign(mean(c) − c)`` after each training forward.
        seed: seeds the frozen A; each module's generator is seeded by ``seed`` and a stable hash
            of its name, so modules differ and a rebuild is reproducible. A is also saved.
    """

    method: ClassVar[str] = "flylora"

    rank: int = 32
    top_k: int = 8
    bias_update_rate: float = 1e-3
    seed: int = 0

    def validate_settings(self, s: dict[str, Any]) -> None:
        super().validate_settings(s)
        _check_positive_int("top_k", s["top_k"])
        if s["top_k"] > s["rank"]:
            raise ValueError(
                f"top_k ({s['top_k']}) cannot exceed rank ({s['rank']}): FlyLoRA keeps k of "
                "the r ranks per token; lower top_k or raise rank"
            )
        u = s["bias_update_rate"]
        if isinstance(u, bool) or not isinstance(u, int | float) or not 0 < u < float("inf"):
            raise ValueError(f"bias_update_rate must be a finite number > 0, got {u!r}")
        seed = s["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
