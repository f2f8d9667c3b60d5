"""LoRA: ``Δy = (α/r) · B A x`` with A (r, d_in) Kaiming-uniform and B (d_out, r) zero.

Parameter layout and initialisation match PEFT's LoRA, so the same A, B give the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.adapter import Adapter, LayerContext
from ...core.config import AdapterConfig
from ...core.mixture import init_lora_factors


class LoRAAdapter(Adapter):
    def __init__(
        self, in_features: int, out_features: int, config: AdapterConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        r = config.rank
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.empty(out_features, r))
        init_lora_factors(self.A, self.B)

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one update as a single expert: (1, r, d_in), (1, d_out, r)."""
        return self.A.unsqueeze(0), self.B.unsqueeze(0)
