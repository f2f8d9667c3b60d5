"""FRAME: low-rank experts, each in its own learnable fractional-Fourier domain.

Expert e has A_e (r, d_in), B_e (d_out, r) and an order a_e; ``T_a`` is the transform (the chirp
surrogate ``U_a`` or the exact ``F^a``) of length d_in on the input side and d_out on the output::

    ΔW_e = Re( T_{a_e}^H · B_e A_e · T_{a_e} )
    Δy   = (α/r) Σ_{e ∈ topk(x)} ĝ_e(x) ΔW_e x

Factor path (what keeps FRAME at the cost of MoE-LoRA): once per forward transform the factors,
not the tokens: ``Ã_e = A_e T_{a_e}`` (the r rows of A; T is complex symmetric, so this is T on
each row) and ``B̃_e = T_{a_e}^H B_e`` (the r columns of B). Then
``ΔW_e x = Re(B̃_e) Re(Ã_e) x − Im(B̃_e) Im(Ã_e) x``: a real expert of rank 2r,
``A'_e = [Re Ã_e; Im Ã_e]`` (2r, d_in), ``B'_e = [Re B̃_e, −Im B̃_e]`` (d_out, 2r), run by the
shared mixture kernel. The transforms cost O(E·r·d log d) per forward, independent of T.

Two caches keep that cost low. In training, the model's forward pre-hook
(:meth:`FrameAdapter.prepare_forward`) transforms the factors of *every* FRAME layer together in
a few grouped calls (:mod:`.factors`) and each layer picks up its own. With gradients off
(evaluation, generation) each layer caches its factors until a parameter changes, so decoding
one token at a time does not redo them at every step. Both check that A, B and the orders are
the same, unchanged tensors before reusing anything.

At a = 0, T = I and the expert is a LoRA; with all orders fixed at 0 the transforms are skipped and
FRAME is MoE-LoRA exactly. Orders are ``a_e = sigmoid(θ_e)`` (``order_logits``, float32 always).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...core.mixture import LowRankMixture
from ...routing import Routing, RoutingState, grouped_switch_loss, switch_loss
from ...transforms import dfrft_matrix, frft, get_transform
from .config import initial_orders
from .factors import grouped_factors

_SCRATCH_KEY = "frame_factors"


class FrameAdapter(LowRankMixture):
    fp32_parameters = ("router.weight", "order_logits")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        settings: dict[str, Any],
        state: RoutingState,
        name: str,
    ) -> None:
        super().__init__(in_features, out_features, settings, state, name)
        self.transform_name = settings["transform"]
        if self.transform_name == "chirp" and (in_features % 2 or out_features % 2):
            raise ValueError(
                f"{name}: transform='chirp' needs even widths (the discrete chirp identity fails "
                f"for odd lengths), got in={in_features}, out={out_features}; use "
                "transform='exact' for this module (e.g. through `overrides`)"
            )
        self._forward_t, self._adjoint_t = get_transform(self.transform_name)
        orders = torch.tensor(initial_orders(settings), dtype=torch.float32)
        self.learned = settings["order_mode"] == "learned"
        if self.learned:
            self.order_logits = nn.Parameter(torch.logit(orders.double()).float())
        else:
            self.register_buffer("fixed_orders", orders)
        # Static (config-time) shortcut: all-zero fixed orders mean T = I exactly.
        self.identity_orders = not self.learned and bool((orders == 0).all())
        self.num_groups = settings["num_order_groups"] or max(1, self.num_experts // 2)
        self._factor_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def orders(self) -> torch.Tensor:
        """Current orders (E,), float32."""
        return torch.sigmoid(self.order_logits) if self.learned else self.fixed_orders

    @classmethod
    def prepare_forward(cls, adapters: Sequence[FrameAdapter], scratch: dict[str, Any]) -> None:
        """Transform the factors of all ``adapters`` together (one call per row group).

        Layers whose parameters are not whole tensors here (FSDP2 DTensor shards, DeepSpeed
        ZeRO-3 partitions) or whose orders are all zero are left to compute their own.
        """
        ready = [ad for ad in adapters if ad._groupable()]
        if len(ready) > 1:
            factors = grouped_factors(ready)
            scratch[_SCRATCH_KEY] = {ad.name: (ad._param_key(), factors[ad.name]) for ad in ready}

    def _groupable(self) -> bool:
        params = (self.A, self.B) + ((self.order_logits,) if self.learned else ())
        e, r = self.num_experts, self.rank
        return (
            not self.identity_orders
            and all(type(p.data) is torch.Tensor for p in params)
            and self.A.shape == (e, r, self.in_features)
            and self.B.shape == (e, self.out_features, r)
        )

    def _param_key(self) -> tuple:
        """Identifies the current values of A, B and the orders: an optimizer step,
        load_state_dict or .to() changes a version, pointer or device."""
        return tuple(
            (t.data_ptr(), t._version, t.device, t.dtype)
            for t in (self.A, self.B, self.order_logits if self.learned else self.fixed_orders)
        )

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.identity_orders:
            return self.A, self.B
        if torch.is_grad_enabled():
            self._factor_cache = None
            prepared = self.state.current.scratch.get(_SCRATCH_KEY, {}).get(self.name)
            if prepared is not None and prepared[0] == self._param_key():
                return prepared[1]
            return self._transformed_factors()
        # Inference: reuse the factors while A, B and the orders are unchanged.
        key = self._param_key()
        if self._factor_cache is None or self._factor_cache[0] != key:
            self._factor_cache = (key, self._transformed_factors())
        return self._factor_cache[1]

    def _transformed_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's factors, uncached (the grouped path with one layer)."""
        return grouped_factors([self])[self.name]

    def reference_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain path (tests): the forward transform on A's rows, the adjoint on B's columns."""
        a = self.orders()
        a_t = self._forward_t(self.A, a, dim=-1)  # (E, r, d_in): rows of A times T_a
        b_t = self._adjoint_t(self.B, a, dim=-2)  # (E, d_out, r): T_a^H on the columns of B
        a_eff = torch.cat([a_t.real, a_t.imag], dim=1).to(self.A.dtype)
        b_eff = torch.cat([b_t.real, -b_t.imag], dim=2).to(self.B.dtype)
        return a_eff, b_eff

    def balance_loss(self, routing: Routing, mask: torch.Tensor | None) -> torch.Tensor:
        if self.aux_kind == "grouped":
            return grouped_switch_loss(routing, mask, self.orders(), self.num_groups)
        return switch_loss(routing, mask)

    def dense_delta_weights(self) -> torch.Tensor:
        """Reference: ``(α/r) Re(T^H B A T)`` per expert from explicit matrices, (E, d_out, d_in).

        Builds the d×d transforms densely (float64), so use it on small layers only (tests).
        """
        mats = []
        for e, a in enumerate(self.orders().double().tolist()):
            if self.transform_name == "exact":
                t_in, t_out = dfrft_matrix(self.in_features, a), dfrft_matrix(self.out_features, a)
            else:
                t_in = frft(torch.eye(self.in_features, dtype=torch.complex128), a, dim=0)
                t_out = frft(torch.eye(self.out_features, dtype=torch.complex128), a, dim=0)
            ba = (self.B[e].double() @ self.A[e].double()).to(torch.complex128)
            mats.append((t_out.conj().T @ ba @ t_in).real)
        return self.scale * torch.stack(mats)

    def active_parameters(self) -> int:
        return super().active_parameters() + self.num_experts * int(self.learned)

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, top_k={self.top_k}, rank={self.rank}, "
            f"transform={self.transform_name}, orders={'learned' if self.learned else 'fixed'}, "
            f"scale={self.scale:g}, d_in={self.in_features}, d_out={self.out_features}"
        )
