"""Merge adapters into the base weights: ``W ← W + ΔW`` where the update is a fixed matrix.

``merge_weight`` is a pure function; ``merge_and_unload`` checks every module before changing any,
so an unmergeable adapter (a routed mixture of several experts) raises and leaves the model as it
was.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import AdaptedLinear, NotMergeableError
from .blocks import AdaptedBlock
from .inject import _forget, injection_owner, require_injection


def merge_weight(weight: torch.Tensor, delta: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Return ``weight + ΔW`` in the weight's dtype.

    ``transposed`` is for GPT-2 Conv1D weights, stored (in, out).
    """
    delta = delta.T if transposed else delta
    return (weight.float() + delta.float().to(weight.device)).to(weight.dtype)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and return the plain base model.

    Exact for LoRA and for one-expert mixtures (including one-expert FRAME and one-expert
    MixLoRA, whose block folds into its gate/up/down projections). Raises
    :class:`~frame_peft.core.adapter.NotMergeableError` before touching anything otherwise, and
    ``ValueError`` while any adapter is disabled (merging would change what the model computes;
    re-enable them, or :func:`~.inject.unload` to drop them).
    """
    inj = require_injection(model)
    target = injection_owner(model)
    disabled = [name for name, layer in inj.layers.items() if not layer.enabled]
    if disabled:
        raise ValueError(
            f"cannot merge: the adapters of {len(disabled)} module(s) are disabled (e.g. "
            f"{disabled[:3]}; fp.disable_adapters / fp.set_adapters_enabled(model, False)), so "
            "the model runs without them, but merging would fold them in. Re-enable them to "
            "merge, or call fp.unload(model) to drop them. Nothing was changed."
        )
    with torch.no_grad():
        deltas = {}
        for name, layer in inj.layers.items():
            try:
                if isinstance(layer, AdaptedBlock):  # {child Linear: ΔW}
                    deltas[name] = layer.adapter.block_deltas()
                else:
                    deltas[name] = layer.adapter.delta_weight()
            except NotMergeableError as err:
                raise NotMergeableError(f"cannot merge: {err}. Nothing was changed.") from err
        for name, layer in inj.layers.items():
            base = layer.base_layer
            if isinstance(layer, AdaptedBlock):
                for child, delta in deltas[name].items():
                    lin = base.get_submodule(child)
                    transposed = not isinstance(lin, nn.Linear)
                    lin.weight.data = merge_weight(lin.weight.data, delta, transposed)
            else:
                base.weight.data = merge_weight(base.weight.data, deltas[name], _is_conv1d(layer))
            parent_name, _, child = name.rpartition(".")
            setattr(target.get_submodule(parent_name), child, base)
    _forget(target, inj)
    return target


def _is_conv1d(layer: AdaptedLinear) -> bool:
    return not isinstance(layer.base_layer, nn.Linear)
