"""Inject adapters into any ``nn.Module`` (a Hugging Face model or a plain MLP) and manage them.

``inject`` swaps every target Linear / GPT-2 Conv1D for an :class:`AdaptedLinear`, freezes
everything else, and registers one forward pre-hook on the model that opens a fresh routing
record per forward, captures the call's ``attention_mask`` for the routing statistics and, when
gradients are on, lets each method prepare what its layers share (:func:`prepare_layers`). No
model code is patched. Every check runs before the model is touched, so a failed ``inject``
leaves it unchanged; :func:`unload` undoes an injection exactly.

A second hook, after the forward, puts the routing losses into the model's own loss: in training
mode, when the call had ``labels`` and the output has a ``loss``, ``outputs.loss`` becomes
``loss + aux`` (once per forward), so ``transformers.Trainer`` and other trainers that read
``outputs.loss`` train on it (see :func:`set_aux_in_loss` and docs/training.md).

Methods whose adapter is a :class:`~.blocks.BlockAdapter` (MixLoRA) adapt whole FFN blocks
instead: each targeted block becomes an :class:`~.blocks.AdaptedBlock`, and the targets outside
blocks get the adapter class the block adapter names (plain LoRA), all in one injection.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..routing import RoutingState
from ..routing.context import input_embedding_of, model_inputs
from .adapter import (
    AdaptedLinear,
    Adapter,
    AdapterWrapper,
    LayerContext,
    layer_features,
)
from .blocks import AdaptedBlock, build_block, split_block_targets
from .config import AdapterConfig, adapter_class
from .targets import match_targets

STATE_ATTR = "_frame_peft"


@dataclass
class Injection:
    """What ``inject`` did to a model (a plain attribute on it, never saved in its state dict)."""

    config: AdapterConfig
    state: RoutingState
    layers: dict[str, AdaptedLinear | AdaptedBlock]  # blocks for BlockAdapter methods
    requires_grad: dict[str, bool]
    hook: torch.utils.hooks.RemovableHandle | None = field(default=None, repr=False)
    aux_in_loss: bool = True  # the loss hook adds aux to outputs.loss (see set_aux_in_loss)
    loss_hook: torch.utils.hooks.RemovableHandle | None = field(default=None, repr=False)
    warned_double: bool = field(default=False, repr=False)
    name: str = "default"  # this adapter's name; others are parked (core/named.py)
    parked: dict[str, tuple[AdapterConfig, RoutingState]] = field(default_factory=dict)


def injection_owner(model: nn.Module) -> nn.Module | None:
    """The module that holds the injection: ``model`` or the model it wraps (DDP/FSDP
    ``.module``, ``torch.compile``'s ``_orig_mod``, a PEFT model's ``base_model.model``)."""
    peft_inner = getattr(getattr(model, "base_model", None), "model", None)
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None), peft_inner):
        if isinstance(m, nn.Module) and isinstance(getattr(m, STATE_ATTR, None), Injection):
            return m
    return None


def find_injection(model: nn.Module) -> Injection | None:
    """The :class:`Injection` of ``model`` or of a model it wraps (see :func:`injection_owner`)."""
    owner = injection_owner(model)
    return None if owner is None else getattr(owner, STATE_ATTR)


def require_injection(model: nn.Module) -> Injection:
    inj = find_injection(model)
    if inj is None:
        raise ValueError(
            "this model has no frame-peft adapters; call frame_peft.inject(model, config)"
        )
    return inj


def _refuse_peft_adapters(model: nn.Module) -> None:
    """``ValueError`` when ``model`` already carries PEFT adapters (a PeftModel or PEFT tuner
    layers such as LoRA's ``lora_A``/``lora_B``): wrapping them would adapt the adapters."""
    try:  # optional; imported here to keep `import frame_peft` light
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without PEFT only its layer names can be recognised
        PeftModel = BaseTunerLayer = type("NoPeft", (), {})

    if isinstance(model, PeftModel):
        raise ValueError(
            "this is a PEFT PeftModel: frame-peft adapters cannot be stacked on PEFT adapters. "
            "Inject into the plain base model, or merge the PEFT adapter first "
            "(model = model.merge_and_unload())"
        )
    for name, module in model.named_modules():
        is_tuner = isinstance(module, BaseTunerLayer)
        if is_tuner or name.rpartition(".")[2] in ("lora_A", "lora_B"):
            layer = name if is_tuner else name.rpartition(".")[0]
            raise ValueError(
                f"this model already carries PEFT adapters (at {layer!r}, "
                f"{type(module).__name__}): frame-peft adapters cannot be stacked on them. "
                "Inject into the plain base model, or merge the PEFT adapter first "
                "(peft_model.merge_and_unload())"
            )


def layer_indices(names: list[str]) -> dict[str, int | None]:
    """Depth of each module: the first integer path component (``model.layers.3.mlp`` -> 3).

    Adapters whose behaviour depends on depth (HMoRA's routing mix) read it from their
    :class:`~.adapter.LayerContext` (``layer_index`` None when the name has no integer
    component; ``num_layers``).
    """
    out = {}
    for name in names:
        parts = [p for p in name.split(".") if p.isdigit()]
        out[name] = int(parts[0]) if parts else None
    return out


def layer_contexts(names: list[str], state: RoutingState) -> dict[str, LayerContext]:
    """The :class:`~.adapter.LayerContext` of each adapted module: its depth
    (:func:`layer_indices`), the shared routing ``state``, and ``num_layers`` = one more than the
    largest depth among ``names``."""
    depth = layer_indices(names)
    num_layers = max((d for d in depth.values() if d is not None), default=-1) + 1
    return {n: LayerContext(n, state, depth[n], num_layers) for n in names}


def inject(
    model: nn.Module,
    config: AdapterConfig,
    *,
    add_aux_to_loss: bool = True,
    _relaxed_targets: bool = False,
) -> nn.Module:
    """Add the adapters ``config`` describes to ``model`` in place, freeze the rest, return it.

    ``add_aux_to_loss`` (default True): in training mode, a forward called with ``labels`` returns
    ``outputs.loss`` plus this forward's routing loss (:func:`aux_loss`), weighted for gradient
    accumulation like frame-peft's own Trainer (docs/training.md). Set False (or call
    :func:`set_aux_in_loss` later) for code that adds ``fp.aux_loss(model)`` itself.

    The new adapter modules take the model's mode (``model.training``): injecting into a model in
    eval mode gives adapters in eval mode (no dropout, no training-time updates such as FlyLoRA's
    bias).

    Raises ``ValueError`` (leaving the model unchanged) if the model already has adapters
    (frame-peft's or PEFT's), nothing matches, a name of a ``target_modules`` list matches nothing
    (see ``allow_unmatched``), or a module's settings are invalid for its shapes.
    ``_relaxed_targets`` (internal, :func:`load_adapter`) skips the per-name check: the saved
    weights name the exact modules.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(
            f"config must be an AdapterConfig (e.g. FrameConfig), got {type(config).__name__}"
        )
    if find_injection(model) is not None or any(
        isinstance(m, AdapterWrapper) for m in model.modules()
    ):
        raise ValueError(
            "this model already has frame-peft adapters; call frame_peft.unload(model) (or "
            "merge_and_unload) before injecting again"
        )
    _refuse_peft_adapters(model)
    targets = match_targets(
        model, config.target_modules, True if _relaxed_targets else config.allow_unmatched
    )
    cls = adapter_class(config.method)
    # Block methods (core/blocks.py) take whole FFN blocks; their other targets get plain Linears.
    blocks, targets = split_block_targets(model, targets, cls)
    linear_cls = adapter_class(cls.linear_method) if blocks else cls
    state = RoutingState(input_embedding_of(model))  # embeddings for model-level encoders
    built: dict[str, AdaptedLinear | AdaptedBlock] = {}
    contexts = layer_contexts([n for n, _ in targets] + [b.name for b in blocks], state)
    for name, module in targets:  # build everything first: errors leave the model untouched
        module_config = config.for_module(name)
        d_in, d_out = layer_features(module)
        adapter: Adapter = linear_cls(d_in, d_out, module_config, contexts[name])
        adapter.to(device=module.weight.device)
        built[name] = AdaptedLinear(module, adapter, module_config.dropout)
    for block in blocks:
        built[block.name] = build_block(
            cls, block, config.for_module(block.name), contexts[block.name]
        )
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in built.items():
        _take_mode(layer, model.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        for p in layer.adapter.parameters():
            p.requires_grad_(True)
    inj = Injection(config, state, built, requires_grad, aux_in_loss=bool(add_aux_to_loss))
    # Hooks are objects, not closures, so that copy.deepcopy/pickle of the model give the copy
    # hooks that point at the copy's state and layers.
    inj.hook = model.register_forward_pre_hook(_PreHook(inj), with_kwargs=True)
    inj.loss_hook = model.register_forward_hook(_LossHook(inj), with_kwargs=True)
    setattr(model, STATE_ATTR, inj)
    return model


def prepare_layers(layers: list[AdaptedLinear], scratch: dict) -> None:
    """Call each adapter class's ``prepare_forward`` once with its enabled layers."""
    by_class: dict[type, list[Adapter]] = {}
    for layer in layers:
        if layer.enabled:
            by_class.setdefault(type(layer.adapter), []).append(layer.adapter)
    for cls, adapters in by_class.items():
        cls.prepare_forward(adapters, scratch)


def _checkpointing(model: nn.Module) -> bool:
    """Hugging Face gradient checkpointing is on for some block of ``model``.

    Shared per-forward work is skipped then: a reentrant recompute would backpropagate through
    it once per block, so each layer computes its own (correct under both checkpoint modes).
    """
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _take_mode(layer: nn.Module, training: bool) -> None:
    """Put the new parts of an adapted layer (adapter, dropout, wrapper) in the model's mode; the
    base layer keeps its own."""
    base = {id(m) for m in layer.base_layer.modules()}
    for m in layer.modules():
        if id(m) not in base:
            m.training = training


class _PreHook:
    """The forward pre-hook: opens this forward's routing record and prepares shared work."""

    def __init__(self, inj: Injection) -> None:
        self.inj = inj  # read at call time: the active named adapter may change

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, state = kwargs.get("attention_mask"), self.inj.state
        state.begin_forward(
            mask if isinstance(mask, torch.Tensor) else None, model_inputs(args, kwargs)
        )
        if torch.is_grad_enabled() and not _checkpointing(module):
            prepare_layers(list(self.inj.layers.values()), state.current.scratch)


def _loss_of(output: object) -> torch.Tensor | None:
    """The scalar loss of a model output (ModelOutput / dict ``"loss"``, or a tuple's first
    element), or None."""
    if isinstance(output, dict):
        loss = output.get("loss")
    elif isinstance(output, tuple) and output:
        loss = output[0]
    else:
        loss = None
    return loss if isinstance(loss, torch.Tensor) and loss.dim() == 0 else None


def _with_loss(output: object, loss: torch.Tensor) -> object:
    if isinstance(output, tuple):
        return (loss, *output[1:])
    if type(output) is dict:
        return {**output, "loss": loss}
    output["loss"] = loss  # ModelOutput: sets the key and the attribute
    return output


def aux_weight(kwargs: dict) -> torch.Tensor | float:
    """The weight of this micro-batch's aux in ``outputs.loss``: 1, or, when the call carries
    ``num_items_in_batch`` (transformers' Trainer normalises the loss over the whole accumulated
    batch and then does not divide by the accumulation steps), this micro-batch's share of the
    labelled tokens, ``n / num_items_in_batch``, so the weights of one optimizer step sum to 1."""
    total = kwargs.get("num_items_in_batch")
    if total is None:
        return 1.0
    shifted = kwargs.get("shift_labels")
    labels = shifted if isinstance(shifted, torch.Tensor) else kwargs["labels"][..., 1:]
    n = (labels != -100).sum()
    return n.float() / torch.as_tensor(total, device=n.device).float().clamp_min(1)


class _LossHook:
    """The forward hook that adds this forward's aux loss to ``outputs.loss`` (see inject)."""

    def __init__(self, inj: Injection) -> None:
        self.inj = inj

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        inj = self.inj
        rec = inj.state.current
        if not (inj.aux_in_loss and module.training and rec.from_model) or rec.aux_in_loss:
            return None
        if not isinstance(kwargs.get("labels"), torch.Tensor):
            return None  # no labels: the caller computes the loss (frame-peft's Trainer)
        loss = _loss_of(output)
        aux = checked_aux_loss(inj, module)
        if loss is None or aux is None:
            return None
        rec.aux_in_loss = True  # once per forward (nested or repeated hooks add nothing)
        return _with_loss(output, loss + (aux * aux_weight(kwargs)).to(loss.dtype))


def checked_aux_loss(inj: Injection, model: nn.Module) -> torch.Tensor | None:
    """This forward's aux loss (None without one); raises when it should carry a gradient and
    does not. Every reader of the aux loss for training goes through it.

    Reentrant activation checkpointing runs each block's first pass without grad, so the aux
    terms its routers record there have no graph, and the recompute during backward records new
    ones too late: the routing loss would silently not train the routers.
    """
    aux = inj.state.aux_loss()
    if aux is None or aux.requires_grad or not torch.is_grad_enabled() or not model.training:
        return aux
    routers = (
        p for layer in inj.layers.values()
        for n, p in layer.adapter.named_parameters() if "router" in n
    )  # fmt: skip
    if any(p.requires_grad for p in routers):
        raise RuntimeError(
            "this forward's routing (aux) loss carries no gradient although the routers train: "
            "it was recorded inside blocks run without grad, which reentrant activation "
            "checkpointing does. Use gradient_checkpointing_enable(gradient_checkpointing_kwargs="
            "{'use_reentrant': False}) (frame-peft's Trainer does), or train without the routing "
            "loss (aux_loss='none' in the adapter config, fp.set_aux_in_loss(model, False))"
        )
    return aux


def set_aux_in_loss(model: nn.Module, enabled: bool) -> None:
    """Turn on/off adding the routing loss to ``outputs.loss`` (see :func:`inject`).

    Off for training code that adds ``fp.aux_loss(model)`` to the model's loss itself; it is a
    runtime switch of this injection (not saved with the adapter).
    """
    require_injection(model).aux_in_loss = bool(enabled)


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapters without merging: restore the original modules and ``requires_grad``."""
    inj = require_injection(model)
    target = injection_owner(model)
    for name, layer in inj.layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, layer.base_layer)
    _forget(target, inj)
    return target


def _forget(model: nn.Module, inj: Injection) -> None:
    for handle in (inj.hook, inj.loss_hook):
        if handle is not None:
            handle.remove()
    for n, p in model.named_parameters():
        if n in inj.requires_grad:
            p.requires_grad_(inj.requires_grad[n])
    delattr(model, STATE_ATTR)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear | AdaptedBlock]:
    """``{module_name: AdaptedLinear | AdaptedBlock}`` for every adapted module (blocks for
    block-level methods such as MixLoRA; see :mod:`.blocks`)."""
    return dict(require_injection(model).layers)


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in require_injection(model).layers.values():
        layer.enabled = enabled


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the block (adapters re-enabled after, even on error)."""
    layers = require_injection(model).layers.values()
    before = [layer.enabled for layer in layers]
    set_adapters_enabled(model, False)
    try:
        yield model
    finally:
        for layer, was in zip(layers, before, strict=True):
            layer.enabled = was


def aux_loss(model: nn.Module) -> torch.Tensor:
    """The auxiliary routing loss of the model's latest forward, ready to add to the task loss.

    Mean over mixture modules of each module's coefficient-weighted losses (balance, z),
    computed over non-padding tokens only. A zero tensor for adapters without routing.
    Warns once when that forward's ``outputs.loss`` already holds it (adding it again would
    count it twice; see :func:`set_aux_in_loss`).
    """
    inj = require_injection(model)
    value = checked_aux_loss(inj, model)
    if value is not None and inj.state.current.aux_in_loss and not inj.warned_double:
        inj.warned_double = True
        warnings.warn(
            "the latest forward's outputs.loss already includes the routing loss (it was called "
            "with labels): adding fp.aux_loss(model) to it counts it twice. Use outputs.loss "
            "alone, or call fp.set_aux_in_loss(model, False) to add it yourself",
            RuntimeWarning,
            stacklevel=2,
        )
    if value is None:
        return torch.zeros((), device=_device_of(model))
    return value


def aux_stats(model: nn.Module) -> dict[str, float]:
    """Per-kind means of the latest forward's aux losses (floats, for logging)."""
    return require_injection(model).state.aux_stats()


def orders(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module_name: tensor[E]}``: the current fractional orders of every FRAME module."""
    out = {}
    for name, layer in require_injection(model).layers.items():
        domain = layer.adapter.expert_domain()
        if domain is not None:
            out[name] = domain.orders.detach().clone()
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "active_per_token"}``.

    ``total`` counts every parameter (base and adapters), ``trainable`` those that require grad,
    ``active_per_token`` the adapter parameters one token uses (k of E experts plus routers and
    orders); papers report it as a share of the base model's parameters.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inj = find_injection(model)
    active = sum(layer.adapter.active_parameters() for layer in inj.layers.values()) if inj else 0
    return {"total": total, "trainable": trainable, "active_per_token": active}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
