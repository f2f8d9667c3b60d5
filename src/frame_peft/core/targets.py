"""Which modules ``target_modules`` selects, and why a name selected nothing.

``target_modules`` is ``"all-linear"`` (every Linear / GPT-2 Conv1D but the output head), a
regular expression (a string, matched against full module names), or a list of names (a module
is selected when its name equals an entry or ends with ``"." + entry``). Every entry of a list
must select something unless ``allow_unmatched`` says otherwise: a typo must not silently adapt
fewer modules.
"""

from __future__ import annotations

import contextlib
import difflib
import re

from torch import nn

from .adapter import is_adaptable

__all__ = ["match_targets", "selects"]


def _output_head_ids(model: nn.Module) -> set[int]:
    ids = set()
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        with contextlib.suppress(Exception):
            head = get()
            if head is not None:
                ids.add(id(head))
    return ids


def match_targets(
    model: nn.Module, target_modules: list[str] | str, allow_unmatched: list[str] | bool = False
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs that ``target_modules`` selects.

    Raises ``ValueError`` when nothing matches, and, for a list, when one of its names matches no
    Linear/Conv1D (unless ``allow_unmatched`` is True or lists it): a typo such as ``"v_prj"``
    would otherwise silently adapt fewer modules. The error names the pattern and close
    candidates.
    """
    candidates = [(n, m) for n, m in model.named_modules() if n and is_adaptable(m)]
    if target_modules == "all-linear":
        heads = _output_head_ids(model)
        picked = [
            (n, m) for n, m in candidates if id(m) not in heads and n.split(".")[-1] != "lm_head"
        ]
    elif isinstance(target_modules, str):
        picked = [(n, m) for n, m in candidates if re.fullmatch(target_modules, n)]
    else:
        picked = [(n, m) for n, m in candidates if any(_names(n, t) for t in target_modules)]
        allowed = set(target_modules) if allow_unmatched is True else set(allow_unmatched or ())
        for t in target_modules:
            if t not in allowed and not any(_names(n, t) for n, _ in picked):
                raise ValueError(_unmatched_message(model, t, candidates))
    if not picked:
        leaves = sorted({n.split(".")[-1] for n, _ in candidates})
        raise ValueError(
            f"target_modules={target_modules!r} matched no Linear/Conv1D module. Candidate "
            f"names: {leaves} (e.g. {[n for n, _ in candidates[:3]]})"
        )
    return picked


def _names(module_name: str, pattern: str) -> bool:
    return module_name == pattern or module_name.endswith("." + pattern)


def _unmatched_message(model: nn.Module, pattern: str, candidates: list) -> str:
    """Why ``pattern`` matched nothing: a non-Linear module of that name, or close names."""
    others = [
        type(m).__name__ for n, m in model.named_modules() if n and _names(n, pattern)
    ]  # fmt: skip
    leaves = sorted({n.split(".")[-1] for n, _ in candidates})
    close = difflib.get_close_matches(pattern, leaves, n=5, cutoff=0.6)
    what = (
        f"it names {sorted(set(others))} module(s), not Linear/Conv1D layers"
        if others
        else f"close names: {close}"
        if close
        else f"adaptable names: {leaves}"
    )
    return (
        f"target_modules entry {pattern!r} matched no Linear/Conv1D module of this "
        f"{type(model).__name__} ({what}). Fix the name, or, if this architecture lacks the "
        f"module, list it in the config's allow_unmatched (e.g. allow_unmatched=[{pattern!r}])"
    )


def selects(target_modules: list[str] | str, name: str) -> bool:
    """Whether ``target_modules`` selects the module called ``name`` (the rules above; no
    check of the module's type)."""
    if target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(_names(name, t) for t in target_modules)
