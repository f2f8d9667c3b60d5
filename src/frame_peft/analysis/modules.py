"""Names of adapted modules, read as (layer, kind): the rows and columns of the analysis tables.

``model.layers.3.self_attn.q_proj`` is layer 3 (the first integer path component, as
:func:`frame_peft.core.inject.layer_indices` reads it) of kind ``q_proj`` (the last component).
Kinds are not unique within a layer in every family (GPT-2 has ``attn.c_proj`` and
``mlp.c_proj``), so tables that key on (layer, kind) also carry the full names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..core.inject import layer_indices


@dataclass(frozen=True)
class ModuleInfo:
    """One adapted module: full ``name``, its ``layer`` (None without an integer path component)
    and its ``kind`` (the last dotted component, e.g. ``"q_proj"``, ``"c_attn"``)."""

    name: str
    layer: int | None
    kind: str


def module_info(name: str) -> ModuleInfo:
    """The :class:`ModuleInfo` of one module name."""
    return ModuleInfo(name, layer_indices([name])[name], name.rsplit(".", 1)[-1])


def sort_key(info: ModuleInfo) -> tuple[bool, int, str]:
    """Order by layer (modules without a layer last), then by name."""
    return (info.layer is None, info.layer if info.layer is not None else 0, info.name)


def group_by_kind(names: Iterable[str]) -> dict[str, list[ModuleInfo]]:
    """``{kind: [ModuleInfo, ...]}``, each list sorted by layer (then name), kinds sorted."""
    names = list(names)
    depth = layer_indices(names)
    groups: dict[str, list[ModuleInfo]] = {}
    for name in names:
        info = ModuleInfo(name, depth[name], name.rsplit(".", 1)[-1])
        groups.setdefault(info.kind, []).append(info)
    return {kind: sorted(groups[kind], key=sort_key) for kind in sorted(groups)}
