"""Layering: which parts of frame_peft may import which (docs/architecture.md).

Every module under ``src/frame_peft`` is parsed with ``ast`` and every import is collected, at
module level and inside functions alike, so a lazy import cannot hide an upward dependency or an
import circle. Parts are the top-level modules and packages of ``frame_peft``; each has a layer,
and a part imports only parts of lower layers, or of its own layer without a circle. The single
exception is the method registry: ``core/config.py`` imports ``frame_peft.methods`` inside a
function so that ``config_from_dict`` knows the built-in methods.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import frame_peft

SRC = Path(frame_peft.__file__).resolve().parent
ROOT = "frame_peft"  # the package itself: its __init__ re-exports the public API (layers 3-5)

#: Layer of every part (docs/architecture.md, "The layers"); lower layers never import higher.
LAYERS = {
    "_files": 0, "_tables": 0, "_checks": 0, "_version": 0, "engines": 0,  # utilities
    "transforms": 1,  # maths
    "routing": 2,
    "core": 3,
    "methods": 4,
    "optim": 5, "peft_bridge": 5, "peft_method": 5, "_peft_hook": 5, "accounting": 5,
    ROOT: 5,  # adapter tools (PEFT registration included), the public API
    "data": 6, "assets": 6, "evaluation": 6,
    "training": 7,
    "run_dir": 8, "recipes": 8,  # the run-directory format; recipes and what they build
    "pipeline": 9, "analysis": 9, "experiments": 9,  # applications
    "quickstart": 10, "cli": 10, "transforms_tour": 10,  # entry points
}  # fmt: skip

#: The one import against the layers: the method registry. ``core.config`` imports
#: ``frame_peft.methods`` lazily (inside a function, never at module level) so that
#: ``config_from_dict`` and ``method_names`` know the built-in methods once they are registered.
REGISTRY_EXCEPTIONS = {("frame_peft.core.config", "methods")}

#: Applications never import one another, except the experiments' use of analysis helpers
#: (plotting); in particular pipeline and analysis share only what lies below them (run_dir).
APPLICATION_EDGES_ALLOWED = {("experiments", "analysis")}


class Import(NamedTuple):
    module: str  # importing module, e.g. frame_peft.analysis.run
    target: str  # imported module (or the package a name was taken from)
    line: int
    lazy: bool  # inside a function or under TYPE_CHECKING (not run at import time)

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _module_names() -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is package __init__)}`` for every module under SRC."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _module_names()


def imports_of(module: str, source: str, is_pkg: bool = False) -> list[Import]:
    """Every ``frame_peft`` import in ``source`` (the text of ``module``), lazy ones included."""
    tree = ast.parse(source)
    # not run at import time: inside a function, or under ``if TYPE_CHECKING:``
    deferred = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        or (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    ]
    lazy_nodes = {id(n) for d in deferred for n in ast.walk(d) if n is not d}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                pkg = ".".join([*base, *([node.module] if node.module else [])])
            else:
                pkg = node.module or ""
            # ``from pkg import name``: the submodule pkg.name if there is one, else pkg itself
            subs = [f"{pkg}.{a.name}" for a in node.names]
            targets = [sub if sub in MODULES else pkg for sub in subs]
        else:
            continue
        out += [
            Import(module, t, node.lineno, id(node) in lazy_nodes)
            for t in dict.fromkeys(targets)
            if t == ROOT or t.startswith(ROOT + ".")
        ]
    return out


def part(module: str) -> str:
    """The top-level part of a dotted module name: frame_peft.analysis.run -> analysis."""
    return module.split(".")[1] if module.count(".") else ROOT


def _all_imports() -> list[Import]:
    return [
        imp
        for module, (path, is_pkg) in MODULES.items()
        for imp in imports_of(module, path.read_text(), is_pkg)
    ]


IMPORTS = _all_imports()
CROSS = [i for i in IMPORTS if part(i.module) != part(i.target)]


def _is_registry(imp: Import) -> bool:
    return (imp.module, part(imp.target)) in REGISTRY_EXCEPTIONS


def test_the_checker_sees_lazy_and_relative_imports():
    src = "from ..run_dir import load_run\ndef f():\n    from ..pipeline.run import x\n"
    found = imports_of("frame_peft.analysis.fake", src)
    assert [(i.target, i.lazy) for i in found] == [
        ("frame_peft.run_dir", False),
        ("frame_peft.pipeline.run", True),
    ]
    found = imports_of("frame_peft.recipes.model_prep", "from .. import inject, run_dir\n")
    assert [i.target for i in found] == ["frame_peft", "frame_peft.run_dir"]
    assert len(CROSS) > 100  # the package was actually read


def test_every_part_has_a_layer():
    unknown = sorted({part(m) for m in MODULES} - set(LAYERS))
    assert not unknown, (
        f"new top-level parts {unknown}: give each a layer in docs/architecture.md and in "
        "LAYERS here"
    )


def test_no_part_imports_a_higher_layer():
    bad = [
        i.where
        for i in CROSS
        if LAYERS[part(i.target)] > LAYERS[part(i.module)] and not _is_registry(i)
    ]
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_the_registry_exception_is_lazy_and_the_only_one():
    registry = [i for i in CROSS if _is_registry(i)]
    assert registry, "core.config no longer imports methods: drop REGISTRY_EXCEPTIONS"
    assert all(i.lazy for i in registry), [i.where for i in registry if not i.lazy]


def test_analysis_and_pipeline_do_not_import_each_other():
    bad = [
        i.where
        for i in CROSS
        if (part(i.module), part(i.target)) in {("analysis", "pipeline"), ("pipeline", "analysis")}
    ]
    assert not bad, "pipeline and analysis share only what lies below them:\n" + "\n".join(bad)


def test_applications_do_not_import_each_other_or_entry_points():
    apps = {p for p, layer in LAYERS.items() if layer == LAYERS["pipeline"]}
    bad = [
        i.where
        for i in CROSS
        if part(i.module) in apps
        and (
            LAYERS[part(i.target)] > LAYERS["pipeline"]
            or (
                part(i.target) in apps
                and (part(i.module), part(i.target)) not in APPLICATION_EDGES_ALLOWED
            )
        )
    ]
    assert not bad, "\n".join(bad)


def test_lower_layers_import_no_application():
    lower = {"_files", "_tables", "_checks", "_version", "transforms", "routing", "core"}
    upper = {"training", "pipeline", "analysis", "evaluation", "experiments", "cli", "quickstart"}
    bad = [i.where for i in CROSS if part(i.module) in lower and part(i.target) in upper]
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_between_parts():
    """Lazy imports included: only the registry may point back."""
    graph: dict[str, set[str]] = {}
    for i in CROSS:
        if not _is_registry(i):
            graph.setdefault(part(i.module), set()).add(part(i.target))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_circle_between_modules_at_import_time():
    graph: dict[str, set[str]] = {}
    for i in IMPORTS:
        if not i.lazy and i.target != i.module:
            graph.setdefault(i.module, set()).add(i.target)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
