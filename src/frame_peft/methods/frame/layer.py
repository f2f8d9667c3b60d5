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

At a = 0, T = I and the expert is a LoRA. Experts *held* at order 0 (fixed at 0, or pinned there
by the order scan, :mod:`.scan`) cost what a LoRA expert costs: their factors skip the transform
and they enter the mixture at rank r, without the zero imaginary half (:func:`slotted_mixture`);
with every order held at 0 FRAME is MoE-LoRA exactly. Learned orders are
``a_e = sigmoid(θ_e)`` (``order_logits``, float32 always), except where ``order_pins[e] >= 0``
(0 or 1, set by the scan; −1 means free): then ``a_e`` is that number and θ_e gets no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...core.adapter import ExpertDomain, LayerContext
from ...core.mixture import LowRankMixture
from ...routing import Routing, grouped_switch_loss, switch_loss
from ...transforms import dfrft_matrix, frft, get_transform
from ...transforms.by_name import CHIRP, EXACT
from .config import FrameConfig, initial_orders
from .factors import grouped_factors

_SCRATCH_KEY = "frame_factors"


class FrameAdapter(LowRankMixture):
    fp32_parameters = ("router.weight", "order_logits")
    fp32_buffers = ("order_pins",)
    optional_state = ("order_pins",)  # adapters saved before the order scan have none

    def __init__(
        self, in_features: int, out_features: int, config: FrameConfig, context: LayerContext
    ) -> None:
        super().__init__(in_features, out_features, config, context)
        name = context.name
        self.transform_name = config.transform
        if self.transform_name == CHIRP and (in_features % 2 or out_features % 2):
            raise ValueError(
                f"{name}: transform='chirp' needs even widths (the discrete chirp identity fails "
                f"for odd lengths), got in={in_features}, out={out_features}; use "
                "transform='exact' for this module (e.g. through `overrides`)"
            )
        self._forward_t, self._adjoint_t = get_transform(self.transform_name)
        self.initial = tuple(initial_orders(config))
        orders = torch.tensor(self.initial, dtype=torch.float32)
        self.learned = config.order_mode == "learned"
        if self.learned:
            eps = 1e-6  # orders at exactly 0 or 1 (allowed with the scan) are held there
            self.order_logits = nn.Parameter(
                torch.logit(orders.double().clamp(eps, 1 - eps)).float()
            )
            # -1: the order is sigmoid(θ); a number in [0, 1]: the order is held there (the scan)
            held = (orders == 0) | (orders == 1)
            self.register_buffer(
                "order_pins", torch.where(held, orders, torch.full_like(orders, -1.0))
            )
        else:
            self.register_buffer("fixed_orders", orders)
        # Experts held at order 0 skip the transform (False forces it: tests of the a = 0 path).
        self.spatial_shortcut = True
        self.num_groups = config.num_order_groups or max(1, self.num_experts // 2)
        self._factor_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._spatial: tuple[int, ...] = ()
        self._pinned: tuple[int, ...] = ()
        self._spatial_key: tuple | None = None
        self._update_spatial()  # its key is None: the first eager forward re-reads the buffer

    def orders(self) -> torch.Tensor:
        """Current orders (E,), float32."""
        if not self.learned:
            return self.fixed_orders
        free = torch.sigmoid(self.order_logits)
        if not self._refresh_held()[1]:
            return free
        if type(free) is not torch.Tensor:  # an FSDP2 DTensor outside the forward
            free = free.full_tensor()
        return torch.where(self.order_pins < 0, free, self.order_pins)

    def expert_domain(self) -> ExpertDomain:
        return ExpertDomain(self.orders().detach(), self.transform_name, self.learned, self.initial)

    def _held_orders(self) -> torch.Tensor:
        """The buffer that holds orders in place: pins (learned mode) or the fixed orders."""
        return self.order_pins if self.learned else self.fixed_orders

    def spatial_experts(self) -> tuple[int, ...]:
        """Experts held at order 0 (they run as LoRA experts); () when none or the shortcut is
        off. Re-read from the buffer only when it changes (one host read per change; under
        ``torch.compile`` the set read by the last eager call is used)."""
        if not self.spatial_shortcut:
            return ()
        return self._refresh_held()[0]

    def pinned_experts(self) -> tuple[int, ...]:
        """Experts whose learned order is held (``order_pins``: set by a scan, or started at 0 or
        1 with ``order_search="scan"``); () with fixed orders."""
        return self._refresh_held()[1] if self.learned else ()

    def _refresh_held(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(experts held at 0, experts pinned)``, re-read when the buffer has changed."""
        held = self._held_orders()
        key = (held.data_ptr(), held._version, held.device)
        if not torch.compiler.is_compiling() and key != self._spatial_key:
            self._update_spatial(key)
        return self._spatial, self._pinned

    def _update_spatial(self, key: tuple | None = None) -> None:
        held = self._held_orders().detach()
        self._pinned = tuple(int(i) for i in torch.nonzero(held >= 0).flatten().tolist())
        spatial = tuple(int(i) for i in torch.nonzero(held == 0).flatten().tolist())
        moving = [e for e in range(self.num_experts) if e not in spatial]
        slots = [e for e in moving for _ in range(2 * self.rank)]
        slots += [e for e in spatial for _ in range(self.rank)]
        for name, values in (("moving", moving), ("spatial", spatial), ("slots", slots)):
            self.register_buffer(
                f"_{name}_index",
                torch.tensor(values, dtype=torch.long, device=held.device),
                persistent=False,
            )
        self._spatial, self._spatial_key = spatial, key

    @property
    def identity_orders(self) -> bool:
        """Every expert is held at order 0: FRAME is MoE-LoRA exactly (no transform at all)."""
        return len(self.spatial_experts()) == self.num_experts

    def moving_experts(self) -> torch.Tensor:
        """Indices (long) of the experts that go through the transform (after
        :meth:`spatial_experts` has been called for this forward)."""
        return self._moving_index

    @classmethod
    def prepare_forward(cls, adapters: Sequence[FrameAdapter], scratch: dict[str, Any]) -> None:
        """Transform the factors of all ``adapters`` together (one call per row group).

        Layers whose parameters are not whole tensors here (FSDP2 DTensor shards, DeepSpeed
        ZeRO-3 partitions) or whose orders are all held at zero are left to compute their own.
        """
        ready = [ad for ad in adapters if ad._groupable()]
        if len(ready) > 1:
            factors = grouped_factors(ready)
            scratch[_SCRATCH_KEY] = {ad.name: (ad._param_key(), factors[ad.name]) for ad in ready}

    def _groupable(self) -> bool:
        params = (self.A, self.B) + ((self.order_logits,) if self.learned else ())
        e, r = self.num_experts, self.rank
        return (
            len(self.spatial_experts()) < self.num_experts
            and all(type(p.data) is torch.Tensor for p in params)
            and self.A.shape == (e, r, self.in_features)
            and self.B.shape == (e, self.out_features, r)
        )

    def _param_key(self) -> tuple:
        """Identifies the current values of A, B and the orders: an optimizer step,
        load_state_dict or .to() changes a version, pointer or device."""
        tensors = (self.A, self.B, self._held_orders())
        if self.learned:
            tensors += (self.order_logits,)
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        return (*key, self.spatial_shortcut)

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective real factors of every expert: (E, 2r, d_in) and (E, d_out, 2r); experts held
        at order 0 get ``[A_e; 0]`` and ``[B_e, 0]``. (A, B) themselves when all are held at 0."""
        spatial = self.spatial_experts()
        if len(spatial) == self.num_experts:
            return self.A, self.B
        a_m, b_m = self._moving_factors()
        if not spatial:
            return a_m, b_m
        e, r, pad = self.num_experts, self.rank, torch.nn.functional.pad
        spatial, moving = self._spatial_index, self._moving_index
        a_s, b_s = self.A.index_select(0, spatial), self.B.index_select(0, spatial)
        a = a_m.new_zeros(e, 2 * r, self.in_features).index_copy(0, moving, a_m)
        b = b_m.new_zeros(e, self.out_features, 2 * r).index_copy(0, moving, b_m)
        a = a.index_copy(0, spatial, pad(a_s.to(a.dtype), (0, 0, 0, r)))
        b = b.index_copy(0, spatial, pad(b_s.to(b.dtype), (0, r)))
        return a, b

    def mixture_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        spatial = self.spatial_experts()
        if len(spatial) == self.num_experts:
            return self.A, self.B, None
        a_m, b_m = self._moving_factors()
        if not spatial:
            return a_m, b_m, None
        a_s, b_s = (
            self.A.index_select(0, self._spatial_index),
            self.B.index_select(0, self._spatial_index),
        )
        d_in, d_out = self.in_features, self.out_features
        a = torch.cat([a_m.reshape(-1, d_in), a_s.to(a_m.dtype).reshape(-1, d_in)])
        b = torch.cat([b_m.permute(1, 0, 2).reshape(d_out, -1),
                       b_s.to(b_m.dtype).permute(1, 0, 2).reshape(d_out, -1)], dim=1)  # fmt: skip
        return a, b, self._slots_index

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x, route_x)
        if self.learned and torch.is_grad_enabled() and self.identity_orders:
            # Every order is held at 0, so θ takes no part in the output; keep it in the graph
            # (with a zero gradient) so DDP does not stop on a parameter without a gradient.
            out = out + 0.0 * self.order_logits.sum().to(out.dtype)
        return out

    def _moving_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformed factors of the moving experts (E_m, 2r, d_in), (E_m, d_out, 2r)."""
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
        """This layer's moving factors, uncached (the grouped path with one layer)."""
        return grouped_factors([self])[self.name]

    def reference_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain path (tests): the forward transform on A's rows, the adjoint on B's columns, for
        every expert, (E, 2r, d_in) and (E, d_out, 2r)."""
        a = self.orders()
        a_t = self._forward_t(self.A, a, dim=-1)  # (E, r, d_in): rows of A times T_a
        b_t = self._adjoint_t(self.B, a, dim=-2)  # (E, d_out, r): T_a^H on the columns of B
        a_eff = torch.cat([a_t.real, a_t.imag], dim=1).to(self.A.dtype)
        b_eff = torch.cat([b_t.real, -b_t.imag], dim=2).to(self.B.dtype)
        return a_eff, b_eff

    @torch.no_grad()
    def place_experts(self, experts: Sequence[int], orders: Sequence[float], hold: Sequence[bool]):
        """Move ``experts`` to ``orders`` (the order scan's jump). ``hold[i]`` pins expert i's order
        (learned mode: ``order_pins``; no gradient moves it); otherwise it is learned from there
        (θ = logit(a)). Fixed-order modules write their fixed orders."""
        for e, a, pin in zip(experts, orders, hold, strict=True):
            if not self.learned:
                self.fixed_orders[e] = a
                continue
            eps = 1e-6
            self.order_logits[e] = torch.logit(torch.tensor(min(max(a, eps), 1 - eps)).double())
            self.order_pins[e] = a if pin else -1.0

    @torch.no_grad()
    def reset_experts(
        self, experts: Sequence[int], generator: torch.Generator | None = None
    ) -> None:
        """Re-initialise ``experts``' factors: A_e Kaiming-uniform (as at injection; from
        ``generator`` when given, so every process draws the same), B_e = 0 (ΔW_e = 0)."""
        for e in experts:
            a = torch.empty(self.A.shape[1:], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.A[e] = a.to(self.A)
            self.B[e] = 0

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
            if self.transform_name == EXACT:
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
