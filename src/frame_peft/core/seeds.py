"""Per-module seeds for adapters that draw fixed random structure (FourierMoE's frequency
positions, FlyLoRA's sparse projection)."""

from __future__ import annotations

import hashlib


def module_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed from a config ``seed`` and a module ``name``.

    ``int.from_bytes(sha256(f"{seed}:{name}")[:8], "little") & (2⁶³ − 1)``: modules differ, a
    rebuild is reproducible across processes and machines (never Python's salted ``hash``).
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
