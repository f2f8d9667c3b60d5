"""Several named adapters on one injected model, one of them active.

:func:`~.inject.inject` builds the first adapter (named ``"default"``). :func:`add_named_adapter`
builds another one for the *same* adapted modules, with its own config and routing state, and
parks it: each wrapper keeps it in ``wrapper.parked[name]`` (frozen, not run; it moves with the
model under ``.to()`` and appears in ``model.state_dict()``). :func:`set_active_adapter` swaps the
active adapter and a parked one in every wrapper (parameter objects are kept, so an optimizer
built for an adapter still holds its tensors after switching back; the wrapper's ``park`` /
``activate`` / ``drop`` say where they are kept), makes the active adapter's
parameters trainable and the parked ones frozen, and points the injection's config and routing
state at the active adapter. This is what PEFT's ``add_adapter`` / ``set_adapter`` /
``delete_adapter`` map onto (:mod:`frame_peft.peft_method`).

Only one adapter runs per forward (PEFT's ``set_adapter`` semantics); block methods (MixLoRA)
support one adapter per model.
"""

from __future__ import annotations

from torch import nn

from ..routing import RoutingState
from ..routing.context import input_embedding_of
from .adapter import AdaptedLinear
from .config import AdapterConfig, adapter_class
from .inject import (
    _take_mode,
    find_injection,
    injection_owner,
    layer_contexts,
    require_injection,
)
from .targets import _names, selects

__all__ = [
    "adapter_modules",
    "add_named_adapter",
    "delete_named_adapter",
    "named_adapters",
    "set_active_adapter",
]


def named_adapters(model: nn.Module) -> list[str]:
    """The adapter names of ``model``: the active one first, then the parked ones."""
    inj = find_injection(model)
    return [] if inj is None else [inj.name, *inj.parked]


def add_named_adapter(model: nn.Module, name: str, config: AdapterConfig) -> None:
    """Build adapter ``name`` from ``config`` for the modules the model already adapts, parked.

    Raises ``ValueError`` (changing nothing) when the name is taken or invalid, when the model
    adapts blocks (MixLoRA), or when ``config`` targets other modules than the active adapter.
    """
    inj = require_injection(model)
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    if not name or "." in name or name in named_adapters(model):
        raise ValueError(
            f"adapter name {name!r} is taken or invalid (names: {named_adapters(model)}; "
            "no dots); choose another"
        )
    cls = adapter_class(config.method)
    if getattr(cls, "linear_method", None) or not all(
        isinstance(layer, AdaptedLinear) for layer in inj.layers.values()
    ):
        raise ValueError(
            "block methods (MixLoRA) support one adapter per model; unload it or use a model "
            "copy for another adapter"
        )
    inner = injection_owner(model)
    have = set(inj.layers)
    wanted = {n for n in have if selects(config.target_modules, n)}
    if isinstance(config.target_modules, list):  # a name that selects nothing here
        wanted |= {t for t in config.target_modules if not any(_names(n, t) for n in have)}
    if wanted != have:
        missing, extra = sorted(have - wanted)[:3], sorted(wanted - have)[:3]
        raise ValueError(
            f"adapter {name!r} must adapt the same modules as {inj.name!r}; it "
            f"{'misses ' + str(missing) if missing else ''}"
            f"{' and ' if missing and extra else ''}{'adds ' + str(extra) if extra else ''}. "
            "Use the same target_modules (one injection adapts one set of modules)"
        )
    state = RoutingState(input_embedding_of(inner))
    contexts = layer_contexts(list(inj.layers), state)
    boxes = {}
    for lname, layer in inj.layers.items():  # build all first: an error changes nothing
        mc = config.for_module(lname)
        adapter = cls(layer.in_features, layer.out_features, mc, contexts[lname])
        adapter.to(device=layer.base_layer.weight.device)
        dropout = nn.Dropout(mc.dropout) if mc.dropout > 0 else nn.Identity()
        adapter.requires_grad_(False)
        adapter.train(inner.training)
        dropout.train(inner.training)
        boxes[lname] = (adapter, dropout)
    for lname, layer in inj.layers.items():
        layer.park(name, *boxes[lname])
    inj.parked[name] = (config, state)


def adapter_modules(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """``{module: adapter}`` of adapter ``name``, active or parked."""
    inj = require_injection(model)
    if name == inj.name:
        return {n: layer.adapter for n, layer in inj.layers.items()}
    if name not in inj.parked:
        raise ValueError(f"no adapter named {name!r}; this model has {named_adapters(model)}")
    return {n: layer.parked_adapter(name) for n, layer in inj.layers.items()}


def set_active_adapter(model: nn.Module, name: str, trainable: bool = True) -> None:
    """Make adapter ``name`` the one that runs; the previous one is parked (frozen).

    ``trainable``: whether the newly active adapter's parameters require grad.
    """
    inj = require_injection(model)
    if name == inj.name:
        for layer in inj.layers.values():
            layer.adapter.requires_grad_(trainable)
        return
    if name not in inj.parked:
        raise ValueError(f"no adapter named {name!r}; this model has {named_adapters(model)}")
    config, state = inj.parked.pop(name)
    for layer in inj.layers.values():
        layer.adapter.requires_grad_(False)
        layer.activate(name, inj.name)
        layer.adapter.requires_grad_(trainable)
        _take_mode(layer, layer.training)
    inj.parked[inj.name] = (inj.config, inj.state)
    inj.name, inj.config, inj.state = name, config, state


def delete_named_adapter(model: nn.Module, name: str) -> None:
    """Remove parked adapter ``name`` (the active one cannot be deleted: activate another)."""
    inj = require_injection(model)
    if name == inj.name:
        raise ValueError(
            f"adapter {name!r} is active; set another adapter active before deleting it "
            "(or unload the model's adapters)"
        )
    if name not in inj.parked:
        raise ValueError(f"no adapter named {name!r}; this model has {named_adapters(model)}")
    del inj.parked[name]
    for layer in inj.layers.values():
        layer.drop(name)
