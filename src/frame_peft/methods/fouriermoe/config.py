"""FourierMoE config (docs/methods.md §3): a mixture of sparse spectral experts behind a
frequency-adaptive top-k router.

Defaults (choices, see :class:`FourierMoEConfig`): E = 8 experts, k = 2, dropout 0.05,
α = 150 (PEFT FourierFT's default ``scaling``; see the layer docstring for the exact relation),
``num_coefficients=None`` → n = ⌈r·(d_in + d_out)/2⌉ complex coefficients per expert with the
LoRA-equivalent rank r = ``rank`` = 4, so that one expert holds 2n ≈ r·(d_in + d_out) real
parameters, exactly a rank-r LoRA expert; active parameters per token are then
k·2n + E·d_in + E² (k experts, the linear router and the E×E band-energy router), the same as
MoE-LoRA r = 4 up to the E² term. Capped at the ring size for tiny layers (see the layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.config import check_positive_int, is_number
from ..moe_lora.config import MoELoRAConfig


@dataclass
class FourierMoEConfig(MoELoRAConfig):
    """E spectral experts per target module, each owning n complex DFT coefficients in one ring.

    Inherits ``num_experts`` (E = 8), ``top_k`` (k = 2), ``aux_loss`` (``"switch"`` | ``"none"``),
    ``aux_loss_coef`` (0.01), ``z_loss_coef`` (0 = off) and ``router_jitter`` from
    :class:`MoELoRAConfig`.

    Args:
        rank: LoRA-equivalent rank r that sets the default coefficient count
            ``n = ⌈r·(d_in + d_out)/2⌉`` (2 real parameters per complex coefficient, so an
            expert has the parameter count of a rank-r LoRA expert). Ignored when
            ``num_coefficients`` is given. Default 4.
        alpha: scale α of ``ΔW_e = α · IDFT2(S_e)`` (IDFT2 carries the 1/(d_out·d_in) factor, as
            ``torch.fft.ifft2`` and PEFT FourierFT). Must be a number (``None`` is rejected: the
            generic "None = 2·rank" rule makes no sense here). Default 150.0.
        num_coefficients: n per expert, or ``None`` for the rank-matched default above, capped at
            the smallest ring. An explicit n larger than the smallest ring of a module raises
            when the adapter is built (``inject`` then leaves the model untouched).
        seed: base seed of the frequency positions; each module draws from
            ``module_seed(seed, module name)`` (:mod:`frame_peft.core.seeds`). Positions are
            also saved as a buffer.
        feature_eps: ε of the router features ``log(ε + band energy)`` (> 0).
    """

    method: ClassVar[str] = "fouriermoe"

    alpha: float | None = 150.0
    num_coefficients: int | None = None
    seed: int = 0
    feature_eps: float = 1e-6

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        return (*super().overridable(), "num_coefficients")

    def validate(self) -> None:
        super().validate()
        if self.alpha is None:
            raise ValueError(
                "fouriermoe needs an explicit alpha (the scale of α·IDFT2(S), default 150.0); "
                "None (= 2·rank for LoRA-style methods) is not meaningful here"
            )
        if self.num_coefficients is not None:
            check_positive_int("num_coefficients", self.num_coefficients)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not is_number(self.feature_eps) or not self.feature_eps > 0:
            raise ValueError(f"feature_eps must be a number > 0, got {self.feature_eps!r}")
