"""One optimizer object for the adapter weights and, separately, the FRAME expert orders.

FRAME's per-expert order logits θ (parameters whose name ends in ``order_logits``) are trained by
their own optimizer (METHODS: AdamW, lr 1e-3, weight decay 0, betas (0.9, 0.999), the same schedule
shape as the main optimizer and their own grad-norm clip), because their gradients are orders of
magnitude larger than those of the expert factors. :class:`AdapterOptimizer` holds the two inner
optimizers and presents them as a single :class:`torch.optim.Optimizer`, so that LR schedulers,
``accelerate`` and ``transformers.Trainer`` step, schedule, checkpoint and resume both together.

Build one with :func:`build_optimizer`; see ``docs/optim.md`` for usage with a plain loop, a
scheduler and a Hugging Face ``Trainer``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from itertools import chain
from typing import Any

import torch
from torch import nn

from .engines import deepspeed_evidence, refuse_unsupported_engine

__all__ = [
    "AdapterOptimizer",
    "build_optimizer",
    "deepspeed_evidence",
    "is_order_parameter",
    "refuse_unsupported_engine",
]

ORDER_SUFFIX = "order_logits"

# Key stored in every param group built here ("main_decay", "main_no_decay" or "order"); it is part
# of the group, so it is saved in the state dict and checked again on load.
GROUP_NAME_KEY = "name"

_HOOK_ATTRS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def is_order_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` is a FRAME order logit θ.

    Args:
        name: a qualified parameter name as given by ``nn.Module.named_parameters()``, e.g.
            ``"model.layers.0.self_attn.q_proj.adapter.order_logits"``.

    Returns:
        ``True`` when ``name`` ends with ``"order_logits"``.
    """
    return name.endswith(ORDER_SUFFIX)


def _check_clip(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"{what} must be a positive number, math.inf (measure the norm without clipping) or "
            f"None (no clipping); got {value}"
        )
    return value


def _make_inner(
    optimizer_cls: Callable[..., torch.optim.Optimizer],
    groups: list[dict[str, Any]],
    kwargs: dict[str, Any],
) -> torch.optim.Optimizer:
    """Instantiate ``optimizer_cls``; with no groups, an instance that holds no parameters."""
    if groups:
        return optimizer_cls(groups, **kwargs)
    # torch optimizers refuse an empty parameter list; build one over an empty group and drop it.
    opt = optimizer_cls([{"params": []}], **kwargs)
    opt.param_groups.clear()
    return opt


def _params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


class _StateView(MutableMapping):
    """``AdapterOptimizer.state``: the inner optimizers' per-parameter state, routed by owner."""

    def __init__(self, owner: AdapterOptimizer) -> None:
        self._owner = owner

    def _state_for(self, param: torch.Tensor) -> MutableMapping:
        order_params = _params_of(self._owner.order)
        if any(param is q for q in order_params):
            return self._owner.order.state
        return self._owner.main.state

    def __getitem__(self, param: torch.Tensor) -> Any:
        return self._state_for(param)[param]

    def __setitem__(self, param: torch.Tensor, value: Any) -> None:
        self._state_for(param)[param] = value

    def __delitem__(self, param: torch.Tensor) -> None:
        del self._state_for(param)[param]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return chain(iter(self._owner.main.state), iter(self._owner.order.state))

    def __len__(self) -> int:
        return len(self._owner.main.state) + len(self._owner.order.state)

    def __repr__(self) -> str:
        main, order = len(self._owner.main.state), len(self._owner.order.state)
        return f"_StateView(main={main}, order={order})"


class AdapterOptimizer(torch.optim.Optimizer):
    """Two inner optimizers (adapter weights, FRAME orders) behind one ``torch.optim.Optimizer``.

    * :meth:`step` clips each set to its own max grad norm (when set), then steps ``main`` and
      ``order``; the pre-clip norms are kept in :attr:`last_grad_norms`.
    * :meth:`zero_grad` clears both.
    * :attr:`param_groups` is the list ``main.param_groups + order.param_groups`` holding the
      *same* dict objects, so an LR scheduler built on this object (``LambdaLR``,
      ``transformers.get_cosine_schedule_with_warmup``, ...) scales both sets with the same shape,
      each relative to its own initial lr.
    * :meth:`state_dict` / :meth:`load_state_dict` cover both, in the standard single-optimizer
      layout (main groups first, then order groups; parameter indices numbered across all of
      them), so a checkpoint resumes both exactly.

    It subclasses ``torch.optim.Optimizer`` (LR schedulers and ``accelerate`` check that) without
    calling its ``__init__``: there is no parameter bookkeeping of its own, everything lives in
    the inner optimizers. Step hooks (``register_step_pre_hook`` / ``register_step_post_hook``)
    and state-dict hooks work on the composite.

    Attributes:
        main: the optimizer of the trainable non-order parameters (may hold no parameters).
        order: the optimizer of the ``*order_logits`` parameters (may hold no parameters).
        max_grad_norm: clip for ``main`` (``None``: no clipping).
        order_max_grad_norm: clip for ``order`` (``None``: no clipping).
        foreach: passed to ``torch.nn.utils.clip_grad_norm_``.
        steps_taken: how many times :meth:`step` ran (not saved in the state dict).
    """

    def __init__(
        self,
        main: torch.optim.Optimizer,
        order: torch.optim.Optimizer,
        max_grad_norm: float | None = 1.0,
        order_max_grad_norm: float | None = 1.0,
        foreach: bool | None = None,
    ) -> None:
        """Wrap two existing optimizers; prefer :func:`build_optimizer`, which also builds them.

        Args:
            main: optimizer of the adapter weights (non-order trainable parameters).
            order: optimizer of the order logits.
            max_grad_norm: grad-norm clip applied to ``main``'s parameters before each step;
                ``None`` disables it, ``math.inf`` only measures the norm.
            order_max_grad_norm: the same for ``order``'s parameters.
            foreach: ``foreach`` argument of ``torch.nn.utils.clip_grad_norm_``.

        Raises:
            RuntimeError: under DeepSpeed (:func:`refuse_unsupported_engine`); checked again at
                the first :meth:`step`, since an ``Accelerator`` may be set up after this.
            TypeError: if ``main`` or ``order`` is not a ``torch.optim.Optimizer``.
            ValueError: if a clip value is not positive, or a parameter is in both optimizers.
        """
        refuse_unsupported_engine()
        for what, opt in (("main", main), ("order", order)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"{what} must be a torch.optim.Optimizer, got {type(opt).__name__}")
            if isinstance(opt, AdapterOptimizer):
                raise TypeError(f"{what} must not itself be an AdapterOptimizer")
        main_ids = {id(p) for p in _params_of(main)}
        if any(id(p) in main_ids for p in _params_of(order)):
            raise ValueError("a parameter is in both the main and the order optimizer")
        self.main = main
        self.order = order
        self.max_grad_norm = _check_clip(max_grad_norm, "max_grad_norm")
        self.order_max_grad_norm = _check_clip(order_max_grad_norm, "order_max_grad_norm")
        self.foreach = foreach
        self.defaults = main.defaults
        self._last_grad_norms: dict[str, torch.Tensor | None] = {"main": None, "order": None}
        self._init_hooks()
        self._warned_capturable_if_run_uncaptured = True
        self.steps_taken = 0

    # ---- torch.optim.Optimizer plumbing -------------------------------------------------------

    def _init_hooks(self) -> None:
        for attr in _HOOK_ATTRS:
            if attr not in self.__dict__:
                setattr(self, attr, OrderedDict())
        # Wrap the class's step once with torch's hook/profiler wrapper, as Optimizer.__init__ does
        self._patch_step_function()

    def __getstate__(self) -> dict[str, Any]:
        # "step" is the instance attribute an LR scheduler patches in (a closure over a weakref).
        skip = {*_HOOK_ATTRS, "step", "_opt_called"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_hooks()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_grad_norm={self.max_grad_norm}, "
            f"order_max_grad_norm={self.order_max_grad_norm},\n"
            f"  main={self.main!r},\n  order={self.order!r})"
        )

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """``main.param_groups + order.param_groups`` (a new list of the same group dicts)."""
        return self.main.param_groups + self.order.param_groups

    @property
    def state(self) -> MutableMapping:
        """Per-parameter optimizer state of both inner optimizers, looked up by parameter."""
        return _StateView(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the **main** optimizer (use ``self.order.add_param_group`` for orders).

        Args:
            param_group: a param group dict as accepted by ``torch.optim.Optimizer``.

        Raises:
            ValueError: if one of its parameters is already in the order optimizer.
        """
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        order_ids = {id(p) for p in _params_of(self.order)}
        if any(id(p) in order_ids for p in params):
            raise ValueError("some parameters appear in the order optimizer already")
        self.main.add_param_group({**param_group, "params": params})

    # ---- stepping -------------------------------------------------------------------------------

    def _clip(self, opt: torch.optim.Optimizer, max_norm: float | None) -> torch.Tensor | None:
        if max_norm is None:
            return None
        grads_params = [p for p in _params_of(opt) if p.grad is not None]
        if not grads_params:
            return None
        return torch.nn.utils.clip_grad_norm_(grads_params, max_norm, foreach=self.foreach)

    def clip_gradients(self) -> dict[str, torch.Tensor | None]:
        """Clip each set to its own max norm now, as :meth:`step` would, and return the pre-clip
        norms as device tensors (no host sync; also kept in :attr:`last_grad_norm_tensors`).

        The next :meth:`step` then steps without clipping again, so a caller can look at the
        norms (e.g. refuse a non-finite step, as the Trainer does) before the parameters change.
        :meth:`zero_grad` forgets a clip whose step was skipped.
        """
        self._last_grad_norms = {
            "main": self._clip(self.main, self.max_grad_norm),
            "order": self._clip(self.order, self.order_max_grad_norm),
        }
        self._clipped = True
        return dict(self._last_grad_norms)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip each set to its own max norm (if set; skipped when :meth:`clip_gradients` already
        clipped these gradients), then step ``main`` and ``order``.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss; it is
                called once (with grad enabled) before clipping, and its result is returned.

        Returns:
            The closure's return value, or ``None``.

        Raises:
            RuntimeError: at the first step, under DeepSpeed (:func:`refuse_unsupported_engine`).
        """
        if not self.steps_taken:
            refuse_unsupported_engine()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.__dict__.pop("_clipped", False):
            self.clip_gradients()
            self.__dict__.pop("_clipped", None)
        self.main.step()
        self.order.step()
        self.steps_taken = self.__dict__.get("steps_taken", 0) + 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of both sets.

        Args:
            set_to_none: set ``.grad`` to ``None`` (default) instead of zeroing it in place.
        """
        self.__dict__.pop("_clipped", None)  # new gradients are clipped afresh
        self.main.zero_grad(set_to_none=set_to_none)
        self.order.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """Forward ``train()`` to inner optimizers that have it (schedule-free optimizers)."""
        for opt in (self.main, self.order):
            if callable(getattr(opt, "train", None)):
                opt.train()

    def eval(self) -> None:
        """Forward ``eval()`` to inner optimizers that have it (schedule-free optimizers)."""
        for opt in (self.main, self.order):
            if callable(getattr(opt, "eval", None)):
                opt.eval()

    @property
    def last_grad_norms(self) -> dict[str, float | None]:
        """Pre-clip grad norms of the last :meth:`step`, as floats: ``{"main": ..., "order": ...}``.

        A value is ``None`` when that set has no clip configured (pass ``math.inf`` to measure
        without clipping) or had no gradients. The norms are stored as the tensors
        ``clip_grad_norm_`` returns; reading this property converts them (one host sync each).
        """
        return {k: None if v is None else float(v) for k, v in self._last_grad_norms.items()}

    @property
    def last_grad_norm_tensors(self) -> dict[str, torch.Tensor | None]:
        """The same norms as :attr:`last_grad_norms`, as unconverted tensors (no host sync)."""
        return dict(self._last_grad_norms)

    # ---- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' state in the standard ``{"state", "param_groups"}`` layout.

        Main groups come first, then order groups; parameter indices run across all groups
        (order indices are offset by the number of main parameters), exactly as one optimizer
        holding all these groups would number them.

        Returns:
            The state dict (tensors are referenced, not copied, as in torch).
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        main_sd = self.main.state_dict()
        order_sd = self.order.state_dict()
        offset = sum(len(g["params"]) for g in main_sd["param_groups"])
        state = dict(main_sd["state"])
        state.update({k + offset: v for k, v in order_sd["state"].items()})
        groups = list(main_sd["param_groups"])
        groups += [
            {**g, "params": [i + offset for i in g["params"]]} for g in order_sd["param_groups"]
        ]
        sd: dict[str, Any] = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, sd)
            if hook_result is not None:
                sd = hook_result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict produced by :meth:`state_dict` (of an identically built optimizer).

        Args:
            state_dict: ``{"state": ..., "param_groups": ...}``; the first
                ``len(main.param_groups)`` groups go to ``main``, the rest to ``order``.

        Raises:
            ValueError: if the number or the names of the groups do not match.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        groups = list(state_dict["param_groups"])
        n_main, n_order = len(self.main.param_groups), len(self.order.param_groups)
        if len(groups) != n_main + n_order:
            raise ValueError(
                f"state dict has {len(groups)} param groups, this optimizer has {n_main} main + "
                f"{n_order} order groups; build it the same way as the saved one"
            )
        for saved, current in zip(groups, self.param_groups, strict=True):
            saved_name = saved.get(GROUP_NAME_KEY)
            current_name = current.get(GROUP_NAME_KEY)
            if saved_name != current_name:
                raise ValueError(
                    f"param group name mismatch: saved {saved_name!r}, current {current_name!r}"
                )
        state = state_dict["state"]
        for opt, part in ((self.main, groups[:n_main]), (self.order, groups[n_main:])):
            indices = {i for g in part for i in g["params"]}
            opt.load_state_dict(
                {"state": {k: v for k, v in state.items() if k in indices}, "param_groups": part}
            )
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


def build_optimizer(
    model: nn.Module,
    lr: float = 2e-4,
    order_lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] | None = (0.9, 0.999),
    order_weight_decay: float = 0.0,
    order_betas: tuple[float, float] | None = (0.9, 0.999),
    max_grad_norm: float | None = 1.0,
    order_max_grad_norm: float | None = 1.0,
    optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
    order_optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
    order_optimizer_kwargs: dict[str, Any] | None = None,
    **optimizer_kwargs: Any,
) -> AdapterOptimizer:
    """Build the :class:`AdapterOptimizer` for the trainable parameters of ``model``.

    Only parameters with ``requires_grad`` are included (inject adapters and freeze the base
    first). Parameters whose name ends in ``order_logits`` (:func:`is_order_parameter`) go to the
    order optimizer, one group ``"order"``. All others go to the main optimizer in nanoGPT-style
    groups: ``"main_decay"`` (tensors with >= 2 dims, ``weight_decay``) and ``"main_no_decay"``
    (0/1-dim tensors such as biases and norm scales, no decay). Empty groups are left out; a model
    without order parameters gets an order optimizer holding no parameters (same API).

    Clipping defaults: both sets are clipped to norm 1.0 **separately**. The order logits have
    gradients orders of magnitude larger than the adapter factors (chirp phases grow like
    πn²/N), so one joint clip would be dominated by them and would shrink the adapter update to
    almost nothing; clipping per set keeps each at the scale its own optimizer expects. 1.0 for
    ``main`` reproduces the clip a stock Hugging Face ``Trainer`` applies (``max_grad_norm=1.0``)
    — so when training with a ``Trainer``, set ``TrainingArguments(max_grad_norm=0.0)`` (its
    clip covers all model parameters jointly, orders included) and let this optimizer clip.
    Pass ``None`` to disable a clip or ``math.inf`` to only measure the norm (for logging).

    Args:
        model: the model with adapters injected.
        lr: learning rate of the main (adapter) parameters.
        order_lr: learning rate of the order logits (METHODS default 1e-3).
        weight_decay: weight decay of the >= 2-dim main parameters.
        betas: ``betas`` for ``optimizer_cls``; ``None`` omits the argument (optimizers without it).
        order_weight_decay: weight decay of the order logits (METHODS default 0).
        order_betas: ``betas`` for ``order_optimizer_cls``; ``None`` omits the argument.
        max_grad_norm: grad-norm clip of the main parameters (``None``: off).
        order_max_grad_norm: grad-norm clip of the order logits (``None``: off).
        optimizer_cls: class (or factory) of the main optimizer, called as
            ``optimizer_cls(groups, lr=lr, betas=betas, **optimizer_kwargs)``.
        order_optimizer_cls: class of the order optimizer (METHODS default AdamW).
        order_optimizer_kwargs: extra keyword arguments for ``order_optimizer_cls``.
        **optimizer_kwargs: extra keyword arguments for ``optimizer_cls`` (e.g. ``eps``,
            ``foreach``, ``fused``).

    Returns:
        The composite optimizer; ``.main`` and ``.order`` are the inner optimizers.

    Raises:
        ValueError: if ``model`` has no trainable parameters, or a clip value is not positive.
        RuntimeError: under DeepSpeed, which replaces or wraps this optimizer
            (:func:`refuse_unsupported_engine`).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    order: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_order_parameter(name):
            order.append(param)
        elif param.dim() >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    if not (decay or no_decay or order):
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters: inject an adapter first "
            "(and make sure its parameters have requires_grad=True)"
        )

    main_groups = [
        {"params": params, "weight_decay": wd, GROUP_NAME_KEY: group_name}
        for params, wd, group_name in (
            (decay, weight_decay, "main_decay"),
            (no_decay, 0.0, "main_no_decay"),
        )
        if params
    ]
    order_groups = (
        [{"params": order, "weight_decay": order_weight_decay, GROUP_NAME_KEY: "order"}]
        if order
        else []
    )

    main_kwargs = {"lr": lr, "weight_decay": weight_decay, **optimizer_kwargs}
    if betas is not None:
        main_kwargs["betas"] = tuple(betas)
    order_kwargs = {"lr": order_lr, "weight_decay": order_weight_decay}
    if order_betas is not None:
        order_kwargs["betas"] = tuple(order_betas)
    order_kwargs.update(order_optimizer_kwargs or {})

    return AdapterOptimizer(
        _make_inner(optimizer_cls, main_groups, main_kwargs),
        _make_inner(order_optimizer_cls, order_groups, order_kwargs),
        max_grad_norm=max_grad_norm,
        order_max_grad_norm=order_max_grad_norm,
    )
