"""Block-level injection: adapters that replace a whole FFN block instead of one Linear.

Most methods adapt single Linears (:class:`~.adapter.AdaptedLinear`). A method whose adapter class
subclasses :class:`BlockAdapter` adapts whole blocks instead: ``inject`` asks
:func:`split_block_targets` which of the selected Linears belong to a supported block, swaps each
such block for an :class:`AdaptedBlock` (the original block, frozen, plus the adapter), and gives
the Linears outside any block the adapter class named by ``BlockAdapter.linear_method`` (plain
LoRA for MixLoRA's attention projections). One injection may therefore hold both kinds of layer;
both answer ``adapter``, ``base_layer``, ``enabled``, ``in_features`` and ``out_features``, so
saving, loading, ``unload``, ``disable_adapters``, ``count_parameters``, ``aux_loss`` and the
routing observers treat them alike. ``merge_and_unload`` folds a block adapter through
:meth:`BlockAdapter.block_deltas` (one ΔW per projection) or refuses it.

Supported block kinds (``BlockAdapter.block_kind``):

- ``"gated-ffn"``: the gated MLP of LLaMA, Qwen2, Mistral, Gemma and their relatives, a module
  with Linears ``gate_proj`` (d → m), ``up_proj`` (d → m), ``down_proj`` (m → d) and ``act_fn``
  computing ``y = down(act(gate(x)) ⊙ up(x))``. Other FFNs (GPT-2's ``c_fc``/``c_proj``, Phi's
  ``fc1``/``fc2``, Phi-3's fused ``gate_up_proj``) raise a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .adapter import (
    Adapter,
    AdapterWrapper,
    LayerContext,
    NotMergeableError,
    is_adaptable,
    layer_features,
)

if TYPE_CHECKING:
    from .config import AdapterConfig


@dataclass(frozen=True)
class BlockKind:
    """A block architecture: the Linear children an adapter may adapt and how to recognise it."""

    name: str
    children: tuple[str, ...]
    required: tuple[str, ...]  # attributes the module must have (Linears and callables)
    architectures: str  # for error messages

    def matches(self, module: nn.Module) -> bool:
        for attr in self.required:
            value = getattr(module, attr, None)
            if attr in self.children:
                if value is None or not is_adaptable(value):
                    return False
            elif not callable(value):
                return False
        return True

    def features(self, module: nn.Module) -> tuple[int, int]:
        """``(d_in, d_out)`` of the whole block."""
        first, last = getattr(module, self.children[0]), getattr(module, self.children[-1])
        return layer_features(first)[0], layer_features(last)[1]


BLOCK_KINDS: dict[str, BlockKind] = {
    "gated-ffn": BlockKind(
        "gated-ffn",
        children=("gate_proj", "up_proj", "down_proj"),
        required=("gate_proj", "up_proj", "down_proj", "act_fn"),
        architectures="LLaMA, Qwen2, Mistral, Gemma (an `mlp` with gate_proj, up_proj, "
        "down_proj and act_fn)",
    ),
}

# Parent names that hold an FFN in common architectures, to refuse unsupported ones by name.
_FFN_PARENTS = ("mlp", "feed_forward", "ffn")


class BlockAdapter(Adapter):
    """Base class of adapters that replace a whole block (see the module docstring).

    Built as ``cls(block, targets, config, context)``: ``block`` the original module (read for
    shapes, never stored: the adapter receives it again on every forward), ``targets`` the names
    of its Linear children that ``target_modules`` selected. ``forward(block, x)`` returns the
    block's full output (not a delta). ``in_features``/``out_features`` are the block's.
    """

    block_kind: ClassVar[str] = "gated-ffn"
    linear_method: ClassVar[str] = "lora"  # method of the adapters on targets outside blocks

    def __init__(
        self,
        block: nn.Module,
        targets: tuple[str, ...],
        config: AdapterConfig,
        context: LayerContext,
    ) -> None:
        if not isinstance(block, nn.Module):
            raise TypeError(
                f"{type(self).__name__} adapts a whole block: build it as "
                f"{type(self).__name__}(block, targets, config, context) or through "
                "frame_peft.inject; fp.build_adapter builds per-Linear adapters only"
            )
        kind = BLOCK_KINDS[self.block_kind]
        d_in, d_out = kind.features(block)
        super().__init__(d_in, d_out, config, context)
        self.targets = tuple(c for c in kind.children if c in targets)
        self.shapes = {c: layer_features(getattr(block, c)) for c in self.targets}

    def forward(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def block_deltas(self) -> dict[str, torch.Tensor]:
        """``{child: ΔW (d_out, d_in)}`` folding the adapter into the block's Linears exactly,
        or :class:`NotMergeableError` when the update depends on the input."""
        raise NotMergeableError(f"{type(self).__name__} at {self.name} cannot be merged")

    def delta_weight(self) -> torch.Tensor:
        raise NotMergeableError(
            f"{type(self).__name__} at {self.name} adapts a whole block, which has no single ΔW"
        )


class AdaptedBlock(AdapterWrapper):
    """A frozen ``base_layer`` (the original block) plus a :class:`BlockAdapter`:
    ``y = adapter(base_layer, x)``, or ``base_layer(x)`` when disabled."""

    def __init__(self, base_layer: nn.Module, adapter: BlockAdapter) -> None:
        super().__init__(base_layer, adapter)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x, *args, **kwargs)
        if args or kwargs:  # never drop the adapter silently
            raise TypeError(
                f"{type(self.adapter).__name__} adapts a block called as block(x); this model "
                f"passes more arguments ({len(args)} positional, {sorted(kwargs)}), which the "
                "block adapter does not support"
            )
        return self.adapter(self.base_layer, x)


@dataclass
class BlockTarget:
    """One block to adapt: its module name, the module, and the targeted Linear children."""

    name: str
    module: nn.Module
    children: tuple[str, ...]


def split_block_targets(
    model: nn.Module, targets: list[tuple[str, nn.Module]], adapter_cls: type
) -> tuple[list[BlockTarget], list[tuple[str, nn.Module]]]:
    """``(blocks, linear_targets)``: the blocks ``adapter_cls`` adapts and the remaining Linears.

    For a per-Linear method (no ``block_kind``) every target stays a Linear target. For a
    :class:`BlockAdapter`, a target Linear whose parent is a supported block joins that block;
    raises ``ValueError`` naming the supported architectures when a targeted FFN is of another
    kind or no supported block is targeted. Blocks come in model order.
    """
    kind_name = getattr(adapter_cls, "block_kind", None)
    if kind_name is None or not issubclass(adapter_cls, BlockAdapter):
        return [], targets
    kind = BLOCK_KINDS[kind_name]
    children: dict[str, list[str]] = {}
    rest = []
    for name, module in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if leaf in kind.children and kind.matches(parent):
            children.setdefault(parent_name, []).append(leaf)
            continue
        if parent_name.rpartition(".")[2] in _FFN_PARENTS and not kind.matches(parent):
            raise ValueError(
                f"{adapter_cls.__name__} adapts whole {kind.name} blocks, supported for "
                f"{kind.architectures}; {parent_name!r} ({type(parent).__name__}) is another kind "
                f"of FFN (targeted through {name!r}). Use a supported architecture or a "
                "per-Linear method such as moe-lora"
            )
        rest.append((name, module))
    if not children:
        raise ValueError(
            f"{adapter_cls.__name__} adapts whole {kind.name} blocks, supported for "
            f"{kind.architectures}; target_modules selects no {'/'.join(kind.children)} Linear "
            f"of such a block in this {type(model).__name__}. Target them (e.g. "
            f"{list(kind.children)}) on a supported architecture"
        )
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    blocks = [
        BlockTarget(n, model.get_submodule(n), tuple(c for c in kind.children if c in cs))
        for n, cs in sorted(children.items(), key=lambda item: order[item[0]])
    ]
    return blocks, rest


def build_block(
    adapter_cls: type, target: BlockTarget, config: AdapterConfig, context: LayerContext
) -> AdaptedBlock:
    """The :class:`AdaptedBlock` of ``target`` (the adapter on the block's device)."""
    adapter = adapter_cls(target.module, target.children, config, context)
    param = next(target.module.parameters(), None)
    if param is not None:
        adapter.to(device=param.device)
    return AdaptedBlock(target.module, adapter)
