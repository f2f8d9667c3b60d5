"""What the synthetic experiments share: ``--set`` overrides of their configs, and several seeds.

``--set tasks.dim=128`` (or ``train.steps=500``, ``budget.expert_rank=4``,
``tasks.task_orders=[0,0.5]``, ``tasks.teacher_transform=exact``) replaces one field of the
experiment's config dataclass; the value is parsed as YAML (numbers, lists, strings), and the
dataclasses validate it again, so a bad value fails with the field's own message. Several seeds
run the whole experiment once per seed; :func:`mean_std` turns per-seed lists into the mean and
the (population) standard deviation per entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["tasks.dim=128", ...]`` -> ``{"tasks.dim": 128, ...}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE (e.g. tasks.dim=128), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return out


def apply_sets(config: Any, sets: dict[str, Any]) -> Any:
    """A copy of the dataclass ``config`` with the dotted fields of ``sets`` replaced (all at
    once, so fields that must agree, e.g. ``tasks.task_orders`` and ``basin_tasks``, can change
    together)."""
    tree: dict[str, Any] = {}
    for key, value in sets.items():
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is set both as a value and as a group")
        node[parts[-1]] = value
    return _apply(config, tree, "")


def _apply(obj: Any, tree: dict[str, Any], prefix: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"--set {prefix.rstrip('.')}: not a settable group")
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in tree.items():
        if key not in names:
            raise ValueError(f"--set {prefix}{key}: unknown field {key!r}; choose from {names}")
        current = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def configured(config_cls: Any, size: str, sets: dict[str, Any] | None, methods: Any) -> Any:
    """``config_cls.for_size(size)`` with the ``sets`` overrides and, when given, ``methods``."""
    config = apply_sets(config_cls.for_size(size), sets or {})
    if methods is not None:
        config = dataclasses.replace(config, methods=tuple(methods))
    return config


def seed_list(seed: int, seeds: int) -> list[int]:
    """``seeds`` consecutive seeds starting at ``seed``."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    return list(range(seed, seed + seeds))


def mean_std(rows: Sequence[Sequence[float]], digits: int = 6) -> tuple[list[float], list[float]]:
    """Per-entry mean and population std over the rows (one row per seed)."""
    cols = list(zip(*rows, strict=True))
    means = [sum(c) / len(c) for c in cols]
    stds = [
        math.sqrt(sum((v - m) ** 2 for v in c) / len(c)) for c, m in zip(cols, means, strict=True)
    ]
    return [round(m, digits) for m in means], [round(s, digits) for s in stds]


def scalar_mean_std(values: Sequence[float], digits: int = 6) -> tuple[float, float]:
    means, stds = mean_std([[v] for v in values], digits)
    return means[0], stds[0]


def pm(mean: float, std: float, digits: int = 3) -> str:
    """``mean ± std`` for a table cell."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
