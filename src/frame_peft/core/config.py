"""Adapter configs: dataclasses validated on construction, serialised to versioned JSON.

Every method subclasses :class:`AdapterConfig` and registers itself with :func:`register_method`,
so ``config_from_dict`` (and therefore ``load_adapter``) needs no hint beyond the ``method`` field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

FORMAT_VERSION = 1

# Fields that ``overrides`` may change per module, by regex on the module name.
OVERRIDABLE = ("rank", "alpha", "num_experts", "top_k", "dropout")

_REGISTRY: dict[str, tuple[type[AdapterConfig], type]] = {}

#: How a router's weight (E, d_in) is initialised (:class:`RoutingConfig.router_init`).
ROUTER_INITS = ("normal", "kaiming_uniform")


def register_method(config_cls: type[AdapterConfig], adapter_cls: type) -> None:
    """Make a method available to ``inject``/``load_adapter`` under ``config_cls.method``.

    Registering the same pair again is a no-op (re-imports); another pair under a taken name is
    refused, since it would silently change what every saved adapter of that method loads as."""
    taken = _REGISTRY.get(config_cls.method)
    if taken is not None and taken != (config_cls, adapter_cls):
        raise ValueError(
            f"a method named {config_cls.method!r} is already registered "
            f"({taken[0].__module__}.{taken[0].__name__}); give {config_cls.__name__} another "
            "`method` name"
        )
    _REGISTRY[config_cls.method] = (config_cls, adapter_cls)


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def _entry(method: str) -> tuple[type[AdapterConfig], type]:
    _ensure_builtin_methods()
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; known methods: {method_names()}")
    return _REGISTRY[method]


def adapter_class(method: str) -> type:
    """The adapter module class registered for ``method``."""
    return _entry(method)[1]


def config_class(method: str) -> type[AdapterConfig]:
    """The config dataclass registered for ``method`` (e.g. ``FrameConfig`` for ``"frame"``)."""
    return _entry(method)[0]


def _ensure_builtin_methods() -> None:
    from .. import methods  # noqa: F401  (registers the built-in methods on import)


def check_positive_int(name: str, value: Any) -> None:
    """``ValueError`` unless ``value`` is an int > 0 (``True`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def is_number(value: Any) -> bool:
    """A finite int or float (``True``/``False`` are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_number(name: str, value: Any, low: float, high: float = math.inf, *, closed_high=False):
    """``ValueError`` unless ``value`` is a finite number in ``[low, high)`` (``[low, high]`` with
    ``closed_high``)."""
    ok = is_number(value) and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        bound = "]" if closed_high else ")"
        span = f"a number >= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}{bound}"
        raise ValueError(f"{name} must be {span}, got {value!r}")


@dataclass
class AdapterConfig:
    """Fields shared by every adapter.

    A config describes a whole model's adapters; :meth:`for_module` gives the typed config of one
    module (its ``overrides`` applied, ``alpha`` resolved), which is what an adapter receives.
    Subclasses validate in :meth:`validate` (called for the config and for every override).

    Args:
        target_modules: module names (a list, matched on the full name or its trailing
            dot-separated suffix, as in PEFT), one regex string (full match on the module name),
            or ``"all-linear"`` (every Linear/Conv1D except the output head). Every name of a
            list must match at least one Linear/Conv1D, or ``inject`` raises (a typo must not
            silently train a different model).
        allow_unmatched: names of ``target_modules`` (a list) that may match nothing, for a config
            shared by architectures where some lack that module; ``True`` allows every name.
        rank: low-rank dimension r of each expert (or of the LoRA).
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
            ``None`` means ``2·rank``.
        dropout: dropout probability on the adapter input.
        overrides: ``{regex: {field: value}}`` per-module changes of ``rank``, ``alpha``,
            ``num_experts``, ``top_k`` or ``dropout`` (e.g. MoLA-style expert counts per layer).
            The first pattern that matches a module name (``re.search``) wins.
    """

    method: ClassVar[str] = ""

    target_modules: list[str] | str = "all-linear"
    allow_unmatched: list[str] | bool = False
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.05
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.target_modules, list):
            if not self.target_modules or not all(
                isinstance(t, str) and t for t in self.target_modules
            ):
                raise ValueError(
                    "target_modules must be a non-empty list of module names, a regex string, "
                    f"or 'all-linear'; got {self.target_modules!r}"
                )
        elif isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                try:
                    re.compile(self.target_modules)
                except re.error as err:
                    raise ValueError(
                        f"target_modules {self.target_modules!r} is not a valid regex: {err}"
                    ) from err
        else:
            raise ValueError(
                f"target_modules must be a list of names or a string, got {self.target_modules!r}"
            )
        self._check_allow_unmatched()
        if not isinstance(self.format_version, int) or self.format_version < 1:
            raise ValueError(
                f"format_version must be a positive integer, got {self.format_version!r}"
            )
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this adapter config has format version {self.format_version}, newer than the "
                f"{FORMAT_VERSION} this frame-peft reads; upgrade frame-peft to load it"
            )
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must be a dict of regex -> dict, got {self.overrides!r}")
        for pattern, values in self.overrides.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"overrides pattern {pattern!r} is not a valid regex: {err}"
                ) from err
            if not isinstance(values, dict):
                raise ValueError(f"overrides[{pattern!r}] must be a dict, got {values!r}")
            bad = sorted(set(values) - set(self.overridable()))
            if bad:
                raise ValueError(
                    f"overrides[{pattern!r}] sets {bad}, which cannot be set per module for "
                    f"method {self.method!r}; allowed: {list(self.overridable())}"
                )
        self.validate()
        for values in self.overrides.values():
            dataclasses.replace(self, overrides={}, **values)  # validates that module's config

    def _check_allow_unmatched(self) -> None:
        """``allow_unmatched`` is a bool or a list of names taken from a list ``target_modules``."""
        if isinstance(self.allow_unmatched, tuple):
            self.allow_unmatched = list(self.allow_unmatched)
        if isinstance(self.allow_unmatched, bool):
            return
        if not isinstance(self.allow_unmatched, list) or not isinstance(self.target_modules, list):
            raise ValueError(
                "allow_unmatched must be True/False or a list of names from a list "
                f"target_modules, got {self.allow_unmatched!r} (target_modules="
                f"{self.target_modules!r})"
            )
        stray = [t for t in self.allow_unmatched if t not in self.target_modules]
        if stray:
            raise ValueError(
                f"allow_unmatched names {stray}, which are not in target_modules "
                f"{self.target_modules}"
            )

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        names = {f.name for f in dataclasses.fields(cls)}
        return tuple(k for k in OVERRIDABLE if k in names)

    def validate(self) -> None:
        """Check the fields of one module's config; subclasses extend this (call super)."""
        check_positive_int("rank", self.rank)
        if self.alpha is not None and (not is_number(self.alpha) or self.alpha <= 0):
            raise ValueError(
                f"alpha must be a positive number or None (= 2·rank), got {self.alpha!r}"
            )
        check_number("dropout", self.dropout, 0.0, 1.0)

    def for_module(self, module_name: str) -> Self:
        """The typed config of one module: the first matching override applied, ``alpha``
        resolved (``None`` -> ``2·rank``), no ``overrides`` of its own."""
        values: dict[str, Any] = {}
        for pattern, override in self.overrides.items():
            if re.search(pattern, module_name):
                values = dict(override)
                break
        module = dataclasses.replace(self, overrides={}, **values)
        if module.alpha is None:
            module.alpha = 2.0 * module.rank
        return module

    @property
    def scale(self) -> float:
        """``alpha / rank`` of a module config (after :meth:`for_module`)."""
        alpha = 2.0 * self.rank if self.alpha is None else self.alpha
        return float(alpha) / float(self.rank)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass
class RoutingConfig(AdapterConfig):
    """The routing fields every routed method shares, validated once.

    Args:
        num_experts: E experts per module (overridable per module).
        top_k: experts per token, ``1 <= top_k <= num_experts`` (``top_k == num_experts`` is the
            dense softmax router). Methods whose class sets ``dense_top_k`` also accept ``None``
            (dense); methods with ``dense_only`` require ``None``.
        aux_loss: the balance loss, one of the class's ``aux_kinds`` (``"none"`` turns it off).
        aux_loss_coef: coefficient of the balance loss (>= 0).
        z_loss_coef: coefficient of the router z-loss (0 = off).
        router_jitter: multiplicative input noise U(1 − j, 1 + j) for the router in training
            (0 = off), in [0, 1).
        router_init: ``"normal"`` (N(0, 0.02), Switch/Mixtral style) or ``"kaiming_uniform"``
            (``nn.Linear``'s default, U(−1/√d_in, 1/√d_in), as MoLA's and HydraLoRA's code).
    """

    aux_kinds: ClassVar[tuple[str, ...]] = ("switch", "none")
    dense_top_k: ClassVar[bool] = False  # top_k=None (dense) accepted
    dense_only: ClassVar[bool] = False  # top_k must be None (HydraLoRA's router is dense)

    num_experts: int = 8
    top_k: int | None = 2
    aux_loss: str | None = "switch"
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    router_jitter: float = 0.0
    router_init: str = "normal"

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        fields = super().overridable()
        return tuple(f for f in fields if f != "top_k") if cls.dense_only else fields

    def balance_kind(self) -> str:
        """The balance loss this module uses (methods may resolve ``aux_loss=None``)."""
        return self.aux_loss

    def validate(self) -> None:
        super().validate()
        check_positive_int("num_experts", self.num_experts)
        if self.dense_only:
            if self.top_k is not None:
                raise ValueError(
                    f"{self.method} routes densely (every expert on every token); top_k must be "
                    f"None, got {self.top_k!r}"
                )
        elif self.top_k is not None or not self.dense_top_k:
            check_positive_int("top_k", self.top_k)
            if self.top_k > self.num_experts:
                dense = ", or use top_k=None for dense routing" if self.dense_top_k else ""
                raise ValueError(
                    f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts}); lower "
                    f"top_k or add experts{dense}"
                )
        kind = self.balance_kind()
        if kind not in self.aux_kinds:
            raise ValueError(f"aux_loss must be one of {list(self.aux_kinds)}, got {kind!r}")
        check_number("aux_loss_coef", self.aux_loss_coef, 0.0)
        check_number("z_loss_coef", self.z_loss_coef, 0.0)
        check_number("router_jitter", self.router_jitter, 0.0, 1.0)
        if self.router_init not in ROUTER_INITS:
            raise ValueError(
                f"router_init must be one of {list(ROUTER_INITS)}, got {self.router_init!r}"
            )


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from :meth:`AdapterConfig.to_dict` output, dispatching on ``method``."""
    _ensure_builtin_methods()
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError("an adapter config needs a 'method' field (e.g. 'frame', 'lora')")
    data = dict(data)
    method = data.pop("method")
    version = data.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ValueError(
            f"this adapter was saved with config format version {version}, newer than the "
            f"{FORMAT_VERSION} this frame-peft reads; upgrade frame-peft to load it"
        )
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; known methods: {method_names()}")
    cls = _REGISTRY[method][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} for method {method!r}; known: {sorted(known)}"
        )
    return cls(**data)
