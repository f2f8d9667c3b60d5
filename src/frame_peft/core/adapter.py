"""The adapter protocol and the layer that wraps a frozen Linear / GPT-2 Conv1D.

An adapted layer computes ``y = base(x) + adapter(dropout(x), x)``: the frozen base output plus a
scaled update. An :class:`Adapter` is built from its module's typed config
(:meth:`AdapterConfig.for_module`) and a :class:`LayerContext`, and says only what is special
about its method:

- ``forward(x, route_x) -> Δy``: ``x`` (..., d_in) is the (dropped-out) adapter input,
  ``route_x`` the clean input for routers; returns (..., d_out), already scaled.
- ``delta_weight() -> ΔW`` (d_out, d_in) when the update is a fixed matrix (for merging), else
  raise :class:`NotMergeableError`.
- ``active_parameters()``: adapter parameters used per token (k of E experts plus the router).
- ``fp32_parameters`` / ``fp32_buffers``: names that stay float32 when the model is cast to
  bf16/fp16 (router weights, fractional orders, FlyLoRA's bias: rounding them changes the maths).
- ``optional_state``: state-dict keys that files written by earlier versions lack (e.g. FRAME's
  ``order_pins``); loading such a file keeps their initial value.
- ``prepare_forward(adapters, scratch)`` (optional classmethod): work shared by all of a method's
  layers, done once per training forward of the model before any layer runs; results go into
  ``scratch`` (this forward's record) for the layers to pick up (FRAME: grouped transforms).

What analysis, export and accounting may ask any adapter (so they never branch on its class):

- ``has_router``: the update is routed per token (a :class:`~.routed.RoutedAdapter`).
- ``num_experts``: E, or 1 for a single update.
- ``expert_factors() -> (A (E, R, d_in), B (E, d_out, R)) | None``: per-expert low-rank factors
  with ``ΔW_e = scale · B_e A_e`` (None when the experts are not low-rank products).
- ``expert_deltas() -> (E, d_out, d_in)``: every expert's ΔW_e, scale included (float64).
- ``merge_factors() -> (A (R, d_in), B (d_out, R), scale) | None``: ``ΔW = scale · B A``
  exactly, when the adapter is mergeable and stored as low-rank factors (PEFT export).
- ``expert_domain() -> ExpertDomain | None``: the fractional-Fourier orders of the experts'
  domains, when the method has them (FRAME); spatial low-rank experts have order 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..routing import RoutingState

if TYPE_CHECKING:
    from .config import AdapterConfig


class NotMergeableError(ValueError):
    """The adapter's update depends on the input (routing), so it has no single ΔW."""


def conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain-torch models
        return None
    return Conv1D


def is_adaptable(module: nn.Module) -> bool:
    conv = conv1d_class()
    return isinstance(module, nn.Linear) or (conv is not None and isinstance(module, conv))


def layer_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or a GPT-2 Conv1D (weight stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight
    return int(w.shape[0]), int(w.shape[1])


@dataclass(frozen=True)
class LayerContext:
    """Where an adapter sits: its module name, the model's shared routing state, and its depth.

    ``layer_index`` is the first integer component of the name (``model.layers.3.mlp`` -> 3;
    None when there is none) and ``num_layers`` one more than the largest index among the
    adapted modules (0 when none has one). Methods whose behaviour depends on depth (HMoRA's
    routing mix) read them here.
    """

    name: str
    state: RoutingState
    layer_index: int | None = None
    num_layers: int = 0


@dataclass(frozen=True)
class ExpertDomain:
    """The domains of a module's experts: order a_e of each (E,), the transform ("chirp" or
    "exact"), whether the orders are trained, and their initial values."""

    orders: torch.Tensor
    transform: str
    learned: bool
    initial: tuple[float, ...]


class Adapter(nn.Module):
    """Base class of every adapter; see the module docstring for the protocol."""

    fp32_parameters: ClassVar[tuple[str, ...]] = ()
    fp32_buffers: ClassVar[tuple[str, ...]] = ()
    optional_state: ClassVar[tuple[str, ...]] = ()
    has_router: ClassVar[bool] = False

    def __init__(
        self, in_features: int, out_features: int, config: AdapterConfig, context: LayerContext
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self.context = context
        self.name = context.name
        self.state = context.state
        self.scale = config.scale
        self.num_experts = 1

    def forward(self, x: torch.Tensor, route_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def prepare_forward(cls, adapters: Sequence[Adapter], scratch: dict[str, Any]) -> None:
        """Once per gradient-enabled forward of the model, before its layers run: work that
        every enabled layer of this class shares goes into ``scratch``. Nothing by default."""

    def delta_weight(self) -> torch.Tensor:
        raise NotMergeableError(f"{type(self).__name__} at {self.name} has no fixed ΔW")

    def active_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-expert factors ``(A (E, R, d_in), B (E, d_out, R))``, ``ΔW_e = scale · B_e A_e``;
        None when the experts are not stored as low-rank products."""
        return None

    def expert_deltas(self) -> torch.Tensor:
        """Every expert's ``ΔW_e`` (E, d_out, d_in), scale included, float64."""
        factors = self.expert_factors()
        if factors is None:
            raise NotImplementedError(f"{type(self).__name__} defines no per-expert update")
        a, b = factors
        return self.scale * (b.double() @ a.double())

    def merge_factors(self) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(A (R, d_in), B (d_out, R), scale)`` with ``ΔW = scale · B A`` exactly, when the
        update is one fixed low-rank product; else None."""
        factors = self.expert_factors()
        if factors is None or self.num_experts != 1:
            return None
        try:
            self.delta_weight()
        except NotMergeableError:
            return None  # routed per token (FlyLoRA with top_k < rank)
        a, b = factors
        return a[0], b[0], self.scale

    def expert_domain(self) -> ExpertDomain | None:
        """The experts' fractional-Fourier domains, for methods that have them (FRAME)."""
        return None

    def _apply(self, fn, recurse=True):  # keep routers, orders, ... in float32 under .to(bf16)
        params = {n: p.data for n, p in self.named_parameters() if n in self.fp32_parameters}
        buffers = {n: b for n, b in self.named_buffers() if n in self.fp32_buffers}
        super()._apply(fn, recurse)
        for n, data in params.items():
            p = self.get_parameter(n)
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = data.to(device=p.device)
        for n, old in buffers.items():
            owner, _, leaf = n.rpartition(".")
            module = self.get_submodule(owner)
            if module._buffers[leaf].dtype in (torch.float16, torch.bfloat16):
                module._buffers[leaf] = old.to(device=module._buffers[leaf].device)
        return self


class AdapterWrapper(nn.Module):
    """What ``inject`` puts in a model: the frozen original module (``base_layer``) and its
    ``adapter``, switched off with ``enabled = False`` (save, load, merge and unload rely on these
    three names)."""

    def __init__(self, base_layer: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.enabled = True

    @property
    def in_features(self) -> int:
        return self.adapter.in_features

    @property
    def out_features(self) -> int:
        return self.adapter.out_features

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"

    # Named adapters (core/named.py): the active one is ``adapter`` (with its ``dropout``), the
    # others sit in ``parked[name]``. The PEFT path stores them differently (peft_method.py).

    def park(self, name: str, adapter: nn.Module, dropout: nn.Module) -> None:
        """Keep ``adapter`` (frozen, not run) under ``name``."""
        if "parked" not in self._modules:
            self.parked = nn.ModuleDict()
        box = nn.Module()
        box.adapter, box.dropout = adapter, dropout
        self.parked[name] = box

    def parked_adapter(self, name: str) -> nn.Module:
        return self.parked[name].adapter

    def activate(self, name: str, current: str) -> None:
        """Swap the active adapter (called ``current``) with the parked ``name``."""
        box = self.parked[name]
        del self.parked[name]
        self.park(current, self.adapter, getattr(self, "dropout", nn.Identity()))
        self.adapter = box.adapter
        if hasattr(self, "dropout"):
            self.dropout = box.dropout

    def drop(self, name: str) -> None:
        """Forget parked adapter ``name``."""
        del self.parked[name]


class AdaptedLinear(AdapterWrapper):
    """A frozen ``base_layer`` plus an ``adapter``: ``y = base(x) + adapter(dropout(x), x)``."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter, dropout: float) -> None:
        super().__init__(base_layer, adapter)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight of its projections
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if not self.enabled:
            return out
        return out + self.adapter(self.dropout(x), x).to(out.dtype)


def build_adapter(
    config: AdapterConfig,
    in_features: int,
    out_features: int,
    name: str = "adapter",
    state: RoutingState | None = None,
    layer_index: int | None = None,
    num_layers: int = 0,
) -> Adapter:
    """One adapter of ``config``'s method for a ``(in_features -> out_features)`` layer called
    ``name``, outside any model (tests, experiments): ``config.for_module(name)`` and a fresh
    routing state unless one is given."""
    from .config import adapter_class

    context = LayerContext(name, state or RoutingState(), layer_index, num_layers)
    cls = adapter_class(config.method)
    return cls(in_features, out_features, config.for_module(name), context)
