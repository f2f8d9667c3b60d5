"""LoRA config: ``Δy = (α/r) B A x`` on each target module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import AdapterConfig


@dataclass
class LoRAConfig(AdapterConfig):
    """Plain LoRA (docs/methods.md §4). Defaults: r = 8, α = 2r, dropout 0.05, all linear layers."""

    method: ClassVar[str] = "lora"
