"""Adapter configs: dataclasses validated on construction, serialised to versioned JSON.

Every method subclasses :class:`AdapterConfig` and registers itself with :func:`register_method`,
so ``config_from_dict`` (and therefore ``load_adapter``) needs no hint beyond the ``method`` field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

FORMAT_VERSION = 1

# Fields that ``overrides`` may change per module, by regex on the module name.
OVERRIDABLE = ("rank", "alpha", "num_experts", "top_k", "dropout")

_REGISTRY: dict[str, tuple[type[AdapterConfig], type]] = {}


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


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class AdapterConfig:
    """Fields shared by every adapter.

    Args:
        target_modules: module names (a list, matched on the full name or its trailing
            dot-separated suffix, as in PEFT), one regex string (full match on the module name),
            or ``"all-linear"`` (every Linear/Conv1D except the output head).
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
        self.validate_settings(dataclasses.asdict(self))
        for values in self.overrides.values():
            self.validate_settings({**dataclasses.asdict(self), **values})

    @classmethod
    def overridable(cls) -> tuple[str, ...]:
        names = {f.name for f in dataclasses.fields(cls)}
        return tuple(k for k in OVERRIDABLE if k in names)

    def validate_settings(self, s: dict[str, Any]) -> None:
        """Check one module's effective settings; subclasses extend this."""
        _check_positive_int("rank", s["rank"])
        if s["alpha"] is not None and (
            isinstance(s["alpha"], bool)
            or not isinstance(s["alpha"], int | float)
            or s["alpha"] <= 0
        ):
            raise ValueError(
                f"alpha must be a positive number or None (= 2·rank), got {s['alpha']!r}"
            )
        if not isinstance(s["dropout"], int | float) or not 0.0 <= s["dropout"] < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {s['dropout']!r}")

    def settings_for(self, module_name: str) -> dict[str, Any]:
        """The effective settings of one module: the config with the first matching override."""
        s = dataclasses.asdict(self)
        for pattern, values in self.overrides.items():
            if re.search(pattern, module_name):
                s.update(values)
                break
        if s.get("alpha") is None:
            s["alpha"] = 2.0 * s["rank"]
        return s

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


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
